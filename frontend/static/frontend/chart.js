/* A small canvas line chart for live metric series: no dependencies, no network.
 *
 * LiveChart keeps the points it was given (step, value) and redraws at most once per
 * animation frame, so a fast stream of deltas costs one paint per frame.
 */
(function () {
  "use strict";

  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

  function niceNumber(v) {
    if (!isFinite(v)) return "";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
    return String(Math.round(v * 1000) / 1000);
  }

  class LiveChart {
    constructor(canvas) {
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.series = new Map(); // key -> {label, steps: [], values: []}
      this.pending = false;
      this.pointCount = 0;
    }

    set(key, label, steps, values) {
      this.series.set(key, { label, steps: steps.slice(), values: values.slice() });
      this._recount();
      this.draw();
    }

    append(key, label, steps, values) {
      let s = this.series.get(key);
      if (!s) { s = { label, steps: [], values: [] }; this.series.set(key, s); }
      const last = s.steps.length ? s.steps[s.steps.length - 1] : -Infinity;
      for (let i = 0; i < steps.length; i++) {
        if (steps[i] > last) { s.steps.push(steps[i]); s.values.push(values[i]); }
      }
      this._recount();
      this.draw();
    }

    _recount() {
      let n = 0;
      for (const s of this.series.values()) n += s.steps.length;
      this.pointCount = n;
      this.canvas.dataset.points = String(n);
    }

    draw() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this._paint(); });
    }

    _paint() {
      const { ctx, canvas } = this;
      const w = canvas.width, h = canvas.height;
      const pad = { l: 56, r: 12, t: 10, b: 24 };
      ctx.clearRect(0, 0, w, h);
      let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
      for (const s of this.series.values()) {
        for (let i = 0; i < s.steps.length; i++) {
          xmin = Math.min(xmin, s.steps[i]); xmax = Math.max(xmax, s.steps[i]);
          ymin = Math.min(ymin, s.values[i]); ymax = Math.max(ymax, s.values[i]);
        }
      }
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#6b7280";
      if (!isFinite(xmin)) { ctx.fillText("waiting for data…", pad.l, h / 2); return; }
      if (xmax === xmin) xmax = xmin + 1;
      if (ymax === ymin) { ymax += 0.5 * (Math.abs(ymax) || 1); ymin -= 0.5 * (Math.abs(ymin) || 1); }
      const X = (x) => pad.l + (x - xmin) / (xmax - xmin) * (w - pad.l - pad.r);
      const Y = (y) => h - pad.b - (y - ymin) / (ymax - ymin) * (h - pad.t - pad.b);
      ctx.strokeStyle = "#e5e7eb"; ctx.lineWidth = 1;
      for (let k = 0; k <= 4; k++) {
        const yv = ymin + (ymax - ymin) * k / 4, yp = Y(yv);
        ctx.beginPath(); ctx.moveTo(pad.l, yp); ctx.lineTo(w - pad.r, yp); ctx.stroke();
        ctx.fillText(niceNumber(yv), 4, yp + 4);
      }
      ctx.fillText("step " + xmin, pad.l, h - 6);
      const right = "step " + xmax;
      ctx.fillText(right, w - pad.r - ctx.measureText(right).width, h - 6);
      let c = 0;
      for (const s of this.series.values()) {
        ctx.strokeStyle = COLORS[c++ % COLORS.length]; ctx.lineWidth = 1.5;
        ctx.beginPath();
        for (let i = 0; i < s.steps.length; i++) {
          const px = X(s.steps[i]), py = Y(s.values[i]);
          if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
        }
        ctx.stroke();
      }
    }
  }

  window.LiveChart = LiveChart;
})();
