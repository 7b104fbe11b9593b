/* The job page's log panel: what the job's workers printed, one run at a time — every
 * worker's lines merged in their run's order or one worker's, each line prefixed with
 * the worker's rank and stderr marked — following new lines as `log` frames arrive on
 * the job's WebSocket.
 *
 * It opens on a run's last lines, scrolled to the end (where a failed run's traceback
 * is). While the reader is at the bottom it follows; scrolled up, it keeps the lines in
 * view where they are. At most DOM_CAP lines are kept (the oldest go; the REST API and
 * `adaptrain logs` have them all). Lines are numbered per run (`seq`): a frame that does
 * not follow on from what is shown (one missed while disconnected, or a flood's frame
 * that skipped its older lines) is filled in over REST, and a line never shows twice.
 * Like the charts it follows the job's current run, or stays on a run picked in its
 * run selector.
 */

import { el, errorMessage, get } from "./api.js";

const DOM_CAP = 2000;
const FIRST_LINES = 500;

export class JobLogs {
  constructor(root, jobId) {
    this.jobId = jobId;
    this.scroller = root.querySelector("#log-lines");
    this.note = root.querySelector("#log-note");
    this.workerSelect = root.querySelector("#log-worker");
    this.runSelect = root.querySelector("#log-run");
    this.latest = root.querySelector("#log-latest");
    this.follow = true; // follow the job's current run (else stay on `run`)
    this.run = null; // the run shown (null until the first answer says which)
    this.worker = null; // the worker shown (null: all, merged)
    this.covered = 0; // every line of the run up to this number is shown (or was, before the cap)
    this.shown = new Map(); // seq -> line element
    this.ranks = new Set();
    this.loading = null;
    this.pendingCatchUp = null;
    this.workerSelect.addEventListener("change", () => {
      this.worker = this.workerSelect.value === "" ? null : Number(this.workerSelect.value);
      this.load();
    });
    this.runSelect.addEventListener("change", () => {
      this.follow = this.runSelect.value === "";
      this.run = this.follow ? null : Number(this.runSelect.value);
      this.load();
    });
    this.scroller.addEventListener("scroll", () => { this.latest.hidden = this._atBottom(); });
    this.latest.addEventListener("click", () => this._toBottom());
  }

  _query(extra) {
    const q = new URLSearchParams(extra);
    if (!this.follow && this.run !== null) q.set("run", String(this.run));
    if (this.worker !== null) q.set("worker", String(this.worker));
    return `/api/v1/jobs/${this.jobId}/logs/?${q}`;
  }

  _atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 8;
  }

  _toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.latest.hidden = true;
  }

  /* Show the run's last lines (the current run's while following), scrolled to the end. */
  load() {
    const loading = (async () => {
      const r = await get(this._query({ tail: String(FIRST_LINES) }));
      if (loading !== this.loading) return; // a later load took over
      if (!r.ok) { this.note.textContent = `Logs unavailable: ${errorMessage(r)}`; return; }
      this.shown.clear();
      this.scroller.replaceChildren();
      this.run = r.body.run;
      const top = r.body.lines.length ? r.body.lines[r.body.lines.length - 1].seq : 0;
      this.covered = Math.max(r.body.last_seq, top);
      this._add(r.body.lines);
      this._describe(r.body);
      this._toBottom();
    })();
    this.loading = loading;
    return loading.catch(() => {});
  }

  _describe(page) {
    if (page.run === null) { this.note.textContent = "No output yet: the job has not started."; return; }
    const who = this.worker === null ? "" : `, worker ${this.worker}`;
    const total = page.last_seq - page.first_seq + 1;
    let text = `Run #${page.run}${who}: `;
    if (!page.lines.length) text += "no output yet.";
    else if (page.lines.length === FIRST_LINES && (this.worker !== null || total > FIRST_LINES)) {
      text += `the last ${FIRST_LINES} lines; \`adaptrain logs ${this.jobId}\` prints them all.`;
    } else text += "all its lines so far.";
    if (page.trimmed) text += ` Its oldest ${page.trimmed} lines were removed (the run's size cap).`;
    this.note.textContent = text;
  }

  /* Whether lines of run `run` belong here: the run shown, or — following the current
   * run — a newer one (a restart: the panel starts over with it). */
  _accept(run) {
    if (run === undefined || run === null || run === this.run) return true;
    if (this.follow && (this.run === null || run > this.run)) { this.load(); return false; }
    return false;
  }

  /* A `log` frame from the WebSocket: {run, lines, skipped}. */
  applyFrame(data) {
    if (!data.lines.length || !this._accept(data.run)) return;
    const first = data.lines[0].seq - (data.skipped || 0);
    if (first > this.covered + 1) this._scheduleCatchUp(); // something came before it unseen
    const last = data.lines[data.lines.length - 1].seq;
    if (first <= this.covered + 1) this.covered = Math.max(this.covered, last);
    this._add(data.lines.filter((line) => this.worker === null || line.rank === this.worker));
  }

  _scheduleCatchUp() {
    if (this.pendingCatchUp) return;
    this.pendingCatchUp = setTimeout(() => { this.pendingCatchUp = null; this.catchUp(); }, 300);
  }

  /* Fetch what came after the last line known to be covered (after a reconnection, or a
   * gap); too much of it, and the panel shows the last lines again instead. */
  async catchUp() {
    if (this.run === null) return this.load();
    const r = await get(this._query({ since: String(this.covered), limit: String(DOM_CAP) }));
    if (!r.ok || r.body.run !== this.run) return;
    if (r.body.more) { await this.load(); return; }
    const top = r.body.lines.length ? r.body.lines[r.body.lines.length - 1].seq : 0;
    this.covered = Math.max(this.covered, r.body.last_seq, top);
    this._add(r.body.lines);
  }

  _add(lines) {
    if (!lines.length) return;
    const stick = this._atBottom();
    for (const line of lines) {
      if (this.shown.has(line.seq)) continue;
      const node = this._line(line);
      this.shown.set(line.seq, node);
      // In number order; a late line (frames can cross) goes where it belongs.
      let after = this.scroller.lastElementChild;
      while (after && Number(after.dataset.seq) > line.seq) after = after.previousElementSibling;
      this.scroller.insertBefore(node, after ? after.nextSibling : this.scroller.firstChild);
      if (!this.ranks.has(line.rank)) { this.ranks.add(line.rank); this._workerChoices(); }
    }
    const height = this.scroller.scrollHeight;
    while (this.scroller.childElementCount > DOM_CAP) {
      const oldest = this.scroller.firstElementChild;
      this.shown.delete(Number(oldest.dataset.seq));
      oldest.remove();
    }
    if (stick) this._toBottom();
    else {
      // Scrolled up: keep what the reader looks at in place as lines above it go.
      this.scroller.scrollTop -= height - this.scroller.scrollHeight;
      this.latest.hidden = false;
    }
  }

  _line(line) {
    const err = line.stream === "stderr";
    const note = line.text.startsWith("[adaptrain] ");
    const cls = `log-line${err ? " log-stderr" : ""}${note ? " log-note" : ""}`;
    return el("div", { class: cls, dataset: { seq: String(line.seq), rank: String(line.rank), stream: line.stream },
      title: `${new Date(line.time * 1000).toLocaleTimeString()} · worker ${line.rank} · ${line.stream}` },
      el("span", { class: "log-rank", text: `[${line.rank}]` }),
      err ? el("span", { class: "log-err", text: "err" }) : null,
      el("span", { class: "log-text", text: line.text }));
  }

  /* The worker selector: "all workers" and every worker seen (the job's and the lines'). */
  setWorkers(ranks) {
    let added = false;
    for (const r of ranks) if (!this.ranks.has(r)) { this.ranks.add(r); added = true; }
    if (added) this._workerChoices();
  }

  _workerChoices() {
    const chosen = this.workerSelect.value;
    this.workerSelect.replaceChildren(
      el("option", { value: "", text: "all (merged)" }),
      ...[...this.ranks].sort((a, b) => a - b).map((r) => el("option", { value: String(r), text: `worker ${r}` })));
    this.workerSelect.value = chosen;
  }

  /* The run selector, as the charts' one: "current" (follow it) and every run by number. */
  setRuns(runs) {
    const current = runs.length ? runs[0].number : null;
    const chosen = this.runSelect.value;
    this.runSelect.replaceChildren(
      el("option", { value: "", text: current ? `current (#${current})` : "current" }),
      ...runs.map((run) => el("option", { value: String(run.number), text: `#${run.number} (${run.status})` })));
    this.runSelect.value = [...this.runSelect.options].some((o) => o.value === chosen) ? chosen : "";
    this.runSelect.disabled = runs.length < 2;
  }

  /* The job's current run is `run` now: while following, a newer one starts the panel over. */
  currentRunIs(run) {
    if (this.follow && run !== null && this.run !== null && run > this.run) this.load();
  }
}
