/* The jobs list: search (name or label), status, archived and sort filters and pages, all
 * kept in the page's URL (a filtered page can be bookmarked and shared); rows and the
 * summary tiles refresh every few seconds, in place. Ticking two or more jobs opens the
 * compare page on them. */

import { el, every, formatNumber, get } from "./api.js";

const body = document.querySelector("#jobs-table tbody");
const form = document.getElementById("jobs-filter");
const compare = document.getElementById("compare");
const LIMIT = 50;
const FILTERS = ["q", "status", "owner", "node", "archived", "ordering"];
const picked = new Set();

function cellText(cell, text) {
  const s = String(text);
  if (cell.textContent !== s) cell.textContent = s;
}

/* The list's query as the URL says it: the filters and the page's offset. */
function query() {
  const params = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const k of [...FILTERS, "offset"]) { const v = params.get(k); if (v) out.set(k, v); }
  return out;
}

function showFilters() {
  const q = query();
  for (const k of FILTERS) {
    const input = form.elements[k];
    const v = q.get(k) || "";
    if (input.tagName === "SELECT" && v && ![...input.options].some((o) => o.value === v)) {
      input.append(el("option", { value: v, text: v }));
    }
    input.value = v;
  }
}

function navigate(params) {
  const search = params.toString();
  history.pushState(null, "", search ? `?${search}` : location.pathname);
  refresh();
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const params = new URLSearchParams();
  for (const k of FILTERS) { const v = form.elements[k].value.trim(); if (v) params.set(k, v); }
  navigate(params); // a new filter starts at the first page
});
form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => form.requestSubmit()));
window.addEventListener("popstate", () => { showFilters(); refresh(); });

function pageLink(id, offset, count) {
  const a = document.getElementById(id);
  a.hidden = offset === null;
  if (offset === null) return;
  const params = query();
  if (offset > 0) params.set("offset", String(offset)); else params.delete("offset");
  a.href = `?${params}`;
  a.onclick = (ev) => { ev.preventDefault(); navigate(params); };
  a.dataset.count = String(count);
}

/* "1200 / 5000 · 4 min left": the step of the total and the time left at the job's
 * latest step time (just the step when the job names no total). */
function progressText(p, lastStep) {
  if (!p || !p.total) return String(lastStep);
  let text = `${p.step} / ${p.total}`;
  if (typeof p.eta_s === "number") {
    const s = p.eta_s;
    const left = s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
    text += ` · ${left} left`;
  }
  return text;
}

function row(job) {
  let tr = body.querySelector(`tr[data-id="${job.id}"]`);
  if (!tr) {
    const box = el("input", { type: "checkbox", class: "pick", value: String(job.id), "aria-label": `Select job ${job.id}` });
    tr = el("tr", { dataset: { id: String(job.id) } },
      el("td", {}, box), el("td"), el("td", {}, el("a", { href: `/jobs/${job.id}/` })), el("td", { class: "labels" }),
      el("td", {}, el("span")), el("td", { class: "progress" }), el("td"), el("td"), el("td"), el("td"), el("td"));
  }
  const c = tr.cells;
  c[0].firstChild.checked = picked.has(job.id);
  cellText(c[1], job.id);
  cellText(c[2].firstChild, job.name);
  const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`);
  if (c[3].dataset.text !== labels.join("\n")) {
    c[3].dataset.text = labels.join("\n");
    c[3].replaceChildren(...labels.flatMap((t) => [el("span", { class: "label", text: t }), " "]));
  }
  const badge = c[4].firstChild;
  const status = job.archived_at ? `${job.status} (archived)` : job.status;
  if (badge.textContent !== status) { badge.textContent = status; badge.className = `status status-${job.status}`; }
  cellText(c[5], progressText(job.progress, job.last_step));
  cellText(c[6], job.parameters.batch_size);
  cellText(c[7], formatNumber(job.parameters.lr));
  cellText(c[8], job.parameters.workers);
  cellText(c[9], job.parameters.strategy);
  cellText(c[10], new Date(job.created_at).toLocaleString());
  return tr;
}

body.addEventListener("change", (ev) => {
  if (!ev.target.classList.contains("pick")) return;
  const id = Number(ev.target.value);
  if (ev.target.checked) picked.add(id); else picked.delete(id);
  compare.disabled = picked.size < 2;
  compare.textContent = picked.size >= 2 ? `Compare ${picked.size} jobs` : "Compare selected";
});
compare.addEventListener("click", () => {
  if (picked.size >= 2) location.href = `/jobs/compare/?ids=${[...picked].join(",")}`;
});

async function refresh() {
  const q = query();
  q.set("limit", String(LIMIT));
  const offset = Number(q.get("offset") || 0);
  const [list, running, pending] = await Promise.all([
    get(`/api/v1/jobs/?${q}`),
    get("/api/v1/jobs/?status=running,rescaling&limit=200"),
    get("/api/v1/jobs/?status=pending,scheduling&limit=1"),
  ]);
  if (list.ok) {
    const rows = list.body.results.map(row);
    body.querySelectorAll("tr.empty").forEach((r) => r.remove());
    // Keep DOM order = API order without touching rows already in place.
    rows.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
    while (body.children.length > rows.length) body.lastElementChild.remove();
    if (!rows.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: "11", text: "No jobs match these filters." })));
    }
    const count = list.body.count;
    cellText(document.getElementById("page-info"), count
      ? `${offset + 1}–${offset + rows.length} of ${count}` : "");
    pageLink("page-prev", offset > 0 ? Math.max(offset - LIMIT, 0) : null, count);
    pageLink("page-next", offset + LIMIT < count ? offset + LIMIT : null, count);
    if (![...FILTERS].some((k) => q.get(k))) cellText(document.getElementById("sum-total"), count);
  }
  if (running.ok) {
    cellText(document.getElementById("sum-running"), running.body.count);
    cellText(document.getElementById("sum-workers"),
      running.body.results.reduce((n, j) => n + (j.parameters.workers || 0), 0));
  }
  if (pending.ok) cellText(document.getElementById("sum-pending"), pending.body.count);
}

showFilters();
every(3000, refresh);
