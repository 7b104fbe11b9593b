/* The job page's "What adaptation did" table: each change of the job's knobs with its
 * throughput, efficiency and goodput before and after, and the time it saved or lost
 * (GET /api/v1/jobs/{id}/adaptations/; the figures are the server's, see
 * docs/adaptation.md).
 *
 * The page reloads it when a command or decision event arrives and on its poll while the
 * job runs (the "after" windows fill in as points arrive). Rows are keyed by the command's
 * number, so a reload updates them in place. A figure the windows do not give is shown as
 * "not enough data", with the reason as its tooltip — never guessed.
 */

import { el, formatNumber, get, missing } from "./api.js";

const NO_DATA = "not enough data";
const LABELS = {
  set_batch_size: "batch size",
  set_lr: "learning rate",
  scale_workers: "workers",
  set_strategy: "strategy",
  set_topology: "topology",
};

function seconds(s) {
  const a = Math.abs(s);
  const text = a < 90 ? `${a.toFixed(a < 10 ? 1 : 0)} s` : a < 5400 ? `${(a / 60).toFixed(1)} min` : `${(a / 3600).toFixed(1)} h`;
  return `${s < 0 ? "−" : "+"}${text}`;
}

function pct(v) {
  return v === null || v === undefined ? null : `${(v * 100).toFixed(0)} %`;
}

/* "before → after" for one figure; a side with no value is "not enough data". */
function pair(before, after, format, why) {
  const b = before === null || before === undefined ? null : format(before);
  const a = after === null || after === undefined ? null : format(after);
  if (b === null && a === null) return el("td", { class: "nodata", title: why, text: NO_DATA });
  const td = el("td", {}, b ?? el("span", { class: "nodata", text: NO_DATA }), " → ",
    a ?? el("span", { class: "nodata", text: NO_DATA }));
  if (b === null || a === null) td.title = why;
  return td;
}

function by(row) {
  if (row.decision) {
    const asked = row.decision.action && row.decision.action !== row.action ? ` (${row.decision.action})` : "";
    return `${row.decision.policy} / ${row.decision.rule}${asked}`;
  }
  return row.issued_by;
}

function rowOf(row) {
  const label = LABELS[row.action] || row.action;
  const from = row.value_from === null || row.value_from === undefined ? "?" : formatNumber(row.value_from);
  const change = `${label} ${from} → ${formatNumber(row.value_to)}`;
  const why = row.note || "the windows around the change have no points of this series";
  const cells = [
    el("td", { text: `#${row.run} · ${row.step ?? "—"}` }),
    el("td", {}, change, row.state === "applied" ? null : el("span", { class: `status status-${row.state}`, text: row.state })),
    el("td", { class: "small", text: by(row) }),
  ];
  if (row.state !== "applied") {
    cells.push(el("td", { colspan: "4", class: "muted", text: row.note }));
  } else {
    const b = row.before || {};
    const a = row.after || {};
    cells.push(
      pair(b.throughput, a.throughput, (v) => formatNumber(Number(v.toPrecision(4))), why),
      pair(b.efficiency, a.efficiency, pct, why),
      pair(b.goodput, a.goodput, (v) => formatNumber(Number(v.toPrecision(4))), why));
    const saved = row.time_saved_s;
    cells.push(saved === null || saved === undefined
      ? el("td", { class: "nodata", title: why, text: NO_DATA })
      : el("td", { class: saved >= 0 ? "saved" : "lost",
        title: `over ${row.span_steps} steps in force (${row.span_s.toFixed(1)} s)`
          + (row.decision && row.decision.predicted_gain !== null ? `; the policy predicted ${pct(row.decision.predicted_gain)} more goodput` : ""),
        text: seconds(saved) }));
  }
  return el("tr", { dataset: { seq: String(row.seq), state: row.state } }, ...cells);
}

export class Adaptations {
  constructor(card, jobId) {
    this.card = card;
    this.jobId = jobId;
    this.body = card.querySelector("tbody");
    this.total = card.querySelector("#adaptations-total");
    this.count = 0;
    this.supported = true;
    this.inFlight = null;
    this.again = false;
  }

  /* Read the table again (calls while one read is in flight coalesce into one more). */
  async load() {
    if (!this.supported) return;
    if (this.inFlight) { this.again = true; return this.inFlight; }
    this.inFlight = (async () => {
      do {
        this.again = false;
        const r = await get(`/api/v1/jobs/${this.jobId}/adaptations/`);
        if (!r.ok) {
          if (missing(r)) { this.supported = false; this.card.hidden = true; }
          return;
        }
        this.show(r.body);
      } while (this.again);
    })();
    try { await this.inFlight; } finally { this.inFlight = null; }
  }

  show(body) {
    const base = this.card.querySelector("#adaptations-base");
    if (base) base.textContent = formatNumber(body.base_batch);
    const rows = body.adaptations;
    this.count = rows.length;
    this.card.dataset.rows = String(rows.length);
    if (!rows.length) {
      this.body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7",
        text: "No adaptation yet. When a policy, the goodput allocator or you change the batch size, learning rate, "
          + "workers, strategy or topology, each change is listed here with what it did." })));
      this.total.textContent = "";
      return;
    }
    // Newest first, as the event log.
    this.body.replaceChildren(...rows.slice().reverse().map(rowOf));
    const known = rows.filter((r) => r.time_saved_s !== null && r.time_saved_s !== undefined);
    this.total.textContent = known.length
      ? `In all: ${seconds(body.time_saved_s)} against staying put (${known.length} of ${rows.length} change(s) with an estimate).`
      : `No change has an estimate yet (${rows.length} listed).`;
  }
}
