/* The job page: live charts, what adaptation did (adaptations.js), worker logs
 * (joblogs.js), event log, workers, runs (with restart), manual commands, approvals.
 *
 * The charts show one run at a time: the job's current run (they start over when a
 * restart makes a new one), or an earlier run picked in the run selector.
 *
 * Data flow: stored series and events over REST first, then numbered frames from
 * /ws/jobs/{id}/. Every way data arrives is idempotent (series merge by step, events by
 * id), so after a dropped connection the page reloads what it missed from REST
 * (`since=` the last step it has, `after=` the last event id) and merges it, and it does
 * so again once the new socket is open — the window between those two is covered too.
 *
 * One source of truth for the status, parameters and workers panels: the job detail from
 * REST. A `job` frame does not draw anything itself; it makes the page read the detail
 * again at once (besides the poll every 4 s), and a response older than one already shown
 * is dropped. So the status never says "cancelled" over a workers table from before, and
 * a worker of an ended job that the agent has not reported gone is shown "stopping".
 */

import { api, del, el, errorMessage, every, formatNumber, get, missing, post } from "./api.js";
import { Adaptations } from "./adaptations.js";
import { JobCharts } from "./jobcharts.js";
import { JobLogs } from "./joblogs.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// Worker states of a process that may still run (models.Worker.ACTIVE).
const WORKER_ACTIVE = new Set(["starting", "joining", "standby", "running"]);
const root = document.getElementById("job");
const jobId = Number(root.dataset.jobId);
const charts = new JobCharts(document.getElementById("charts"), jobId);
const logs = new JobLogs(document.getElementById("logs-card"), jobId);
const adaptations = new Adaptations(document.getElementById("adaptations-card"), jobId);
window.adaptrain = Object.assign(window.adaptrain || {}, { charts, logs, adaptations });

let lastEventId = 0;

function setText(id, value) {
  const node = document.getElementById(id);
  if (!node || value === undefined || value === null) return;
  const s = String(value);
  if (node.textContent !== s) node.textContent = s;
}

function setStatus(status, reason) {
  const badge = document.getElementById("job-status");
  if (badge.textContent !== status) {
    badge.textContent = status;
    badge.className = `status status-${status}`;
  }
  root.dataset.status = status;
  if (reason !== undefined) setText("job-reason", reason);
  const terminal = TERMINAL.has(status);
  document.querySelectorAll("#commands button, #commands input, #commands select").forEach((c) => { c.disabled = terminal; });
  document.getElementById("restart").hidden = !terminal;
}

function setStep(step) {
  if (step !== undefined && step !== null && step > Number(document.getElementById("job-step").textContent || 0)) {
    setText("job-step", step);
  }
}

/* A `job` frame from the WebSocket: the job changed; read its detail again. */
function applyJobFrame(d) {
  setStep(d.step);
  refreshDetail().catch(() => {});
}

/* The GPU a worker owns, as its node's latest heartbeat said: "NVIDIA H200 · 87 % · 70.2 GiB". */
function gpuText(g) {
  if (!g) return "—";
  const parts = [g.name || g.uuid];
  if (g.utilization_pct !== null && g.utilization_pct !== undefined) parts.push(`${Number(g.utilization_pct).toFixed(0)} %`);
  if (g.memory_used_mib !== null && g.memory_used_mib !== undefined) parts.push(`${(g.memory_used_mib / 1024).toFixed(1)} GiB`);
  return parts.join(" · ");
}
/* Read the job detail over REST and draw it, unless a response to a later request was
 * drawn already (responses can arrive out of order). Calls made while one is in flight
 * coalesce into one more read after it. */
let detailAsked = 0;
let detailShown = 0;
let detailInFlight = null;
let detailAgain = false;
async function refreshDetail() {
  if (detailInFlight) { detailAgain = true; return detailInFlight; }
  detailInFlight = (async () => {
    do {
      detailAgain = false;
      const n = ++detailAsked;
      const r = await get(`/api/v1/jobs/${jobId}/`);
      if (r.ok && n > detailShown) { detailShown = n; applyJobDetail(r.body); }
    } while (detailAgain);
  })();
  try { await detailInFlight; } finally { detailInFlight = null; }
}
window.adaptrain.refreshDetail = refreshDetail;

/* The job detail from REST (polled): parameters and workers. */
function applyJobDetail(j) {
  setStatus(j.status, j.status_reason);
  // A node that stopped answering: the job keeps its status while its workers may train on.
  const away = (j.unreachable_nodes || []).map((u) =>
    `node ${u.node} unreachable since ${u.since ? new Date(u.since).toLocaleString() : "?"}`);
  const unreachable = document.getElementById("job-unreachable");
  unreachable.hidden = away.length === 0;
  unreachable.textContent = away.length ? `${away.join("; ")} (its workers may still be training)` : "";
  const p = j.parameters;
  setText("job-batch-size", p.batch_size);
  setText("job-lr", p.lr);
  setText("job-workers", p.workers);
  setText("job-strategy", p.strategy);
  setText("job-topology", p.topology);
  if (j.cluster_version !== undefined) setText("job-cluster-version", j.cluster_version);
  const runNumber = j.current_run ? j.current_run.number : null;
  if (runNumber !== currentRunNumber) {
    // A restart: the new run counts its steps from 0 again.
    if (currentRunNumber !== null) setText("job-step", j.last_step);
    currentRunNumber = runNumber;
    charts.currentRunIs(runNumber);
    logs.currentRunIs(runNumber);
  }
  logs.setWorkers(j.workers.map((w) => w.rank));
  setStep(j.last_step);
  const body = document.querySelector("#workers tbody");
  const rows = new Map([...body.rows].map((r) => [r.dataset.rank, r]));
  for (const w of j.workers) {
    let row = rows.get(String(w.rank));
    if (!row) {
      row = el("tr", { dataset: { rank: String(w.rank) } }, el("td"), el("td"), el("td"), el("td"),
               el("td", {}, el("span")), el("td", { class: "step-time" }), el("td", { class: "gpu small" }));
      body.append(row);
    }
    rows.delete(String(w.rank));
    const cells = row.cells;
    const clusterRank = String(w.cluster_rank ?? "—");
    if (cells[0].textContent !== String(w.rank)) cells[0].textContent = w.rank;
    if (cells[1].textContent !== clusterRank) cells[1].textContent = clusterRank;
    if (cells[2].textContent !== w.node) cells[2].textContent = w.node;
    if (cells[3].textContent !== String(w.port ?? "—")) cells[3].textContent = w.port ?? "—";
    const gpu = gpuText(w.gpu);
    if (cells[6].textContent !== gpu) cells[6].textContent = gpu;
    const badge = cells[4].firstChild;
    // The job ended but the agent has not yet reported this worker gone: it is being
    // stopped, not running (it turns exited/failed when the agent reports).
    const state = TERMINAL.has(j.status) && WORKER_ACTIVE.has(w.state) ? "stopping" : w.state;
    if (badge.textContent !== state) {
      badge.textContent = state;
      badge.className = `status status-${state}`;
      badge.title = state === "stopping" ? `the job is ${j.status}; waiting for the agent to report this worker (${w.state}) gone` : "";
    }
  }
  for (const stale of rows.values()) stale.remove();
  showStepTimes(j.workers);
  showLabels(j.labels || {}, j.archived_at);
  if (!j.workers.length && !body.rows.length) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: "7", text: "No workers placed yet." })));
  } else if (j.workers.length) {
    body.querySelectorAll("tr.empty").forEach((r) => r.remove());
  }
  const run = j.current_run;
  const runKey = run ? `${run.number}:${run.status}:${run.started_at}:${run.finished_at}` : "";
  if (runKey !== lastRunKey) { lastRunKey = runKey; loadRuns(); }
}

/* Each worker's own step time and compute time (the latest it reported); the worker that
 * computes clearly longest (over 1.25× the others' median) is marked the straggler. */
function showStepTimes(workers) {
  const body = document.querySelector("#workers tbody");
  const computes = workers.map((w) => w.compute_time).filter((v) => typeof v === "number");
  const sorted = [...computes].sort((a, b) => a - b);
  const slowest = sorted.length > 1 ? sorted[sorted.length - 1] : null;
  const others = sorted.slice(0, -1);
  const median = others.length ? others[Math.floor(others.length / 2)] : null;
  const straggler = slowest !== null && median > 0 && slowest > 1.25 * median ? slowest : null;
  for (const w of workers) {
    const row = body.querySelector(`tr[data-rank="${w.rank}"]`);
    if (!row) continue;
    const cell = row.cells[5];
    const ms = (v) => (typeof v === "number" ? `${(v * 1000).toFixed(v < 0.1 ? 1 : 0)} ms` : "—");
    const text = w.step_time === null || w.step_time === undefined ? "—" : `${ms(w.step_time)} (${ms(w.compute_time)})`;
    if (cell.textContent !== text) cell.textContent = text;
    const slow = straggler !== null && w.compute_time === straggler;
    row.classList.toggle("straggler", slow);
    cell.title = slow ? `straggler: computes ${(straggler / median).toFixed(1)}× as long as the others' median` : "";
  }
}

/* --- labels, archive, delete --------------------------------------------------------- */

function showLabels(labels, archivedAt) {
  const text = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
  const dd = document.getElementById("job-labels");
  if (dd.dataset.text !== text.join("\n")) {
    dd.dataset.text = text.join("\n");
    dd.replaceChildren(...(text.length ? text.flatMap((t) => [el("span", { class: "label", text: t }), " "]) : ["none"]));
  }
  root.dataset.archived = archivedAt ? "1" : "";
  setText("archive", archivedAt ? "Unarchive" : "Archive");
}

function manageResult(text, ok) {
  const out = document.getElementById("manage-result");
  out.textContent = text;
  out.className = `result ${ok ? "ok" : "error"}`;
}

document.getElementById("labels-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const labels = {};
  for (const part of document.getElementById("labels-input").value.split(",")) {
    if (!part.trim()) continue;
    const at = part.indexOf("=");
    if (at < 1) { manageResult(`Write each label as name=value: ${JSON.stringify(part.trim())}.`, false); return; }
    labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  const r = await api("PATCH", `/api/v1/jobs/${jobId}/`, { labels });
  if (r.ok) { showLabels(r.body.labels, r.body.archived_at); manageResult("Labels saved.", true); }
  else manageResult(`Labels refused: ${errorMessage(r)}`, false);
});

document.getElementById("archive").addEventListener("click", async () => {
  const archived = root.dataset.archived === "1";
  const r = archived ? await del(`/api/v1/jobs/${jobId}/archive/`) : await post(`/api/v1/jobs/${jobId}/archive/`);
  if (r.ok) {
    showLabels(r.body.labels || {}, r.body.archived_at);
    manageResult(r.body.archived_at ? "Archived: hidden from the jobs list (its Archived filter shows it)." : "Back in the jobs list.", true);
  } else manageResult(`${archived ? "Unarchive" : "Archive"} refused: ${errorMessage(r)}`, false);
});

const deleteButton = document.getElementById("delete");
deleteButton.addEventListener("click", async () => {
  if (deleteButton.dataset.armed !== "1") {
    // Two clicks: deleting is for good.
    deleteButton.dataset.armed = "1";
    deleteButton.textContent = "Click again to delete for good";
    setTimeout(() => { deleteButton.dataset.armed = ""; deleteButton.textContent = "Delete job"; }, 5000);
    return;
  }
  deleteButton.dataset.armed = "";
  deleteButton.textContent = "Delete job";
  const r = await del(`/api/v1/jobs/${jobId}/`);
  if (r.ok) location.href = `/?deleted=${jobId}`;
  else manageResult(`Delete refused: ${errorMessage(r)}`, false);
});

/* --- runs ---------------------------------------------------------------------------- */

let lastRunKey = null;
let currentRunNumber = null; // the job's current run, as last read from the job detail
let runs = []; // the job's runs as the runs API gave them, newest first
const runSelect = document.getElementById("chart-run");

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

/* The job's runs, newest first (reloaded when the current run changes). */
async function loadRuns() {
  const r = await get(`/api/v1/jobs/${jobId}/runs/?limit=100`);
  if (!r.ok) return;
  runs = r.body.results;
  showRunChoices();
  logs.setRuns(runs);
  const body = document.querySelector("#runs tbody");
  if (!r.body.results.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "6", text: "No run yet: the job has not been placed." })));
    return;
  }
  body.replaceChildren(...r.body.results.map((run) => el("tr", { dataset: { run: String(run.number) } },
    el("td", { text: `#${run.number}` }),
    el("td", {}, el("span", { class: `status status-${run.status}`, text: run.status })),
    el("td", { text: when(run.started_at) }),
    el("td", { text: when(run.finished_at) }),
    el("td", { title: run.resume_note, text: run.resumed_from ? `${run.resumed_from}${run.resumed_from_step !== null ? ` (step ${run.resumed_from_step})` : ""}` : "scratch" }),
    el("td", { class: "reason-cell", text: run.status_reason }))));
}

/* The chart run selector: "current run" (follow it) and every run by number. */
function showRunChoices() {
  const current = runs.length ? runs[0].number : null;
  const chosen = runSelect.value;
  runSelect.replaceChildren(
    el("option", { value: "", text: current ? `current (#${current})` : "current" }),
    ...runs.map((run) => el("option", { value: String(run.number), text: `#${run.number} (${run.status})` })));
  runSelect.value = [...runSelect.options].some((o) => o.value === chosen) ? chosen : "";
  runSelect.disabled = runs.length < 2;
  showRunWindow();
}

/* Only the shown run's decisions and commands are drawn on its charts. */
function showRunWindow() {
  const i = runs.findIndex((run) => run.number === charts.run);
  if (i < 0) return;
  const seconds = (iso) => new Date(iso).getTime() / 1000;
  charts.setRunWindow(seconds(runs[i].created_at), i > 0 ? seconds(runs[i - 1].created_at) : null);
}

runSelect.addEventListener("change", () => {
  const run = runSelect.value ? Number(runSelect.value) : null;
  charts.showRun(run).catch(() => {}).finally(showRunWindow);
});
charts.onRunChange = () => showRunWindow();

document.getElementById("restart").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const button = document.getElementById("restart-button");
  const out = document.getElementById("restart-result");
  const body = {};
  if (document.getElementById("restart-from").value === "scratch") body.resume_from = null;
  const reason = document.getElementById("restart-reason").value.trim();
  if (reason) body.reason = reason;
  button.disabled = true;
  const r = await post(`/api/v1/jobs/${jobId}/restart/`, body);
  button.disabled = false;
  if (r.ok) {
    out.textContent = `Run ${r.body.number} started (${r.body.status}): ${r.body.resume_note}.`;
    out.className = "result ok";
    setText("job-step", 0);
    refreshDetail().catch(() => {});
    charts.currentRunIs(r.body.number);
    loadRuns();
  } else {
    out.textContent = `Restart refused: ${errorMessage(r)}`;
    out.className = "result error";
  }
});

/* --- events ------------------------------------------------------------------------ */

const eventList = document.getElementById("events");
const MAX_LOG = 400;

function addEvent(e) {
  if (eventList.querySelector(`li[data-id="${e.id}"]`)) return;
  lastEventId = Math.max(lastEventId, e.id);
  const li = el("li", { class: `event event-${e.kind}`, dataset: { id: String(e.id), kind: e.kind } },
    el("time", { datetime: e.time, text: new Date(e.time).toLocaleTimeString() }), " ",
    el("span", { class: "kind", text: e.kind }), " ",
    el("span", { class: "actor", text: e.actor }), " ",
    el("span", { class: "msg", text: e.message }),
    e.step !== null && e.step !== undefined ? el("span", { class: "muted", text: ` (step ${e.step})` }) : null);
  // Newest first; an event that arrives late (REST catch-up) still lands in id order.
  let before = eventList.firstElementChild;
  while (before && Number(before.dataset.id) > e.id) before = before.nextElementSibling;
  eventList.insertBefore(li, before);
  while (eventList.children.length > MAX_LOG) eventList.lastElementChild.remove();
  charts.addEventMarker(e);
  if (e.kind === "decision") loadApprovals();
  if (e.kind === "command" || e.kind === "decision") adaptationsSoon();
}

/* A command or decision event: read the adaptations again (once for a burst of events). */
let adaptationsTimer = null;
function adaptationsSoon() {
  clearTimeout(adaptationsTimer);
  adaptationsTimer = setTimeout(() => adaptations.load().catch(() => {}), 300);
}

async function loadEvents() {
  // The API returns up to 1000 per call, oldest first; page until we are current.
  for (let page = 0; page < 50; page++) {
    const r = await get(`/api/v1/jobs/${jobId}/events/?after=${lastEventId}`);
    if (!r.ok || !r.body.length) return;
    r.body.forEach(addEvent);
    if (r.body.length < 1000) return;
  }
}

/* --- live stream --------------------------------------------------------------------- */

const liveState = document.getElementById("live-state");
const trace = []; // recent connection events, for debugging (window.adaptrain.trace)
window.adaptrain.trace = trace;
function note(text) { trace.push(`${new Date().toISOString().slice(11, 23)} ${text}`); if (trace.length > 200) trace.shift(); }

function setLive(on, text) {
  liveState.textContent = text;
  liveState.className = on ? "live-on" : "live-off";
}

/* Reload stored series from `fromStep` (default: the last step shown) and merge them. */
async function catchUp(fromStep = null) {
  const since = fromStep ?? (charts.lastStep >= 0 ? charts.lastStep : null);
  await charts.load({ since, maxPoints: since === null ? 2000 : 5000 });
  note(`catch-up since ${since} → last step ${charts.lastStep}`);
  if (charts.follow) setStep(charts.lastStep);
  logs.catchUp().catch(() => {});
  await loadEvents();
}

/* Frames are numbered. A number skipped (a frame lost on the way, or one that arrives
 * after a later one) leaves a hole in what the charts show; if it is still missing a
 * moment later, the series are reloaded from the last step shown before the hole. */
let lastSeq = 0;
const seen = new Set();
const missingSeqs = new Set();
let gapStep = null;
let gapTimer = null;

function trackSeq(seq) {
  if (seen.has(seq)) return false;
  seen.add(seq);
  if (seen.size > 4000) for (const old of seen) { if (seen.size <= 2000) break; seen.delete(old); }
  missingSeqs.delete(seq);
  if (lastSeq && seq > lastSeq + 1) {
    for (let s = Math.max(lastSeq + 1, seq - 1000); s < seq; s++) if (!seen.has(s)) missingSeqs.add(s);
    if (gapStep === null) gapStep = Math.max(charts.lastStep, 0);
    note(`frames ${lastSeq + 1}..${seq - 1} not received yet`);
    clearTimeout(gapTimer);
    gapTimer = setTimeout(fillGap, 1500);
  }
  lastSeq = Math.max(lastSeq, seq);
  return true;
}

function fillGap() {
  if (!missingSeqs.size) { gapStep = null; return; }
  const from = gapStep;
  missingSeqs.clear();
  gapStep = null;
  catchUp(from).catch(() => {});
}

let retryMs = 500;
let lastJobSeq = 0;
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const url = `${proto}://${location.host}/ws/jobs/${jobId}/` + (lastSeq ? `?after=${lastSeq}` : "");
  const ws = new WebSocket(url);
  window.adaptrain.socket = ws;
  note(`connect ${url}`);
  ws.onopen = () => {
    setLive(true, "live");
    retryMs = 500;
    // Anything stored between the last REST read and this subscription.
    catchUp().catch(() => {});
  };
  ws.onmessage = (msg) => {
    const frame = JSON.parse(msg.data);
    if (frame.type === "resync") {
      // The server's frame log no longer reaches back to what we last saw.
      note("resync");
      catchUp(stepAtDisconnect).catch(() => {});
      return;
    }
    if (typeof frame.seq === "number" && !trackSeq(frame.seq)) return; // a repeat
    if (frame.type === "metrics") {
      const top = charts.applySeries(frame.data.series, frame.data.run);
      if (charts.follow && (frame.data.run === undefined || frame.data.run === charts.run)) setStep(top);
    }
    else if (frame.type === "event") addEvent(frame.data);
    else if (frame.type === "log") logs.applyFrame(frame.data);
    else if (frame.type === "job" && !(frame.seq < lastJobSeq)) { lastJobSeq = frame.seq || 0; applyJobFrame(frame.data); }
  };
  ws.onclose = (ev) => {
    note(`closed (${ev.code})`);
    stepAtDisconnect = Math.max(charts.lastStep, 0);
    setLive(false, "reconnecting…");
    setTimeout(() => { catchUp().catch(() => {}).finally(connect); }, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  };
}
let stepAtDisconnect = null;

/* --- commands ------------------------------------------------------------------------ */

const result = document.getElementById("command-result");

function showResult(text, ok) {
  result.textContent = text;
  result.className = `result ${ok ? "ok" : "error"}`;
}

async function sendCommand(action, value, origin) {
  const body = value === undefined ? { action } : { action, value };
  const r = await post(`/api/v1/jobs/${jobId}/commands/`, body);
  const fieldError = origin && origin.querySelector(".field-error");
  const input = origin && origin.querySelector("input, select");
  if (r.ok) {
    const c = r.body[0];
    showResult(`${action}${value !== undefined ? " " + value : ""} sent (command #${c ? c.id : "?"}, ${c ? c.state : "pending"}).`, true);
    if (fieldError) fieldError.textContent = "";
    if (input) input.removeAttribute("aria-invalid");
  } else {
    const message = errorMessage(r);
    showResult(`${action} refused: ${message}`, false);
    if (fieldError) fieldError.textContent = message;
    if (input) input.setAttribute("aria-invalid", "true");
  }
  return r;
}

document.querySelectorAll("form.cmd").forEach((form) => {
  const input = form.querySelector("input, select");
  const err = el("p", { class: "field-error", id: `${input.id}-error`, "aria-live": "polite" });
  form.append(err);
  input.setAttribute("aria-describedby", err.id);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const action = form.dataset.action;
    let value = input.value;
    if (input.type === "number") {
      value = action === "set_lr" ? parseFloat(value) : parseInt(value, 10);
      if (!isFinite(value)) { err.textContent = "Enter a number."; input.setAttribute("aria-invalid", "true"); input.focus(); return; }
    }
    sendCommand(action, value, form);
  });
});

document.querySelectorAll(".cmd-buttons button").forEach((button) => {
  const label = button.textContent;
  button.addEventListener("click", () => {
    const action = button.dataset.action;
    if (action === "stop" && button.dataset.armed !== "1") {
      // Two clicks to stop: a stray click or keypress must not end a training run.
      button.dataset.armed = "1";
      button.textContent = "Click again to stop";
      setTimeout(() => { button.dataset.armed = ""; button.textContent = label; }, 5000);
      return;
    }
    button.dataset.armed = "";
    button.textContent = label;
    sendCommand(action, undefined, null);
  });
});

/* --- approvals ----------------------------------------------------------------------- */

let approvalsSupported = true;
let approvalsKey = "";
const approvals = document.getElementById("approvals");

async function loadApprovals() {
  if (!approvalsSupported) return;
  const r = await get(`/api/v1/jobs/${jobId}/decisions/`);
  if (!r.ok) { if (missing(r)) approvalsSupported = false; return; }
  // Only the current run's: an earlier run's can be rejected over the API, not approved.
  const pending = r.body.filter((d) => d.outcome === "pending_approval"
    && (currentRunNumber === null || d.run === null || d.run === undefined || d.run === currentRunNumber));
  const key = pending.map((d) => d.id).join(",");
  approvals.hidden = pending.length === 0;
  if (key === approvalsKey) return;
  approvalsKey = key;
  const list = document.getElementById("approval-list");
  list.replaceChildren(...pending.map((d) => el("li", { class: "approval", dataset: { id: String(d.id) } },
    el("div", {}, el("strong", { text: d.rule }), ` wants ${d.action.type} → ${d.action.value} at step ${d.step}`),
    el("div", { class: "muted small", text: Object.entries(d.inputs || {}).filter(([, v]) => typeof v !== "object")
      .map(([k, v]) => `${k}=${formatNumber(v)}`).join(", ") }),
    el("div", { class: "row" },
      el("button", { type: "button", class: "small", onclick: () => decide(d.id, "approve") }, "Approve"),
      el("button", { type: "button", class: "small secondary", onclick: () => decide(d.id, "reject") }, "Reject")))));
}

async function decide(id, verb) {
  const r = await post(`/api/v1/jobs/${jobId}/decisions/${id}/${verb}/`);
  const out = document.getElementById("approval-result");
  out.textContent = r.ok ? `Decision ${id} ${verb === "approve" ? "approved" : "rejected"}.` : errorMessage(r);
  out.className = `result ${r.ok ? "ok" : "error"}`;
  approvalsKey = "";
  loadApprovals();
}

/* --- replay overlay (?replay=<policy id>, or ?replay=draft for the editor's unsaved
 * definition handed over in sessionStorage; linked from the policy editor) ------------ */

async function showReplayFromQuery() {
  const policyId = new URLSearchParams(location.search).get("replay");
  if (!policyId) return;
  const banner = document.getElementById("replay-banner");
  const text = document.getElementById("replay-text");
  banner.hidden = false;
  text.textContent = "Replaying policy…";
  let draft = null;
  if (policyId === "draft") {
    try { draft = JSON.parse(sessionStorage.getItem("adaptrain.replayDraft") || "null"); } catch (err) { draft = null; }
    if (!draft) { text.textContent = "The unsaved policy to replay is gone (it lives in the editor's tab); replay it from the editor again."; return; }
  }
  const r = draft ? await post("/api/v1/policies/replay/", { definition: draft.definition, job: jobId })
    : await post(`/api/v1/policies/${encodeURIComponent(policyId)}/replay/`, { job: jobId });
  if (!r.ok) { text.textContent = `Replay failed: ${errorMessage(r)}`; return; }
  const name = draft ? draft.name : `policy #${policyId}`;
  charts.showReplay(name, r.body.decisions);
  text.textContent = `Replay of ${name}${draft ? "" : ` (version ${r.body.version ?? "?"})`}: ${r.body.decisions.length} decision(s) over ${r.body.evaluations} evaluations, drawn as orange markers.`;
  document.getElementById("replay-clear").onclick = () => { charts.clearReplay(); banner.hidden = true; };
}

/* --- start ------------------------------------------------------------------------- */

const logScale = document.getElementById("log-scale");
logScale.checked = localStorage.getItem("adaptrain.logScale") === "1";
charts.setLogScale(logScale.checked);
logScale.addEventListener("change", () => {
  localStorage.setItem("adaptrain.logScale", logScale.checked ? "1" : "0");
  charts.setLogScale(logScale.checked);
});

const zoomReset = document.getElementById("zoom-reset");
charts.group.onZoom((range) => { zoomReset.hidden = !range; });
zoomReset.addEventListener("click", () => charts.group.setZoom(null));

setStatus(root.dataset.status);
logs.load();
adaptations.load().catch(() => {});
charts.load().catch(() => {}).then(() => { setStep(charts.lastStep); showRunWindow(); return loadEvents(); })
  .catch(() => {}).finally(() => { connect(); showReplayFromQuery(); });
every(4000, async () => {
  await refreshDetail();
  if (!TERMINAL.has(root.dataset.status)) {
    await loadApprovals();
    // The windows after each change fill in as the job reports: read them again.
    if (adaptations.count) await adaptations.load();
  }
});
