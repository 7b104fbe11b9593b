/* The policy list (with switching a policy on/off and deleting it) and the built-in templates. */

import { el, errorMessage, formatTime, get } from "./api.js";
import { confirmDelete, deletePolicy, policyMode, setPolicyEnabled } from "./policy_actions.js";

const result = document.getElementById("policy-action-result");

function say(message, ok) {
  result.textContent = message;
  result.className = `result ${ok ? "ok" : "error"}`;
}

function modeBadge(p) {
  const mode = policyMode(p);
  return el("span", { class: `status status-${mode === "disabled" ? "cancelled" : "active"}`, text: mode });
}

function toggleButton(p) {
  const on = p.enabled !== false;
  return el("button", { type: "button", class: "small secondary", dataset: { action: "toggle" },
    "aria-label": `${on ? "Disable" : "Enable"} policy ${p.name}`, onclick: (ev) => toggle(p, ev.currentTarget) },
  on ? "Disable" : "Enable");
}

function row(p) {
  const def = p.definition || {};
  const rules = Array.isArray(def.rules) ? def.rules : [];
  return el("tr", { dataset: { id: String(p.id) } },
    el("td", { text: p.id }), el("td", {}, el("a", { href: `/policies/${p.id}/` }, p.name)),
    el("td", { text: `v${p.version}` }), el("td", { text: rules.map((x) => x.name).join(", ") }),
    el("td", { class: "mode" }, modeBadge(p)),
    el("td", { text: p.owner }), el("td", { text: formatTime(p.updated_at) }),
    el("td", {}, el("div", { class: "policy-controls" }, toggleButton(p),
      el("button", { type: "button", class: "small danger", dataset: { action: "delete" },
        "aria-label": `Delete policy ${p.name}`, onclick: () => remove(p) }, "Delete"))));
}

async function toggle(p, button) {
  const enable = p.enabled === false;
  button.disabled = true;
  const r = await setPolicyEnabled(p.id, enable);
  button.disabled = false;
  if (!r.ok) { say(`Could not ${enable ? "enable" : "disable"} ${p.name}: ${errorMessage(r)}`, false); button.focus(); return; }
  Object.assign(p, r.body);
  // Update the row in place, so that focus stays on the button for the next key press.
  const tr = button.closest("tr");
  tr.querySelector("td.mode").replaceChildren(modeBadge(p));
  button.textContent = enable ? "Disable" : "Enable";
  button.setAttribute("aria-label", `${enable ? "Disable" : "Enable"} policy ${p.name}`);
  button.focus();
  say(enable ? `Enabled ${p.name}: it is evaluated again on its jobs.`
    : `Disabled ${p.name}: its jobs keep running, and it makes no decisions until enabled again.`, true);
}

async function remove(p) {
  if (!(await confirmDelete(p))) return;
  const r = await deletePolicy(p.id);
  if (!r.ok) { say(`Not deleted: ${errorMessage(r)}`, false); return; }
  const tr = document.querySelector(`#policies tbody tr[data-id="${p.id}"]`);
  const next = tr && (tr.nextElementSibling || tr.previousElementSibling);
  if (tr) tr.remove();
  say(`Deleted policy ${p.name}.`, true);
  const target = next && next.dataset.id ? next.querySelector("button[data-action=delete]") : document.getElementById("new-policy");
  target.focus();
  if (!document.querySelector("#policies tbody tr")) policies();
}

async function policies() {
  const body = document.querySelector("#policies tbody");
  const r = await get("/api/v1/policies/");
  if (!r.ok) { body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "8", text: errorMessage(r) }))); return; }
  if (!r.body.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "8" }, "No policies yet. Start from a template below or ",
      el("a", { href: "/policies/new/" }, "write one"), ".")));
    return;
  }
  body.replaceChildren(...r.body.map(row));
}

async function templates() {
  const list = document.getElementById("templates");
  const r = await get("/api/v1/policies/templates/");
  if (!r.ok) { list.replaceChildren(el("li", { text: errorMessage(r) })); return; }
  list.replaceChildren(...r.body.map((t) => el("li", { class: "card" },
    el("h3", { text: t.name }), el("p", { class: "muted", text: t.description }),
    el("a", { class: "button secondary", href: `/policies/new/?template=${encodeURIComponent(t.id)}` }, "Use this template"))));
}

const deleted = new URLSearchParams(location.search).get("deleted");
if (deleted) say(`Deleted policy ${deleted}.`, true);
policies();
templates();
