/* A line diff (longest common subsequence) for comparing policy versions.
 *
 * Policies are small documents (tens to hundreds of lines), so the O(n·m) table is
 * cheap and gives the minimal edit; common prefix and suffix are trimmed first.
 * Returns [{op: " "|"-"|"+", line}] in order.
 */

export function lineDiff(oldText, newText) {
  const a = oldText.split("\n"), b = newText.split("\n");
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  const x = a.slice(start, endA), y = b.slice(start, endB);
  const n = x.length, m = y.length;
  // lcs[i][j] = length of the LCS of x[i:] and y[j:]
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = a.slice(0, start).map((line) => ({ op: " ", line }));
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push({ op: " ", line: x[i] }); i++; j++; }
    else if (i < n && (j >= m || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push({ op: "-", line: x[i] }); i++; }
    else { out.push({ op: "+", line: y[j] }); j++; }
  }
  for (const line of a.slice(endA)) out.push({ op: " ", line });
  return out;
}

/* Canonical text of a JSON document: keys sorted, so key order never shows as a change. */
export function canonicalJson(value) {
  const sort = (v) => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])]));
    return v;
  };
  return JSON.stringify(sort(value), null, 2);
}
