/* A job's audit trail: every event, oldest first, filterable by kind and text; new
 * events are appended as they are recorded (polled with ?after=). */

import { el, every, get } from "./api.js";

const form = document.getElementById("audit-filter");
const jobId = form.dataset.jobId;
const body = document.querySelector("#audit tbody");
const count = document.getElementById("audit-count");
let lastId = 0;

function details(e) {
  const data = e.data || {};
  if (!Object.keys(data).length) return e.message;
  return el("details", {}, el("summary", { text: e.message }), el("pre", { text: JSON.stringify(data, null, 2) }));
}

function applyFilter() {
  const kinds = new Set([...form.querySelectorAll("input[name=kind]:checked")].map((i) => i.value));
  const text = document.getElementById("audit-search").value.trim().toLowerCase();
  let shown = 0;
  for (const tr of body.rows) {
    const visible = kinds.has(tr.dataset.kind) && (!text || tr.textContent.toLowerCase().includes(text));
    tr.hidden = !visible;
    if (visible) shown++;
  }
  count.textContent = `${shown} of ${body.rows.length} events shown`;
}

async function load() {
  for (let page = 0; page < 100; page++) {
    const r = await get(`/api/v1/jobs/${jobId}/events/?after=${lastId}`);
    if (!r.ok || !r.body.length) break;
    for (const e of r.body) {
      lastId = Math.max(lastId, e.id);
      body.append(el("tr", { class: `event-${e.kind}`, dataset: { kind: e.kind, id: String(e.id) } },
        el("td", { text: e.id }), el("td", {}, el("time", { datetime: e.time, text: new Date(e.time).toLocaleString() })),
        el("td", { class: "event-run", text: e.run ?? "" }),
        el("td", {}, el("span", { class: `kind kind-${e.kind}`, text: e.kind })), el("td", { text: e.actor }),
        el("td", { text: e.step ?? "" }), el("td", {}, details(e))));
    }
    if (r.body.length < 1000) break;
  }
  applyFilter();
}

form.addEventListener("input", applyFilter);
form.addEventListener("submit", (ev) => ev.preventDefault());
every(5000, load);
