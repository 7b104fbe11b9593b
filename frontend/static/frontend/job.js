/* The job page: load the stored series once, then apply live frames from /ws/jobs/{id}/.
 *
 * Frames carry a per-job sequence number; the page ignores frames it has already
 * applied. After a dropped connection it reloads the stored series over REST (which
 * fills the gap) before it subscribes again.
 */
(function () {
  "use strict";
  const root = document.getElementById("job");
  const jobId = root.dataset.jobId;
  const charts = {};
  document.querySelectorAll("canvas[data-metric]").forEach((c) => {
    charts[c.dataset.metric] = new window.LiveChart(c);
  });
  const names = Object.keys(charts);
  let lastSeq = 0;

  function seriesKey(s) { return s.rank === null || s.rank === undefined ? "job" : "rank " + s.rank; }

  // The charts show whole-job series (reported by rank 0); per-worker series are in the API.
  function wanted(s) {
    return Boolean(charts[s.name]) && (s.rank === null || s.rank === undefined);
  }

  function setText(id, value) {
    const el = document.getElementById(id);
    if (el && value !== undefined && value !== null) el.textContent = value;
  }

  function applyJob(d) {
    const status = document.getElementById("job-status");
    status.textContent = d.status;
    status.className = "status status-" + d.status;
    setText("job-batch-size", d.batch_size);
    setText("job-lr", d.lr);
    setText("job-workers", d.workers);
    setText("job-reason", d.status_reason);
  }

  const seenEvents = new Set();
  function addEvent(e) {
    if (seenEvents.has(e.id)) return;
    seenEvents.add(e.id);
    const li = document.createElement("li");
    const when = new Date(e.time).toLocaleTimeString();
    li.textContent = `${when} · ${e.actor} · ${e.message}` + (e.step !== null && e.step !== undefined ? ` (step ${e.step})` : "");
    li.className = "event event-" + e.kind;
    document.getElementById("events").prepend(li);
  }

  function applyMetrics(data) {
    let top = 0;
    for (const s of data.series) {
      if (s.step.length) top = Math.max(top, s.step[s.step.length - 1]);
      if (wanted(s)) charts[s.name].append(seriesKey(s), seriesKey(s), s.step, s.value);
    }
    const stepEl = document.getElementById("job-step");
    if (top > Number(stepEl.textContent || 0)) stepEl.textContent = top;
  }

  async function loadHistory() {
    const url = `/api/v1/jobs/${jobId}/metrics/?names=${names.join(",")}&max_points=2000&per_rank=false`;
    const resp = await fetch(url, { credentials: "same-origin" });
    if (!resp.ok) return;
    const body = await resp.json();
    for (const s of body.series) {
      if (wanted(s)) charts[s.name].set(seriesKey(s), seriesKey(s), s.step, s.value);
    }
    lastSeq = Math.max(lastSeq, body.seq || 0);
    const ev = await fetch(`/api/v1/jobs/${jobId}/events/`, { credentials: "same-origin" });
    if (ev.ok) (await ev.json()).forEach(addEvent);
  }

  let retry = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/jobs/${jobId}/?after=${lastSeq}`);
    const state = document.getElementById("live-state");
    ws.onopen = () => { state.textContent = "live"; state.className = "live-on"; retry = 500; };
    ws.onmessage = (msg) => {
      const frame = JSON.parse(msg.data);
      if (frame.seq <= lastSeq) return;
      lastSeq = frame.seq;
      if (frame.type === "metrics") applyMetrics(frame.data);
      else if (frame.type === "event") addEvent(frame.data);
      else if (frame.type === "job") applyJob(frame.data);
    };
    ws.onclose = () => {
      state.textContent = "reconnecting…"; state.className = "live-off";
      // Fill whatever was missed while disconnected from the stored series, then resume.
      setTimeout(() => loadHistory().catch(() => {}).finally(connect), retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  loadHistory().finally(connect);
})();
