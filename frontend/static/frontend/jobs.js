/* The jobs list: rows and the summary tiles refresh every few seconds, in place. */

import { el, every, formatNumber, get } from "./api.js";

const body = document.querySelector("#jobs-table tbody");

function cellText(cell, text) {
  const s = String(text);
  if (cell.textContent !== s) cell.textContent = s;
}

function row(job) {
  let tr = body.querySelector(`tr[data-id="${job.id}"]`);
  if (!tr) {
    tr = el("tr", { dataset: { id: String(job.id) } },
      el("td"), el("td", {}, el("a", { href: `/jobs/${job.id}/` })), el("td", {}, el("span")),
      el("td"), el("td"), el("td"), el("td"), el("td"), el("td"));
  }
  const c = tr.cells;
  cellText(c[0], job.id);
  cellText(c[1].firstChild, job.name);
  const badge = c[2].firstChild;
  if (badge.textContent !== job.status) { badge.textContent = job.status; badge.className = `status status-${job.status}`; }
  cellText(c[3], job.last_step);
  cellText(c[4], job.parameters.batch_size);
  cellText(c[5], formatNumber(job.parameters.lr));
  cellText(c[6], job.parameters.workers);
  cellText(c[7], job.parameters.strategy);
  cellText(c[8], new Date(job.created_at).toLocaleString());
  return tr;
}

async function refresh() {
  const [list, running, pending] = await Promise.all([
    get("/api/v1/jobs/?limit=50"),
    get("/api/v1/jobs/?status=running,rescaling&limit=200"),
    get("/api/v1/jobs/?status=pending,scheduling&limit=1"),
  ]);
  if (list.ok && list.body.results.length) {
    body.querySelectorAll("tr.empty").forEach((r) => r.remove());
    const rows = list.body.results.map(row);
    // Keep DOM order = API order (newest first) without touching rows already in place.
    rows.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
    while (body.children.length > rows.length) body.lastElementChild.remove();
    cellText(document.getElementById("sum-total"), list.body.count);
  }
  if (running.ok) {
    cellText(document.getElementById("sum-running"), running.body.count);
    cellText(document.getElementById("sum-workers"),
      running.body.results.reduce((n, j) => n + (j.parameters.workers || 0), 0));
  }
  if (pending.ok) cellText(document.getElementById("sum-pending"), pending.body.count);
}

every(3000, refresh);
