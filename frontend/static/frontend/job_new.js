/* The create-job form: builds the API body, shows the server's errors beside the fields. */

import { errorMessage, get, post } from "./api.js";
import { clearErrors, flattenDetails, showErrors } from "./forms.js";

const form = document.getElementById("job-form");
const summary = document.getElementById("form-errors");
const status = document.getElementById("job-form-status");
const HYPERPARAMETERS = ["batch_size", "lr", "steps", "log_every", "seed", "monitor_every"];
const $ = (id) => document.getElementById(id);

async function loadPolicies() {
  const r = await get("/api/v1/policies/");
  if (!r.ok) return;
  const select = $("job-policy");
  const wanted = new URLSearchParams(location.search).get("policy");
  for (const p of r.body) {
    const option = new Option(`${p.name} (#${p.id}, v${p.version})`, String(p.id));
    if (wanted === String(p.id)) option.selected = true;
    select.add(option);
  }
}

function number(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw; // a non-number goes to the server, which says why
}

const codeKind = () => form.querySelector("input[name=code]:checked").value;

/* Show the fields of the chosen code source only. */
function showCodeFields() {
  const kind = codeKind();
  for (const field of form.querySelectorAll("[data-code]")) {
    field.hidden = !field.dataset.code.split(" ").includes(kind);
  }
}

function body() {
  const hyperparameters = {};
  for (const name of HYPERPARAMETERS) {
    const v = number($(`hp-${name}`));
    if (v !== undefined) hyperparameters[name] = v;
  }
  const workers = {};
  for (const k of ["initial", "min", "max"]) {
    const v = number($(`workers-${k}`));
    if (v !== undefined) workers[k] = v;
  }
  const kind = codeKind();
  const entrypoint = kind === "example" ? $("job-example").value : $("job-entrypoint").value.trim();
  return {
    name: $("job-name").value.trim(), entrypoint, hyperparameters, workers,
    strategy: $("job-strategy").value, topology: $("job-topology").value,
    policy: $("job-policy").value ? Number($("job-policy").value) : null,
  };
}

/* Which field a DRF error path (and message) belongs to. */
function fieldFor(path, message) {
  const [top, sub] = path;
  if (top === "hyperparameters") {
    // The server names the hyper-parameter first: "batch_size is required."
    const m = /^([a-z_]+)\b/.exec(message);
    return (m && HYPERPARAMETERS.includes(m[1])) ? $(`hp-${m[1]}`) : $("hp");
  }
  if (top === "workers") return sub && $(`workers-${sub}`) ? $(`workers-${sub}`) : $("workers");
  const entrypoint = codeKind() === "example" ? $("job-example") : $("job-entrypoint");
  return { name: $("job-name"), entrypoint, bundle: $("job-bundle"), strategy: $("job-strategy"),
    topology: $("job-topology"), policy: $("job-policy") }[top] || null;
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors(form, summary);
  const submit = $("job-submit");
  submit.disabled = true;
  const job = body();
  let r = null;
  if (codeKind() === "bundle") {
    // The archive first (stored once per content); the job then names it by digest.
    const file = $("job-bundle").files[0];
    if (!file) {
      submit.disabled = false;
      showErrors([{ field: $("job-bundle"), message: "Choose your project's archive (.tar.gz)." }], summary, "The job was not created:");
      return;
    }
    status.textContent = `Uploading ${file.name}…`;
    const upload = new FormData();
    upload.append("bundle", file);
    r = await post("/api/v1/bundles/", upload);
    if (r.ok) job.bundle = r.body.digest;
    else r.body.details = { bundle: errorMessage(r) };
  }
  if (r === null || r.ok) {
    status.textContent = "Creating…";
    r = await post("/api/v1/jobs/", job);
  }
  submit.disabled = false;
  if (r.ok) {
    status.textContent = `Created job #${r.body.id}; opening it…`;
    location.assign(`/jobs/${r.body.id}/`);
    return;
  }
  status.textContent = "";
  let errors = flattenDetails(r.body.details).map(({ path, message }) => ({
    field: fieldFor(path, message), message: typeof message === "string" ? message : errorMessage(r),
  }));
  // Details that are not messages (e.g. {"policy": 7}) point at a field; the message says what.
  const details = r.body.details && typeof r.body.details === "object" ? r.body.details : {};
  for (const [k, v] of Object.entries(details)) {
    if (typeof v !== "string" && !Array.isArray(v) && (typeof v !== "object" || v === null)) {
      errors.push({ field: fieldFor([k], ""), message: errorMessage(r) });
    }
  }
  if (!errors.length) errors = [{ field: null, message: errorMessage(r) }];
  showErrors(errors, summary, "The job was not created:");
});

for (const radio of form.querySelectorAll("input[name=code]")) radio.addEventListener("change", showCodeFields);
showCodeFields();
loadPolicies().finally(() => { form.dataset.ready = "1"; });
