/* The policy editor: a form per rule (with an "advanced JSON" view of the same
 * document), inline validation against the server, templates, version history with a
 * diff, a replay preview on a job's charts of the definition as it is in the editor
 * (unsaved edits included), and switching the saved policy on/off or deleting it.
 *
 * The form is the source of truth. It is rebuilt only when the document's shape
 * changes (template, JSON view, add/remove/move a rule, loading a version), never while
 * the user types, so focus and caret stay where they are. Keys the form does not know
 * are kept from the loaded document, so a round trip through the form loses nothing.
 */

import { el, errorMessage, formatNumber, formatTime, get, missing, post, put } from "./api.js";
import { canonicalJson, lineDiff } from "./diff.js";
import { clearErrors } from "./forms.js";
import { JobCharts } from "./jobcharts.js";
import { confirmDelete, deletePolicy, policyMode, setPolicyEnabled } from "./policy_actions.js";
import { ACTIONS as ACTION_TYPES, DESCRIPTIONS, VALUE_ACTIONS } from "./vocabulary.js";

const REPLAY_METRICS = [
  { name: "loss", title: "loss" }, { name: "batch_size", title: "batch size", stepped: true },
  { name: "throughput", title: "throughput (samples/s)" }, { name: "gns", title: "gradient noise scale" },
];

const $ = (id) => document.getElementById(id);
const root = $("policy-editor");
const form = $("policy-form");
const rulesBox = $("rules");
const summary = $("policy-errors");
const validation = $("validation");
let policyId = root.dataset.policyId ? Number(root.dataset.policyId) : null;
let policy = null; // the saved policy as the API returned it
let baseDoc = { name: "", description: "", dry_run: false, rules: [] }; // for keys the form does not show
let baseRules = [];
let view = "form";
let dirty = false;

/* --- form <-> document ----------------------------------------------------------------- */

function ruleField(i, key, label, input, hint) {
  input.id = `rule-${i}-${key.replace(/\./g, "-")}`;
  input.dataset.path = `rules[${i}].${key}`;
  const parts = [el("label", { for: input.id }, label), input];
  if (hint) parts.push(el("p", { class: "hint", text: hint }));
  return el("div", { class: `field f-${key.replace(/\./g, "-")}` }, parts);
}

function numberInput(value, attrs = {}) {
  return el("input", { type: "number", step: "any", value: value ?? "", ...attrs });
}

function checkbox(i, key, label, checked) {
  const input = el("input", { type: "checkbox", id: `rule-${i}-${key}`, dataset: { path: `rules[${i}].${key}` } });
  input.checked = checked;
  return el("div", { class: "field check-field" }, el("label", { class: "check" }, input, ` ${label}`));
}

function ruleFieldset(rule, i, count) {
  const action = rule.action || {};
  const bounds = rule.bounds || {};
  const type = el("select", {}, ACTION_TYPES.map((t) => el("option", { value: t, selected: t === action.type, title: DESCRIPTIONS[t] }, t)));
  if (action.type && !ACTION_TYPES.includes(action.type)) type.append(el("option", { value: action.type, selected: true }, action.type));
  const value = el("input", { class: "mono", autocomplete: "off", spellcheck: "false",
    value: action.value === undefined || action.value === null ? "" : String(action.value) });
  const syncValue = () => {
    value.setAttribute("list", `choices-${type.value}`);
    value.disabled = !VALUE_ACTIONS.has(type.value);
    value.placeholder = value.disabled ? "(no value)" : "CEL, e.g. batch_size * 2";
  };
  type.addEventListener("change", syncValue);
  syncValue();
  const when = el("textarea", { class: "mono cel", rows: "2", spellcheck: "false" });
  when.value = rule.when ?? "";
  const legend = el("legend", {}, `Rule ${i + 1}`);
  const fs = el("fieldset", { class: "rule card", id: `rule-${i}`, dataset: { path: `rules[${i}]`, index: String(i) } },
    legend,
    el("div", { class: "grid2" },
      ruleField(i, "name", "Name", el("input", { value: rule.name ?? "", maxlength: "200" })),
      el("div", { class: "row flags" }, checkbox(i, "enabled", "Enabled", rule.enabled !== false),
        checkbox(i, "requires_approval", "Requires approval", rule.requires_approval === true))),
    ruleField(i, "when", "When (CEL condition)", when, "e.g. has(metrics.gns) && gns > 2.0 * double(batch_size)"),
    el("div", { class: "grid3" },
      ruleField(i, "action.type", "Action", type),
      ruleField(i, "action.value", "Value (CEL or literal)", value),
      ruleField(i, "for", "For (consecutive evaluations)", numberInput(rule.for, { min: "1", max: "1000", step: "1" }))),
    el("div", { class: "grid4" },
      ruleField(i, "cooldown_s", "Cooldown (s)", numberInput(rule.cooldown_s, { min: "0" })),
      ruleField(i, "max_per_hour", "Max per hour", numberInput(rule.max_per_hour, { min: "1", max: "3600", step: "1" })),
      ruleField(i, "bounds.min", "Bound min", numberInput(bounds.min)),
      ruleField(i, "bounds.max", "Bound max", numberInput(bounds.max),
        "Values are clamped into the bounds, never moved the other way: a rule asking for more while above max does nothing.")),
    el("div", { class: "row rule-actions" },
      el("button", { type: "button", class: "small secondary", disabled: i === 0, "aria-label": `Move rule ${i + 1} up`,
        onclick: () => moveRule(i, -1) }, "Move up"),
      el("button", { type: "button", class: "small secondary", disabled: i === count - 1, "aria-label": `Move rule ${i + 1} down`,
        onclick: () => moveRule(i, 1) }, "Move down"),
      el("button", { type: "button", class: "small danger", "aria-label": `Remove rule ${i + 1}`,
        onclick: () => removeRule(i) }, "Remove")));
  return fs;
}

function writeForm(doc) {
  baseDoc = JSON.parse(JSON.stringify(doc || {}));
  baseRules = Array.isArray(baseDoc.rules) ? baseDoc.rules : [];
  $("p-name").value = baseDoc.name ?? "";
  $("p-description").value = baseDoc.description ?? "";
  $("p-dry_run").checked = baseDoc.dry_run === true;
  rulesBox.replaceChildren(...baseRules.map((r, i) => ruleFieldset(r && typeof r === "object" ? r : {}, i, baseRules.length)));
  $("p-json").value = JSON.stringify(readForm(), null, 2);
}

function numberOrText(raw) {
  const s = raw.trim();
  if (s === "") return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : s; // text goes to the server, which says what is wrong
}

function setKey(obj, key, value) {
  if (value === undefined) delete obj[key]; else obj[key] = value;
}

function readForm() {
  const doc = { ...baseDoc };
  doc.name = $("p-name").value;
  setKey(doc, "description", $("p-description").value || (baseDoc.description !== undefined ? "" : undefined));
  doc.dry_run = $("p-dry_run").checked;
  doc.rules = [...rulesBox.querySelectorAll("fieldset.rule")].map((fs) => {
    const i = Number(fs.dataset.index);
    const f = (key) => fs.querySelector(`[data-path="rules[${i}].${key}"]`);
    const base = baseRules[i] && typeof baseRules[i] === "object" ? baseRules[i] : {};
    const rule = { ...base };
    rule.name = f("name").value;
    rule.when = f("when").value;
    const action = { ...(base.action || {}) };
    action.type = f("action.type").value;
    const rawValue = f("action.value").value.trim();
    if (!VALUE_ACTIONS.has(action.type) || rawValue === "") delete action.value;
    else action.value = /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(rawValue) ? Number(rawValue) : rawValue;
    rule.action = action;
    setKey(rule, "for", numberOrText(f("for").value));
    setKey(rule, "cooldown_s", numberOrText(f("cooldown_s").value));
    setKey(rule, "max_per_hour", numberOrText(f("max_per_hour").value));
    // Defaults stay implicit unless the loaded document spelled them out.
    const approval = f("requires_approval").checked;
    setKey(rule, "requires_approval", approval || "requires_approval" in base ? approval : undefined);
    const enabled = f("enabled").checked;
    setKey(rule, "enabled", !enabled || "enabled" in base ? enabled : undefined);
    const bounds = { ...(base.bounds || {}) };
    setKey(bounds, "min", numberOrText(f("bounds.min").value));
    setKey(bounds, "max", numberOrText(f("bounds.max").value));
    setKey(rule, "bounds", Object.keys(bounds).length ? bounds : undefined);
    return rule;
  });
  return doc;
}

/* The document as the user sees it now, from whichever view is showing. */
function currentDoc() {
  if (view === "json") {
    try { return { doc: JSON.parse($("p-json").value) }; } catch (err) { return { error: `Not valid JSON: ${err.message}` }; }
  }
  return { doc: readForm() };
}

function restructure(mutate) {
  const doc = readForm();
  mutate(doc.rules);
  writeForm(doc);
  changed();
}

function addRule() {
  restructure((rules) => rules.push({ name: `rule ${rules.length + 1}`, when: "", action: { type: "set_batch_size", value: "batch_size * 2" } }));
  rulesBox.querySelector(`fieldset.rule:last-of-type input`).focus();
}

function moveRule(i, delta) {
  restructure((rules) => { const [r] = rules.splice(i, 1); rules.splice(i + delta, 0, r); });
  const button = $(`rule-${i + delta}`).querySelector(delta < 0 ? "button[aria-label^='Move'][aria-label$='up']" : "button[aria-label$='down']");
  (button && !button.disabled ? button : $(`rule-${i + delta}-name`)).focus();
}

function removeRule(i) {
  restructure((rules) => rules.splice(i, 1));
  const next = $(`rule-${Math.min(i, rulesBox.children.length - 1)}-name`);
  (next || $("rule-add")).focus();
}

/* --- views ------------------------------------------------------------------------------ */

function showView(next) {
  if (next === view) return;
  if (next === "form") {
    let doc;
    try { doc = JSON.parse($("p-json").value); } catch (err) {
      showError({ path: "$json", message: `Fix the JSON before going back to the form: ${err.message}` });
      return;
    }
    writeForm(doc);
  } else {
    $("p-json").value = JSON.stringify(readForm(), null, 2);
  }
  view = next;
  for (const [name, tab, panel] of [["form", $("tab-form"), $("panel-form")], ["json", $("tab-json"), $("panel-json")]]) {
    tab.setAttribute("aria-selected", String(name === view));
    tab.tabIndex = name === view ? 0 : -1;
    panel.hidden = name !== view;
  }
  clearErrors(form, summary);
  validateSoon();
}

$("tab-form").addEventListener("click", () => showView("form"));
$("tab-json").addEventListener("click", () => showView("json"));
document.querySelector(".tabs").addEventListener("keydown", (ev) => {
  if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
  const next = view === "form" ? "json" : "form";
  showView(next);
  $(`tab-${view}`).focus();
  ev.preventDefault();
});

/* --- errors at the field ------------------------------------------------------------------ */

/* The element for an error path such as "rules[0].when" (or its nearest parent). */
function fieldForPath(path) {
  if (view === "json" || path === "$json") return $("p-json");
  let p = path;
  while (p) {
    const node = form.querySelector(`[data-path="${CSS.escape(p)}"]`);
    if (node) {
      if (node.tagName === "FIELDSET") return node.querySelector("input, textarea, select");
      if (node.id === "rules") return $("rule-add");
      return node;
    }
    const cut = Math.max(p.lastIndexOf("."), p.lastIndexOf("["));
    p = cut > 0 ? p.slice(0, cut) : "";
  }
  return $("p-name");
}

function pointer(field, position) {
  // Shows the expression with the character at `position` marked, under the field.
  const text = field.value;
  const at = Math.max(0, Math.min(position, text.length));
  return el("div", { class: "cel-pointer", "aria-hidden": "true" },
    el("code", {}, text.slice(0, at), el("mark", {}, text.slice(at, at + 1) || " "), text.slice(at + 1)),
    el("span", { class: "muted" }, ` position ${position}`));
}

function showError({ path, message, position }, { focus = false } = {}) {
  clearErrors(form, null);
  form.querySelectorAll(".cel-pointer").forEach((n) => n.remove());
  const field = fieldForPath(path || "");
  const slotId = `${field.id}-error`;
  let slot = $(slotId);
  if (!slot) {
    slot = el("p", { class: "field-error", id: slotId });
    field.after(slot);
    field.setAttribute("aria-describedby", slotId);
  }
  // A CEL error's message carries the expression and a caret for API clients; here the
  // pointer under the field marks the place, so keep the words (what is wrong, which names).
  slot.textContent = typeof position === "number"
    ? String(message).split("\n").filter((line) => !line.startsWith("  ")).join(" ")
    : message;
  slot.dataset.path = path || "";
  field.setAttribute("aria-invalid", "true");
  if (typeof position === "number" && (field.tagName === "TEXTAREA" || field.tagName === "INPUT") && field.id !== "p-json") {
    slot.after(pointer(field, position));
  }
  validation.textContent = "Invalid";
  validation.className = "validation bad";
  if (focus) {
    field.focus();
    if (typeof position === "number" && field.setSelectionRange && field.id !== "p-json") {
      field.setSelectionRange(position, Math.min(position + 1, field.value.length));
    }
  }
}

function errorFromResult(r) {
  const details = r.body.details || {};
  if (typeof details.path === "string") return { path: details.path, message: errorMessage(r), position: details.position };
  if (details.definition) return { path: "$", message: [].concat(details.definition).join(" ") };
  return { path: "$", message: errorMessage(r) };
}

/* --- validation (debounced, as you type) --------------------------------------------------- */

let validateTimer = null;
let validateSeq = 0;

function validateSoon() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(validateNow, 450);
}

async function validateNow() {
  const seq = ++validateSeq;
  const { doc, error } = currentDoc();
  if (error) { showError({ path: "$json", message: error }); return; }
  validation.textContent = "Checking…";
  validation.className = "validation";
  const r = await post("/api/v1/policies/validate/", { definition: doc });
  if (seq !== validateSeq) return; // a newer edit is being checked
  if (r.ok) {
    clearErrors(form, null);
    form.querySelectorAll(".cel-pointer").forEach((n) => n.remove());
    validation.textContent = `Valid · ${r.body.rules.length} rule${r.body.rules.length === 1 ? "" : "s"}`;
    validation.className = "validation good";
  } else if (r.status === 400) {
    showError(errorFromResult(r));
  } else {
    validation.textContent = `Could not check: ${errorMessage(r)}`;
    validation.className = "validation";
  }
}

function changed() {
  dirty = true;
  validateSoon();
}

form.addEventListener("input", (ev) => { if (ev.target.id !== "p-json" || view === "json") changed(); });
form.addEventListener("change", changed);
$("rule-add").addEventListener("click", addRule);

/* --- load and save ------------------------------------------------------------------------ */

function showPolicy(p) {
  policy = p;
  policyId = p.id;
  $("policy-title").firstChild.textContent = `${p.name} `;
  $("policy-version").textContent = `#${p.id} · v${p.version}`;
  document.title = `${p.name} · policy · adaptrain`;
  $("policy-use").hidden = false;
  $("policy-use").href = `/jobs/new/?policy=${p.id}`;
  showState(p);
}

/* --- enable/disable and delete (the saved policy, not the draft) ---------------------------- */

function showState(p) {
  $("policy-state").hidden = false;
  const mode = policyMode(p);
  $("policy-mode").textContent = mode;
  $("policy-mode").className = `status status-${mode === "disabled" ? "cancelled" : "active"}`;
  const on = p.enabled !== false;
  $("policy-toggle").textContent = on ? "Disable" : "Enable";
  $("policy-toggle").setAttribute("aria-label", `${on ? "Disable" : "Enable"} this policy`);
}

function sayAction(message, ok) {
  const out = $("policy-action-result");
  out.textContent = message;
  out.className = `result ${ok ? "ok" : "error"}`;
}

$("policy-toggle").addEventListener("click", async () => {
  if (!policy) return;
  const enable = policy.enabled === false;
  const button = $("policy-toggle");
  button.disabled = true;
  const r = await setPolicyEnabled(policy.id, enable);
  button.disabled = false;
  button.focus();
  if (!r.ok) { sayAction(`Could not ${enable ? "enable" : "disable"} the policy: ${errorMessage(r)}`, false); return; }
  policy = { ...policy, enabled: r.body.enabled, updated_at: r.body.updated_at };
  showState(policy);
  sayAction(enable ? "Enabled: the policy is evaluated again on its jobs."
    : "Disabled: its jobs keep running, and it makes no decisions until enabled again.", true);
});

$("policy-delete").addEventListener("click", async () => {
  if (!policy || !(await confirmDelete(policy))) return;
  const r = await deletePolicy(policy.id);
  if (!r.ok) { sayAction(`Not deleted: ${errorMessage(r)}`, false); $("policy-delete").focus(); return; }
  dirty = false;
  location.assign(`/policies/?deleted=${encodeURIComponent(policy.name)}`);
});

async function loadPolicy() {
  let r = await get(`/api/v1/policies/${policyId}/`);
  if (!r.ok && missing(r)) {
    // The single-policy endpoint is not there yet: find it in the list.
    const list = await get("/api/v1/policies/");
    const found = list.ok ? list.body.find((p) => p.id === policyId) : null;
    r = found ? { ok: true, body: found } : { ok: false, status: 404, body: { message: `Policy ${policyId} was not found.` } };
  }
  if (!r.ok) {
    $("load-error").textContent = errorMessage(r);
    $("load-error").hidden = false;
    return;
  }
  showPolicy(r.body);
  writeForm(r.body.definition);
  dirty = false;
  validateSoon();
  loadVersions();
}

async function save({ asNew = false } = {}) {
  const { doc, error } = currentDoc();
  if (error) { showError({ path: "$json", message: error }, { focus: true }); return; }
  const button = $("policy-save");
  button.disabled = true;
  validation.textContent = "Saving…";
  validation.className = "validation";
  const updating = policyId && !asNew;
  const r = updating ? await put(`/api/v1/policies/${policyId}/`, { definition: doc })
    : await post("/api/v1/policies/", { definition: doc });
  button.disabled = false;
  if (r.ok) {
    dirty = false;
    if (!updating) { location.assign(`/policies/${r.body.id}/?saved=1`); return; }
    showPolicy(r.body);
    validation.textContent = `Saved as version ${r.body.version}`;
    validation.className = "validation good";
    loadVersions();
    return;
  }
  if (updating && missing(r)) {
    validation.textContent = "This server cannot save a new version of a policy yet (no PUT /api/v1/policies/{id}/); save it as a new policy instead.";
    validation.className = "validation bad";
    $("policy-save-new").hidden = false;
    $("policy-save-new").focus();
    return;
  }
  showError(errorFromResult(r), { focus: true });
  validation.textContent = "Not saved: fix the error shown at the field.";
}

form.addEventListener("submit", (ev) => { ev.preventDefault(); save(); });
$("policy-save-new").addEventListener("click", () => save({ asNew: true }));
window.addEventListener("beforeunload", (ev) => { if (dirty) { ev.preventDefault(); ev.returnValue = ""; } });

/* --- templates ------------------------------------------------------------------------------ */

let templates = [];

async function loadTemplates() {
  const r = await get("/api/v1/policies/templates/");
  if (!r.ok) return;
  templates = r.body;
  const select = $("template-select");
  for (const t of templates) select.add(new Option(t.name, t.id));
  const wanted = new URLSearchParams(location.search).get("template");
  if (wanted && !policyId) { select.value = wanted; applyTemplate(); }
}

function applyTemplate() {
  const t = templates.find((x) => x.id === $("template-select").value);
  if (!t) return;
  writeForm(JSON.parse(JSON.stringify(t.definition)));
  if (view === "json") $("p-json").value = JSON.stringify(t.definition, null, 2);
  validation.textContent = `Loaded template "${t.name}"; not saved yet.`;
  changed();
}

$("template-apply").addEventListener("click", applyTemplate);

/* --- versions and diff ------------------------------------------------------------------------ */

let versions = [];

function renderDiff() {
  const a = versions.find((v) => String(v.version) === $("diff-a").value);
  const b = versions.find((v) => String(v.version) === $("diff-b").value);
  const out = $("diff");
  if (!a || !b || versions.length < 2) { out.replaceChildren(); return; }
  const lines = lineDiff(canonicalJson(a.definition), canonicalJson(b.definition));
  const changes = lines.filter((l) => l.op !== " ").length;
  out.replaceChildren(
    el("span", { class: "diff-head", text: `v${a.version} → v${b.version}: ${changes ? `${changes} changed line(s)` : "no differences"}\n` }),
    ...lines.map((l) => el("span", { class: l.op === "+" ? "add" : l.op === "-" ? "del" : "same", text: `${l.op} ${l.line}\n` })));
}

async function loadVersions() {
  const section = $("versions");
  section.hidden = false;
  const r = await get(`/api/v1/policies/${policyId}/versions/`);
  if (!r.ok) {
    $("versions-note").textContent = missing(r)
      ? `Only the current version (v${policy.version}) is available: this server does not list versions yet.`
      : errorMessage(r);
    $("diff-controls").hidden = true;
    return;
  }
  versions = r.body;
  $("diff-controls").hidden = versions.length < 1;
  for (const id of ["diff-a", "diff-b"]) $(id).closest(".field").hidden = versions.length < 2;
  $("versions-note").textContent = versions.map((v) => `v${v.version} · ${formatTime(v.created_at)}${v.created_by ? ` · ${v.created_by}` : ""}`).join("\n");
  for (const id of ["diff-a", "diff-b", "version-restore-select"]) {
    $(id).replaceChildren(...versions.map((v) => new Option(`v${v.version} (${formatTime(v.created_at)})`, String(v.version))));
  }
  if (versions.length > 1) { $("diff-a").value = String(versions[1].version); $("diff-b").value = String(versions[0].version); }
  renderDiff();
}

$("diff-a").addEventListener("change", renderDiff);
$("diff-b").addEventListener("change", renderDiff);
$("version-restore").addEventListener("click", () => {
  const v = versions.find((x) => String(x.version) === $("version-restore-select").value);
  if (!v) return;
  writeForm(v.definition);
  if (view === "json") $("p-json").value = JSON.stringify(v.definition, null, 2);
  validation.textContent = `Loaded v${v.version} into the editor; save to make it the newest version.`;
  changed();
});

/* --- replay --------------------------------------------------------------------------------- */

async function loadJobs() {
  const r = await get("/api/v1/jobs/?limit=100");
  const select = $("replay-job");
  if (!r.ok) return;
  const done = new Set(["succeeded", "failed", "cancelled"]);
  const jobs = [...r.body.results].sort((a, b) => Number(done.has(b.status)) - Number(done.has(a.status)) || b.id - a.id);
  select.replaceChildren(...jobs.map((j) => new Option(`#${j.id} ${j.name} (${j.status}, step ${j.last_step})`, String(j.id))));
  if (!jobs.length) select.add(new Option("no jobs yet", ""));
}

/* Replays what the editor holds now (saved or not) through POST /api/v1/policies/replay/. */
async function replay() {
  const out = $("replay-summary");
  const jobId = Number($("replay-job").value);
  if (!jobId) { out.textContent = "Choose a job."; out.className = "error"; return; }
  const { doc, error } = currentDoc();
  if (error) {
    showError({ path: "$json", message: error }, { focus: true });
    out.textContent = `Cannot replay: ${error}`;
    out.className = "error";
    return;
  }
  out.textContent = "Replaying…";
  out.className = "";
  const r = await post("/api/v1/policies/replay/", { definition: doc, job: jobId });
  if (!r.ok) {
    const invalid = r.status === 400 && typeof (r.body.details || {}).path === "string";
    if (invalid) showError(errorFromResult(r));
    out.textContent = invalid ? `Cannot replay an invalid policy: ${errorMessage(r)} (shown at the field).`
      : `Replay failed: ${errorMessage(r)}`;
    out.className = "error";
    return;
  }
  const res = r.body;
  // A draft when anything was edited since loading or saving: the job page then replays
  // the same document (handed over in sessionStorage), not the saved version.
  const draft = !policy || dirty;
  const label = draft ? (policy ? `Unsaved edits of v${policy.version}` : "Unsaved policy") : `v${policy.version}`;
  const name = `${doc.name || "policy"}${draft ? " (unsaved)" : ""}`;
  let jobPage = `/jobs/${jobId}/?replay=${policyId}`;
  if (draft) {
    try { sessionStorage.setItem("adaptrain.replayDraft", JSON.stringify({ name, definition: doc })); } catch (err) { /* private mode */ }
    jobPage = `/jobs/${jobId}/?replay=draft`;
  }
  out.className = "";
  out.dataset.draft = String(draft);
  out.replaceChildren(
    `${label} on job #${jobId}: ${res.decisions.length} decision(s) in ${res.evaluations} evaluations over ${res.ticks} recorded steps. `,
    el("a", { href: jobPage }, "Open on the job page"));
  const box = $("replay-charts");
  box.replaceChildren();
  // The run the replay read (the job's current run), even if a restart happens meanwhile.
  const charts = new JobCharts(box, jobId, { metrics: REPLAY_METRICS, run: res.run ?? null });
  window.adaptrain = Object.assign(window.adaptrain || {}, { replayCharts: charts });
  await charts.load().catch(() => {});
  charts.showReplay(name, res.decisions);
  const table = $("replay-decisions");
  table.hidden = !res.decisions.length;
  table.tBodies[0].replaceChildren(...res.decisions.slice(0, 200).map((d) => el("tr", {},
    el("td", { text: d.step }), el("td", { text: d.rule }),
    el("td", { text: `${d.action.type}${d.action.value !== undefined && d.action.value !== null ? ` → ${d.action.value}` : ""}` }),
    el("td", { class: "small", text: Object.entries(d.inputs || {}).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k}=${typeof v === "number" ? formatNumber(v) : v}`).join(", ") }))));
}

$("replay-run").addEventListener("click", replay);

/* --- start ---------------------------------------------------------------------------------- */

if (policyId) {
  loadPolicy();
} else {
  writeForm({ name: "", description: "", dry_run: false, rules: [{ name: "rule 1", when: "", action: { type: "set_batch_size", value: "batch_size * 2" } }] });
}
if (new URLSearchParams(location.search).get("saved")) {
  validation.textContent = "Saved.";
  validation.className = "validation good";
}
loadTemplates();
loadJobs();
