/* The nodes page: agents with their status, slots and last heartbeat, refreshed in place. */

import { el, errorMessage, every, formatAgo, formatTime, get } from "./api.js";

const body = document.querySelector("#nodes tbody");

function set(cell, text) { const s = String(text); if (cell.textContent !== s) cell.textContent = s; }

async function refresh() {
  const r = await get("/api/v1/nodes/");
  if (!r.ok) { body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "6", text: errorMessage(r) }))); return; }
  if (!r.body.length) { body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "6", text: "No node has enrolled yet." }))); return; }
  body.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
  const seen = new Set();
  for (const n of r.body) {
    seen.add(String(n.id));
    let tr = body.querySelector(`tr[data-id="${n.id}"]`);
    if (!tr) {
      tr = el("tr", { dataset: { id: String(n.id) } }, el("td"), el("td", {}, el("span")), el("td"), el("td"), el("td"), el("td", {}, el("time")));
      body.append(tr);
    }
    const c = tr.cells;
    set(c[0], n.name);
    const badge = c[1].firstChild;
    if (badge.textContent !== n.status) { badge.textContent = n.status; badge.className = `status status-${n.status}`; }
    set(c[2], n.address);
    set(c[3], n.slots);
    set(c[4], Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—");
    const t = c[5].firstChild;
    set(t, formatAgo(n.last_heartbeat));
    t.title = formatTime(n.last_heartbeat);
  }
  for (const tr of [...body.rows]) if (!seen.has(tr.dataset.id)) tr.remove();
}

every(5000, refresh);
