/* The compare page (/jobs/compare/?ids=1,2,…): the whole-job curves of two or more jobs
 * overlaid, one colour per job, each job's current run against its own steps. A static
 * view: reload the page for newer points. */

import { el, errorMessage, get } from "./api.js";
import { ChartGroup, TimeChart } from "./chart.js";
import { JOB_METRICS } from "./jobcharts.js";

const root = document.getElementById("compare");
const ids = (new URLSearchParams(location.search).get("ids") || "")
  .split(",").map((s) => s.trim()).filter((s) => /^\d+$/.test(s)).map(Number);
const note = document.getElementById("compare-note");
const legend = document.getElementById("compare-jobs");
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#be185d"];

async function main() {
  if (ids.length < 2) {
    note.textContent = "Pick two or more jobs on the jobs list (tick them, then Compare selected).";
    note.className = "result error";
    return;
  }
  const group = new ChartGroup();
  const charts = {};
  const container = document.getElementById("charts");
  for (const m of JOB_METRICS) {
    charts[m.name] = new TimeChart(container, { metric: m.name, title: m.title, stepped: m.stepped, group, colors: COLORS });
  }
  window.adaptrain = Object.assign(window.adaptrain || {}, { charts });
  const logScale = document.getElementById("log-scale");
  const scale = () => { for (const c of Object.values(charts)) c.setLogY(logScale.checked && !c.stepped); };
  logScale.addEventListener("change", scale);
  const names = JOB_METRICS.map((m) => m.name).join(",");
  const problems = [];
  let shown = 0;
  for (const [i, id] of ids.entries()) {
    const [job, metrics] = await Promise.all([
      get(`/api/v1/jobs/${id}/`),
      get(`/api/v1/jobs/${id}/metrics/?names=${names}&per_rank=false&max_points=2000`),
    ]);
    if (!job.ok || !metrics.ok) { problems.push(`job ${id}: ${errorMessage(job.ok ? metrics : job)}`); continue; }
    const label = `#${id} ${job.body.name}`;
    for (const s of metrics.body.series) {
      const chart = charts[s.name];
      if (!chart || (s.rank !== null && s.rank !== undefined)) continue;
      chart.set(`job-${id}`, label, s.step, s.value);
      chart.series.get(`job-${id}`).color = COLORS[i % COLORS.length]; // as in the legend
    }
    legend.append(el("li", { dataset: { job: String(id) } },
      el("i", { class: "swatch", style: `background:${COLORS[i % COLORS.length]}` }), " ",
      el("a", { href: `/jobs/${id}/`, text: label }),
      el("span", { class: "muted small", text: ` ${job.body.status}, run ${metrics.body.run ?? "—"}, step ${job.body.last_step}` })));
    shown++;
  }
  root.dataset.jobs = String(shown);
  if (problems.length) { note.textContent = problems.join("; "); note.className = "result error"; }
}

main();
