/* The nodes page: agents with their status (and why), whether they drain, slots, workers,
 * labels, GPUs (each with its load, temperature, power and owner, as the latest heartbeat
 * said), agent version and protocol, last heartbeat, refreshed in place every few
 * seconds (a node that just enrolled appears at the next refresh). Staff also drain a
 * node or take it back, revoke it and delete it, each after a confirmation; the
 * server's refusal (say, deleting a node that still runs workers) is shown as it says.
 */

import { del, el, errorMessage, every, formatAgo, formatTime, get, post } from "./api.js";
import { confirmAction } from "./confirm.js";

const table = document.getElementById("nodes");
const body = table.querySelector("tbody");
const result = document.getElementById("node-result");
const staff = table.dataset.staff === "1";
const columns = staff ? 10 : 9;

function set(cell, text) { const s = String(text); if (cell.textContent !== s) cell.textContent = s; }

function say(text, ok) {
  result.textContent = text;
  result.className = `result ${ok ? "ok" : "error"}`;
}

/* The actions a node offers now, as [label, handler] pairs. */
function actionsOf(n) {
  if (n.status === "revoked") return [["Delete", () => remove(n)]];
  return [
    n.draining ? ["Resume", () => drain(n, false)] : ["Drain", () => drain(n, true)],
    ["Revoke", () => revoke(n)],
    ["Delete", () => remove(n)],
  ];
}

async function act(request, done) {
  const r = await request;
  say(r.ok ? done : errorMessage(r), r.ok);
  await refresh();
}

async function drain(n, draining) {
  if (draining && !(await confirmAction({
    title: `Drain node ${n.name}?`,
    text: "No new workers will be placed there and no job grows onto it; the workers running there carry on. Resume it to use it again.",
    yes: "Drain", danger: false,
  }))) return;
  await act(post(`/api/v1/nodes/${n.id}/${draining ? "drain" : "resume"}/`),
    draining ? `Node ${n.name} is draining.` : `Node ${n.name} takes new workers again.`);
}

async function revoke(n) {
  if (!(await confirmAction({
    title: `Revoke node ${n.name}?`,
    text: `Its credential stops working at once and its agent stops. Its ${n.workers_active} worker(s) are taken off it: `
      + "an elastic job goes on without them, another job fails. To use the machine again, enrol it anew with a join token.",
    yes: "Revoke node",
  }))) return;
  await act(post(`/api/v1/nodes/${n.id}/revoke/`), `Node ${n.name} is revoked.`);
}

async function remove(n) {
  if (!(await confirmAction({
    title: `Delete node ${n.name}?`,
    text: "It leaves this list and its name is free for another enrolment; the jobs it ran keep it in their history. A node that runs workers cannot be deleted: drain it first.",
    yes: "Delete node",
  }))) return;
  await act(del(`/api/v1/nodes/${n.id}/`), `Node ${n.name} is deleted.`);
}

function row(n) {
  const cells = [el("td"), el("td", {}, el("span"), " ", el("span", { class: "status status-draining", hidden: true }, "draining"),
    el("div", { class: "small muted reason" })), el("td"), el("td"), el("td"), el("td"), el("td", { class: "gpus small" }), el("td"), el("td", {}, el("time"))];
  if (staff) cells.push(el("td", { class: "actions" }));
  return el("tr", { dataset: { id: String(n.id) } }, cells);
}

/* One line per GPU: "NVIDIA H200 · 37 % · 12.0 / 140.0 GiB · 45 °C · 210 W · job 3 worker 0". */
function gpuLines(n) {
  const num = (x, digits = 0) => (x === null || x === undefined ? "?" : Number(x).toFixed(digits));
  return (n.gpus || []).map((g) => [
    g.name || g.uuid,
    `${num(g.utilization_pct)} %`,
    `${num(g.memory_used_mib / 1024, 1)} / ${num(g.memory_total_mib / 1024, 1)} GiB`,
    `${num(g.temperature_c)} °C`,
    `${num(g.power_w)} W`,
    g.job ? `job ${g.job} worker ${g.rank}` : "free",
  ].join(" · "));
}

function fill(tr, n) {
  const c = tr.cells;
  set(c[0], n.name);
  const badge = c[1].firstChild;
  if (badge.textContent !== n.status) { badge.textContent = n.status; badge.className = `status status-${n.status}`; }
  c[1].querySelector(".status-draining").hidden = !n.draining;
  set(c[1].querySelector(".reason"), n.status_reason || "");
  tr.dataset.status = n.draining ? `${n.status} draining` : n.status;
  set(c[2], n.address);
  set(c[3], n.slots);
  set(c[4], n.workers_active);
  set(c[5], Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—");
  const lines = gpuLines(n);
  const key = lines.join("\n") || "—";
  if (c[6].dataset.key !== key) {
    c[6].dataset.key = key;
    c[6].replaceChildren(...(lines.length ? lines.map((l) => el("div", { class: "gpu" }, l)) : ["—"]));
  }
  set(c[7], n.agent_version ? `${n.agent_version} · protocol ${n.protocol ?? 1}` : "—");
  const t = c[8].firstChild;
  set(t, formatAgo(n.last_heartbeat));
  t.title = formatTime(n.last_heartbeat);
  if (staff) {
    const actions = actionsOf(n);
    const actionKey = actions.map(([label]) => label).join(",");
    if (c[9].dataset.key !== actionKey) {
      c[9].dataset.key = actionKey;
      c[9].replaceChildren(...actions.map(([label, handler]) => el("button", {
        type: "button", class: `small ${label === "Drain" || label === "Resume" ? "secondary" : "danger"}`,
        "aria-label": `${label} ${n.name}`, onclick: handler,
      }, label)));
    }
  }
}

async function refresh() {
  const r = await get("/api/v1/nodes/");
  if (!r.ok) { body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: String(columns), text: errorMessage(r) }))); return; }
  if (!r.body.length) {
    const hint = staff ? "No node has enrolled yet: Add a node." : "No node has enrolled yet.";
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: String(columns), text: hint })));
    return;
  }
  body.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
  const seen = new Set();
  for (const n of r.body) {
    seen.add(String(n.id));
    let tr = body.querySelector(`tr[data-id="${n.id}"]`);
    if (!tr) { tr = row(n); body.append(tr); }
    fill(tr, n);
  }
  for (const tr of [...body.rows]) if (!seen.has(tr.dataset.id)) tr.remove();
}

every(3000, refresh);
