/* A job's charts: which metrics, how they load from REST, and how events become markers.
 *
 * The charts show one run of the job at a time (a restarted run counts its steps from 0
 * again, so two runs drawn together would overlap). By default they follow the job's
 * current run: when a later run's points arrive (a restart), they start over with it.
 * `showRun(n)` pins them to run n (a look at an earlier run); `showRun(null)` follows
 * the current run again.
 *
 * Used by the job page (live) and by the policy editor's replay preview (static).
 */

import { get } from "./api.js";
import { ChartGroup, TimeChart, formatValue } from "./chart.js";

export const JOB_METRICS = [
  { name: "loss", title: "loss" },
  { name: "accuracy", title: "accuracy" },
  { name: "throughput", title: "throughput (samples/s)" },
  { name: "batch_size", title: "batch size (global)", stepped: true },
  { name: "lr", title: "learning rate", stepped: true },
  { name: "workers", title: "workers", stepped: true },
  { name: "gns", title: "gradient noise scale" },
  { name: "grad_snr", title: "gradient SNR" },
  // Only jobs whose workers own GPUs report these: their charts show once points arrive.
  { name: "gpu_util", title: "GPU utilisation (%)", onlyWithData: true },
  { name: "gpu_mem", title: "GPU memory used (%)", onlyWithData: true },
];

const EVENT_MARKER_KINDS = ["decision", "command", "applied", "failed"];

function inputsText(inputs) {
  if (!inputs || typeof inputs !== "object") return "";
  const parts = [];
  for (const [k, v] of Object.entries(inputs)) {
    if (v !== null && typeof v === "object") continue;
    parts.push(`${k}=${typeof v === "number" ? formatValue(v) : v}`);
  }
  return parts.join(", ");
}

function actionText(action) {
  if (!action) return "";
  return action.value === undefined || action.value === null ? action.type : `${action.type} → ${action.value}`;
}

export class JobCharts {
  constructor(container, jobId, { metrics = JOB_METRICS, run = null } = {}) {
    this.jobId = jobId;
    this.container = container;
    this.follow = run === null; // follow the job's current run (else: stay on `run`)
    this.run = run; // the run number shown; null until the first answer says which
    this.runWindow = null; // [from, to) unix seconds of the run shown: markers for events without a run
    this.events = new Map(); // event id -> event, to redraw markers when the run changes
    this.onRunChange = null; // called with the new run number when the charts switch runs
    this.group = new ChartGroup();
    this.charts = {};
    for (const m of metrics) {
      this.charts[m.name] = new TimeChart(container, { metric: m.name, title: m.title, stepped: m.stepped, group: this.group });
      if (m.onlyWithData) this.charts[m.name].figure.hidden = true;
    }
    this.names = metrics.map((m) => m.name);
    this.clock = { t: [], s: [] }; // (unix seconds, step) pairs, to place events that carry no step
    this.commandActors = new Map(); // command id -> who issued it
    this.lastStep = -1;
    this._showing(run);
  }

  /* Log-scale y axes on every chart but the stepped ones (batch size, lr, workers are
   * read as levels). */
  setLogScale(on) {
    for (const [name, c] of Object.entries(this.charts)) c.setLogY(on && !c.stepped);
    this.container.dataset.scale = on ? "log" : "linear";
  }

  _showing(run) {
    this.run = run;
    if (run === null) delete this.container.dataset.run;
    else this.container.dataset.run = String(run);
  }

  /* Forget what is drawn and show run `run` (its points are loaded or arrive next). */
  _switchTo(run) {
    for (const c of Object.values(this.charts)) c.clear();
    this.clock = { t: [], s: [] };
    this.lastStep = -1;
    this.runWindow = null;
    this._showing(run);
    if (this.onRunChange) this.onRunChange(run);
  }

  /* Whether points of run `run` are to be drawn: the run shown, or a later one while
   * following the current run (a restart: the charts start over with it). */
  _accept(run) {
    if (run === undefined || run === null) return true; // a frame from before runs were sent
    if (this.run === null) { this._showing(run); return true; }
    if (run === this.run) return true;
    if (this.follow && run > this.run) { this._switchTo(run); return true; }
    return false;
  }

  /* The job's current run is `run` now (the page learnt it from the job): while
   * following, a newer one than shown (a restart) clears the charts for it at once,
   * before its first points arrive. */
  currentRunIs(run) {
    if (!this.follow || run === null || run === undefined || run === this.run) return false;
    if (this.run !== null && run < this.run) return false;
    this._switchTo(run);
    this.load().catch(() => {});
    return true;
  }

  /* Show run `run` (null: follow the job's current run) and load its stored series. */
  async showRun(run) {
    this.follow = run === null;
    this._switchTo(run);
    return this.load();
  }

  /* The time span of the run shown, [from, to) in unix seconds (to null while it is the
   * latest run): events that carry no run number are drawn as markers only inside it. */
  setRunWindow(from, to) {
    this.runWindow = [from, to];
    for (const c of Object.values(this.charts)) for (const kind of EVENT_MARKER_KINDS) c.clearMarkers(kind);
    for (const e of this.events.values()) this._marker(e);
  }

  /* Whole-job series only (rank null); per-worker series stay in the API. Always a
   * merge, never a replace: a REST answer may be older than frames already applied.
   * `run` is the run the series are of; series of a run not shown are ignored. */
  applySeries(seriesList, run) {
    if (!this._accept(run)) return this.lastStep;
    let top = this.lastStep;
    for (const s of seriesList) {
      if (s.rank !== null && s.rank !== undefined) continue;
      if (s.step.length) top = Math.max(top, s.step[s.step.length - 1]);
      if (s.time && s.time.length) this._learnClock(s.time, s.step);
      const chart = this.charts[s.name];
      if (!chart) continue;
      if (s.step.length) chart.figure.hidden = false;
      chart.merge("job", "job", s.step, s.value);
    }
    this.lastStep = top;
    return top;
  }

  _learnClock(times, steps) {
    const c = this.clock;
    for (let i = 0; i < times.length; i++) {
      if (!c.t.length || times[i] > c.t[c.t.length - 1]) { c.t.push(times[i]); c.s.push(steps[i]); }
    }
  }

  stepAt(isoTime) {
    const t = new Date(isoTime).getTime() / 1000;
    const c = this.clock;
    if (!c.t.length || !isFinite(t)) return null;
    let lo = 0, hi = c.t.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (c.t[mid] < t) lo = mid + 1; else hi = mid; }
    return c.s[Math.min(lo, c.s.length - 1)];
  }

  /* Load stored series; with `since`, only steps from there on, merged into what is shown. */
  async load({ since = null, maxPoints = 2000 } = {}) {
    let url = `/api/v1/jobs/${this.jobId}/metrics/?names=${this.names.join(",")}&per_rank=false&max_points=${maxPoints}`;
    if (since !== null) url += `&since=${since}`;
    // Following: the current run, whichever it is now (a newer one than shown resets).
    if (!this.follow && this.run !== null) url += `&run=${this.run}`;
    const r = await get(url);
    if (!r.ok) throw new Error(r.body.message);
    this.applySeries(r.body.series, r.body.run);
    return r.body.seq || 0;
  }

  /* An event (from the events API or the WebSocket) becomes a marker when it is a
   * decision or a command; returns whether it did. */
  addEventMarker(e) {
    if (e.kind !== "decision" && e.kind !== "command") return false;
    this.events.set(e.id, e);
    return this._marker(e);
  }

  _marker(e) {
    const data = e.data || {};
    if (typeof e.run === "number" && this.run !== null) {
      if (e.run !== this.run) return false; // another run's
    } else if (this.runWindow) {
      // An event recorded without its run: placed by time between the runs' starts.
      const t = new Date(e.time).getTime() / 1000;
      const [from, to] = this.runWindow;
      if (t < from || (to !== null && t >= to)) return false; // another run's
    }
    let kind = null, text = "", step = e.step;
    const when = new Date(e.time).toLocaleTimeString();
    if (e.kind === "decision") {
      kind = "decision";
      text = [`Decision: rule "${data.rule}"`, `action: ${actionText(data.action)}`,
        `outcome: ${data.outcome || "—"}`, `inputs: ${inputsText(data.inputs) || "—"}`,
        `by ${e.actor}`, `step ${e.step ?? "?"} · ${when}`].join("\n");
    } else if (e.kind === "command") {
      const issued = !e.actor.startsWith("node:");
      if (issued) {
        if (data.command) this.commandActors.set(data.command, e.actor);
        // A policy's command is shown by its decision marker already.
        if (e.actor.startsWith("policy:")) return false;
        kind = "command";
        text = [`Command: ${data.type} ${data.payload && data.payload.value !== undefined ? data.payload.value : ""}`,
          `by ${e.actor}`, `${when}`].join("\n");
      } else {
        kind = data.state === "failed" ? "failed" : "applied";
        const by = this.commandActors.get(data.command);
        text = [`${e.message}`, `reported by ${e.actor}`, by ? `issued by ${by}` : null, `${when}`]
          .filter(Boolean).join("\n");
      }
    } else {
      return false;
    }
    if (step === null || step === undefined) step = this.stepAt(e.time) ?? (this.lastStep >= 0 ? this.lastStep : null);
    if (step === null) return false;
    for (const c of Object.values(this.charts)) c.setMarker({ id: `ev-${e.id}`, step, kind, text });
    return true;
  }

  showReplay(policyName, decisions) {
    this.clearReplay();
    decisions.forEach((d, i) => {
      const text = [`Replay of "${policyName}": rule "${d.rule}"`, `would do: ${actionText(d.action)}`,
        `inputs: ${inputsText(d.inputs) || "—"}`, `step ${d.step}`].join("\n");
      for (const c of Object.values(this.charts)) c.setMarker({ id: `replay-${i}`, step: d.step, kind: "replay", text });
    });
  }

  clearReplay() {
    for (const c of Object.values(this.charts)) c.clearMarkers("replay");
  }
}
