/* A job's charts: which metrics, how they load from REST, and how events become markers.
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
];

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
  constructor(container, jobId, { metrics = JOB_METRICS } = {}) {
    this.jobId = jobId;
    this.group = new ChartGroup();
    this.charts = {};
    for (const m of metrics) {
      this.charts[m.name] = new TimeChart(container, { metric: m.name, title: m.title, stepped: m.stepped, group: this.group });
    }
    this.names = metrics.map((m) => m.name);
    this.clock = { t: [], s: [] }; // (unix seconds, step) pairs, to place events that carry no step
    this.commandActors = new Map(); // command id -> who issued it
    this.lastStep = -1;
  }

  /* Whole-job series only (rank null); per-worker series stay in the API. Always a
   * merge, never a replace: a REST answer may be older than frames already applied. */
  applySeries(seriesList) {
    let top = this.lastStep;
    for (const s of seriesList) {
      if (s.rank !== null && s.rank !== undefined) continue;
      if (s.step.length) top = Math.max(top, s.step[s.step.length - 1]);
      if (s.time && s.time.length) this._learnClock(s.time, s.step);
      const chart = this.charts[s.name];
      if (!chart) continue;
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
    const r = await get(url);
    if (!r.ok) throw new Error(r.body.message);
    this.applySeries(r.body.series);
    return r.body.seq || 0;
  }

  /* An event (from the events API or the WebSocket) becomes a marker when it is a
   * decision or a command; returns whether it did. */
  addEventMarker(e) {
    const data = e.data || {};
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
