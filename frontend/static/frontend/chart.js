/* Live time-series charts on canvas: no dependencies, nothing from the network.
 *
 * A TimeChart draws the series of one metric against the training step, plus markers
 * (policy decisions, commands, replayed decisions) as vertical lines whose tooltip
 * tells the rule, the inputs and who acted. Charts of one page share a ChartGroup, so
 * zooming one zooms all and the hover crosshair follows the same step everywhere.
 *
 * Why it does not flicker or lose the user's place while data streams in: the DOM is
 * built once; appending data only pushes onto arrays and asks for a paint, and paints
 * are coalesced to one per animation frame. The zoom window (drag-select on x, double
 * click to reset) and the hover position live in the group, not in the data, so a new
 * point changes neither. Large series are decimated per pixel column (min/max) at paint
 * time, so a paint costs O(visible points) with a small constant.
 */

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
const MARKER_COLORS = { decision: "#7c3aed", command: "#0369a1", applied: "#15803d", replay: "#ea580c", failed: "#b91c1c" };
const PAD = { l: 58, r: 12, t: 10, b: 24 };
const HEIGHT = 190;

export function formatValue(v) {
  if (v === null || v === undefined || !isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  if (a >= 1000) return String(Math.round(v * 10) / 10);
  return String(Math.round(v * 10000) / 10000);
}

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
}

function ticks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

/* Ticks of a log10 axis spanning [lo, hi] (in log10 units): the 1-2-5 values of each
 * decade inside it (only the powers of ten when it spans many), as log10 values. */
function logTicks(lo, hi) {
  const out = [];
  const mantissas = hi - lo > 4 ? [1] : hi - lo > 1.5 ? [1, 3] : [1, 2, 5];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of mantissas) {
      const t = e + Math.log10(m);
      if (t >= lo && t <= hi) out.push(t);
    }
  }
  return out.length >= 2 ? out : ticks(lo, hi, 4);
}

/* First index i with xs[i] >= x (xs sorted ascending). */
function lowerBound(xs, x) {
  let lo = 0, hi = xs.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
  return lo;
}

/* Merge sorted (xs, ys) into the series in place; a step already present takes the new value. */
function mergeInto(s, xs, ys) {
  const n = s.x.length;
  if (!xs.length) return;
  if (n === 0 || xs[0] > s.x[n - 1]) {
    for (let i = 0; i < xs.length; i++) {
      if (i > 0 && xs[i] <= xs[i - 1]) continue;
      s.x.push(xs[i]); s.y.push(ys[i]);
    }
    return;
  }
  const mx = [], my = [];
  let i = 0, j = 0;
  while (i < n || j < xs.length) {
    if (j >= xs.length || (i < n && s.x[i] < xs[j])) { mx.push(s.x[i]); my.push(s.y[i]); i++; }
    else if (i >= n || xs[j] < s.x[i]) { mx.push(xs[j]); my.push(ys[j]); j++; }
    else { mx.push(xs[j]); my.push(ys[j]); i++; j++; }
    const k = mx.length - 1;
    if (k > 0 && mx[k] === mx[k - 1]) { mx.splice(k - 1, 1); my.splice(k - 1, 1); }
  }
  s.x = mx; s.y = my;
}

export class ChartGroup {
  constructor() {
    this.charts = [];
    this.zoom = null; // [x0, x1] in steps, or null to follow the data
    this.hoverStep = null;
    this.listeners = [];
  }
  add(chart) { this.charts.push(chart); chart.group = this; }
  setZoom(range) {
    this.zoom = range;
    const label = range ? `${Math.round(range[0])}-${Math.round(range[1])}` : "";
    for (const c of this.charts) { c.canvas.dataset.zoom = label; c.requestPaint(); }
    for (const fn of this.listeners) fn(range);
  }
  setHover(step) {
    if (step === this.hoverStep) return;
    this.hoverStep = step;
    for (const c of this.charts) c.requestPaint();
  }
  onZoom(fn) { this.listeners.push(fn); }
  /* The x domain when not zoomed: union of every chart's data, so charts line up. */
  dataDomain() {
    let lo = Infinity, hi = -Infinity;
    for (const c of this.charts) {
      const [a, b] = c.ownDomain();
      lo = Math.min(lo, a); hi = Math.max(hi, b);
    }
    return [lo, hi];
  }
}

export class TimeChart {
  /* container: an element the chart appends its figure to. */
  constructor(container, { metric, title, stepped = false, group = null, colors = PALETTE }) {
    this.metric = metric;
    this.stepped = stepped;
    this.colors = colors;
    this.series = new Map(); // key -> {label, color, x: [], y: []}
    this.markers = new Map(); // id -> {id, step, kind, text}
    this.logY = false; // a log-scale y axis (values ≤ 0 are then left out)
    this.pending = false;
    this.hover = null; // {x, y} in CSS px, while the pointer is over this chart
    this.drag = null; // {x0, x1} in CSS px while selecting
    this.group = null;
    (group || new ChartGroup()).add(this);

    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.textContent = title || metric;
    this.latest = document.createElement("span");
    this.latest.className = "latest";
    this.latest.id = `latest-${metric}`;
    caption.append(name, this.latest);
    this.plot = document.createElement("div");
    this.plot.className = "plot";
    this.canvas = document.createElement("canvas");
    this.canvas.id = `chart-${metric}`;
    this.canvas.dataset.metric = metric;
    this.canvas.dataset.points = "0";
    this.canvas.dataset.markers = "0";
    this.canvas.dataset.zoom = "";
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label",
      `${title || metric} by step. Drag to zoom, double-click or press 0 to reset; + and - zoom, arrow keys pan.`);
    this.tooltip = document.createElement("div");
    this.tooltip.className = "tooltip";
    this.tooltip.hidden = true;
    this.tooltip.setAttribute("role", "status");
    this.plot.append(this.canvas, this.tooltip);
    this.figure.append(caption, this.plot);
    container.append(this.figure);
    this.ctx = this.canvas.getContext("2d");
    this.cssWidth = 0;
    this._bindEvents();
    if (window.ResizeObserver) {
      new ResizeObserver(() => this.requestPaint()).observe(this.plot);
    } else {
      window.addEventListener("resize", () => this.requestPaint());
    }
    this.requestPaint();
  }

  /* --- data --------------------------------------------------------------------- */

  _get(key, label) {
    let s = this.series.get(key);
    if (!s) {
      s = { label: label || key, color: this.colors[this.series.size % this.colors.length], x: [], y: [] };
      this.series.set(key, s);
    }
    return s;
  }

  set(key, label, steps, values) {
    const s = this._get(key, label);
    s.x = []; s.y = [];
    mergeInto(s, steps, values);
    this._changed();
  }

  /* Append or merge points (steps ascending); duplicates of a step are replaced. */
  merge(key, label, steps, values) {
    mergeInto(this._get(key, label), steps, values);
    this._changed();
  }

  /* Draw the y axis on a log scale (on) or a linear one. */
  setLogY(on) {
    this.logY = Boolean(on);
    this.canvas.dataset.scale = this.logY ? "log" : "linear";
    this.requestPaint();
  }

  /* Drop every series and marker (the chart shows another run next). */
  clear() {
    this.series.clear();
    this.markers.clear();
    this.canvas.dataset.markers = "0";
    this.latest.textContent = "";
    this._changed();
  }

  lastStep() {
    let top = -Infinity;
    for (const s of this.series.values()) if (s.x.length) top = Math.max(top, s.x[s.x.length - 1]);
    return top;
  }

  setMarker(marker) {
    this.markers.set(marker.id, marker);
    this.canvas.dataset.markers = String(this.markers.size);
    this.requestPaint();
  }

  clearMarkers(kind) {
    for (const [id, m] of this.markers) if (!kind || m.kind === kind) this.markers.delete(id);
    this.canvas.dataset.markers = String(this.markers.size);
    this.requestPaint();
  }

  _changed() {
    let n = 0;
    for (const s of this.series.values()) n += s.x.length;
    this.canvas.dataset.points = String(n);
    const first = this.series.values().next().value;
    if (first && first.y.length) this.latest.textContent = formatValue(first.y[first.y.length - 1]);
    if (this.group) for (const c of this.group.charts) c.requestPaint(); else this.requestPaint();
  }

  ownDomain() {
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series.values()) {
      if (!s.x.length) continue;
      lo = Math.min(lo, s.x[0]); hi = Math.max(hi, s.x[s.x.length - 1]);
    }
    for (const m of this.markers.values()) { lo = Math.min(lo, m.step); hi = Math.max(hi, m.step); }
    return [lo, hi];
  }

  /* --- geometry ------------------------------------------------------------------ */

  xDomain() {
    if (this.group.zoom) return this.group.zoom;
    let [lo, hi] = this.group.dataDomain();
    if (!isFinite(lo)) return [0, 1];
    if (hi <= lo) hi = lo + 1;
    return [lo, hi];
  }

  stepToPx(step) {
    const [lo, hi] = this.xDomain();
    return PAD.l + (step - lo) / (hi - lo) * (this.cssWidth - PAD.l - PAD.r);
  }

  pxToStep(px) {
    const [lo, hi] = this.xDomain();
    return lo + (px - PAD.l) / (this.cssWidth - PAD.l - PAD.r) * (hi - lo);
  }

  /* --- input -------------------------------------------------------------------- */

  _bindEvents() {
    const c = this.canvas;
    const pos = (ev) => { const r = c.getBoundingClientRect(); return { x: ev.clientX - r.left, y: ev.clientY - r.top }; };
    c.addEventListener("pointerdown", (ev) => {
      if (ev.button !== 0) return;
      const p = pos(ev);
      this.drag = { x0: p.x, x1: p.x };
      c.setPointerCapture(ev.pointerId);
    });
    c.addEventListener("pointermove", (ev) => {
      const p = pos(ev);
      this.hover = p;
      if (this.drag) this.drag.x1 = p.x;
      this.group.setHover(this.pxToStep(p.x));
      this.requestPaint();
    });
    c.addEventListener("pointerup", (ev) => {
      if (!this.drag) return;
      const { x0, x1 } = this.drag;
      this.drag = null;
      if (Math.abs(x1 - x0) > 5) {
        const a = this.pxToStep(Math.min(x0, x1)), b = this.pxToStep(Math.max(x0, x1));
        this.group.setZoom([a, b]);
      }
      this.requestPaint();
    });
    c.addEventListener("pointerleave", () => {
      if (this.drag) return;
      this.hover = null;
      this.group.setHover(null);
      this.requestPaint();
    });
    c.addEventListener("dblclick", () => this.group.setZoom(null));
    c.addEventListener("keydown", (ev) => {
      const [lo, hi] = this.xDomain();
      const span = hi - lo;
      let next = null;
      if (ev.key === "0" || ev.key === "Escape") { this.group.setZoom(null); ev.preventDefault(); return; }
      if (ev.key === "+" || ev.key === "=") next = [lo + span / 4, hi - span / 4];
      else if (ev.key === "-") next = [lo - span / 2, hi + span / 2];
      else if (ev.key === "ArrowLeft") next = [lo - span / 5, hi - span / 5];
      else if (ev.key === "ArrowRight") next = [lo + span / 5, hi + span / 5];
      if (next) { this.group.setZoom(next); ev.preventDefault(); }
    });
  }

  /* --- painting ----------------------------------------------------------------- */

  requestPaint() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this._paint(); });
  }

  _resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(this.plot.clientWidth, 120);
    if (w !== this.cssWidth || this.canvas.height !== Math.round(HEIGHT * dpr)) {
      this.cssWidth = w;
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(HEIGHT * dpr);
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${HEIGHT}px`;
    }
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  _paint() {
    this._resize();
    const { ctx } = this;
    const w = this.cssWidth, h = HEIGHT;
    const plotW = w - PAD.l - PAD.r, plotH = h - PAD.t - PAD.b;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    const zoom = this.group.zoom;
    this.canvas.dataset.zoom = zoom ? `${Math.round(zoom[0])}-${Math.round(zoom[1])}` : "";
    const [x0, x1] = this.xDomain();
    // On a log scale the y axis is log10 of the value; a value ≤ 0 has no place on it.
    const f = this.logY ? (v) => (v > 0 ? Math.log10(v) : NaN) : (v) => v;

    // y range over the visible points only, so a zoom also rescales y.
    let ymin = Infinity, ymax = -Infinity, any = false;
    const visible = [];
    for (const s of this.series.values()) {
      const i0 = Math.max(lowerBound(s.x, x0) - 1, 0);
      const i1 = Math.min(lowerBound(s.x, x1) + 1, s.x.length);
      visible.push([s, i0, i1]);
      for (let i = i0; i < i1; i++) {
        const v = f(s.y[i]);
        if (!isFinite(v)) continue;
        any = true;
        if (v < ymin) ymin = v;
        if (v > ymax) ymax = v;
      }
    }
    ctx.fillStyle = "#6b7280";
    if (!any) {
      ctx.fillText(this.series.size ? "no data in this range" : "waiting for data…", PAD.l, h / 2);
      this._paintMarkers(x0, x1, plotH);
      this._paintOverlay(plotH);
      return;
    }
    if (ymax === ymin) { const d = Math.abs(ymax) * 0.1 || 0.5; ymax += d; ymin -= d; }
    else { const d = (ymax - ymin) * 0.06; ymax += d; ymin -= d; }
    this.yDomain = [ymin, ymax];
    const X = (x) => PAD.l + (x - x0) / (x1 - x0) * plotW;
    const Y = (y) => PAD.t + (1 - (y - ymin) / (ymax - ymin)) * plotH;

    // Grid and axis labels.
    ctx.strokeStyle = "#e5e7eb"; ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    for (const t of this.logY ? logTicks(ymin, ymax) : ticks(ymin, ymax, 4)) {
      const py = Math.round(Y(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(PAD.l, py); ctx.lineTo(w - PAD.r, py); ctx.stroke();
      const label = formatValue(this.logY ? Math.pow(10, t) : t);
      ctx.fillText(label, PAD.l - 6 - ctx.measureText(label).width, py);
    }
    ctx.textBaseline = "alphabetic";
    const xticks = ticks(x0, x1, Math.max(2, Math.floor(plotW / 90)));
    for (const t of xticks) {
      const px = X(t);
      if (px < PAD.l - 1 || px > w - PAD.r + 1) continue;
      const label = formatValue(Math.round(t));
      ctx.fillText(label, Math.min(px - ctx.measureText(label).width / 2, w - PAD.r - ctx.measureText(label).width), h - 6);
    }

    // Lines, clipped to the plot area.
    ctx.save();
    ctx.beginPath(); ctx.rect(PAD.l, PAD.t - 2, plotW, plotH + 4); ctx.clip();
    for (const [s, i0, i1] of visible) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.lineJoin = "round";
      ctx.beginPath();
      const count = i1 - i0;
      if (count > plotW * 2 && !this.stepped) {
        // Per pixel column: first, min, max and last point, so spikes survive decimation.
        let col = -1, first = 0, last = 0, lo = 0, hi = 0, started = false;
        const flush = () => {
          if (col < 0) return;
          const px = PAD.l + col + 0.5;
          if (!started) { ctx.moveTo(px, Y(first)); started = true; } else ctx.lineTo(px, Y(first));
          ctx.lineTo(px, Y(lo)); ctx.lineTo(px, Y(hi)); ctx.lineTo(px, Y(last));
        };
        for (let i = i0; i < i1; i++) {
          const v = f(s.y[i]);
          if (!isFinite(v)) continue;
          const c = Math.floor(X(s.x[i]) - PAD.l);
          if (c !== col) { flush(); col = c; first = lo = hi = last = v; }
          else { if (v < lo) lo = v; if (v > hi) hi = v; last = v; }
        }
        flush();
      } else {
        let started = false, prevY = 0;
        for (let i = i0; i < i1; i++) {
          const v = f(s.y[i]);
          if (!isFinite(v)) continue;
          const px = X(s.x[i]), py = Y(v);
          if (!started) { ctx.moveTo(px, py); started = true; }
          else { if (this.stepped) ctx.lineTo(px, prevY); ctx.lineTo(px, py); }
          prevY = py;
        }
      }
      ctx.stroke();
    }
    ctx.restore();
    this._paintMarkers(x0, x1, plotH);
    this._paintOverlay(plotH, (y) => Y(f(y)));
  }

  _paintMarkers(x0, x1, plotH) {
    const { ctx } = this;
    this.visibleMarkers = [];
    for (const m of this.markers.values()) {
      if (m.step < x0 || m.step > x1) continue;
      const px = Math.round(this.stepToPx(m.step)) + 0.5;
      this.visibleMarkers.push([px, m]);
      ctx.strokeStyle = MARKER_COLORS[m.kind] || "#374151";
      ctx.fillStyle = ctx.strokeStyle;
      ctx.lineWidth = 1;
      ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(px, PAD.t); ctx.lineTo(px, PAD.t + plotH); ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath();
      if (m.kind === "replay") { ctx.arc(px, PAD.t + 4, 4, 0, Math.PI * 2); }
      else { ctx.moveTo(px - 5, PAD.t); ctx.lineTo(px + 5, PAD.t); ctx.lineTo(px, PAD.t + 7); ctx.closePath(); }
      ctx.fill();
    }
  }

  _paintOverlay(plotH, Y) {
    const { ctx } = this;
    if (this.drag && Math.abs(this.drag.x1 - this.drag.x0) > 1) {
      const a = Math.max(Math.min(this.drag.x0, this.drag.x1), PAD.l);
      const b = Math.min(Math.max(this.drag.x0, this.drag.x1), this.cssWidth - PAD.r);
      ctx.fillStyle = "rgba(37, 99, 235, 0.15)";
      ctx.fillRect(a, PAD.t, b - a, plotH);
    }
    const step = this.group.hoverStep;
    if (step === null || step === undefined) { this._hideTooltip(); return; }
    const px = this.stepToPx(step);
    if (px < PAD.l || px > this.cssWidth - PAD.r) { this._hideTooltip(); return; }
    ctx.strokeStyle = "rgba(17, 24, 39, 0.35)";
    ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(Math.round(px) + 0.5, PAD.t); ctx.lineTo(Math.round(px) + 0.5, PAD.t + plotH); ctx.stroke();

    // Nearest point of each series to the hovered step.
    const lines = [];
    for (const s of this.series.values()) {
      if (!s.x.length) continue;
      let i = lowerBound(s.x, step);
      if (i >= s.x.length || (i > 0 && step - s.x[i - 1] < s.x[i] - step)) i -= 1;
      if (i < 0) continue;
      lines.push(`${this.series.size > 1 ? s.label + " " : ""}step ${s.x[i]}: ${formatValue(s.y[i])}`);
      if (Y && isFinite(s.y[i])) {
        ctx.fillStyle = s.color;
        ctx.beginPath(); ctx.arc(this.stepToPx(s.x[i]), Y(s.y[i]), 3, 0, Math.PI * 2); ctx.fill();
      }
    }
    if (!this.hover) { this._hideTooltip(); return; }
    // A marker under the pointer (within 6 px) wins over the value readout.
    let best = null, bestD = 7;
    for (const [mx, m] of this.visibleMarkers || []) {
      const d = Math.abs(mx - this.hover.x);
      if (d < bestD) { best = m; bestD = d; }
    }
    const text = best ? best.text : lines.join("\n");
    if (!text) { this._hideTooltip(); return; }
    if (this.tooltip.textContent !== text) this.tooltip.textContent = text;
    this.tooltip.dataset.kind = best ? best.kind : "value";
    this.tooltip.hidden = false;
    const tw = this.tooltip.offsetWidth;
    const left = this.hover.x + 14 + tw > this.cssWidth ? Math.max(this.hover.x - 14 - tw, 0) : this.hover.x + 14;
    this.tooltip.style.transform = `translate(${Math.round(left)}px, ${Math.round(Math.max(this.hover.y - 10, 0))}px)`;
  }

  _hideTooltip() {
    if (!this.tooltip.hidden) this.tooltip.hidden = true;
  }
}
