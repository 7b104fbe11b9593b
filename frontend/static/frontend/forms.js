/* Errors beside form fields: one message element per field, linked by aria-describedby,
 * plus a summary at the top whose entries jump to the fields (keyboard users land on
 * the first problem). */

import { el } from "./api.js";

/* The message element that belongs to a field (an input, a select, or a fieldset). */
export function errorSlot(field) {
  const id = `${field.id}-error`;
  let slot = document.getElementById(id);
  if (!slot) {
    slot = el("p", { class: "field-error", id });
    if (field.tagName === "FIELDSET") field.querySelector("legend").after(slot);
    else field.after(slot);
    const described = (field.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (!described.includes(id)) field.setAttribute("aria-describedby", [...described, id].join(" "));
  }
  return slot;
}

export function setFieldError(field, message) {
  const slot = errorSlot(field);
  slot.textContent = message || "";
  if (message) field.setAttribute("aria-invalid", "true");
  else field.removeAttribute("aria-invalid");
}

export function clearErrors(root, summary) {
  root.querySelectorAll("[aria-invalid]").forEach((f) => f.removeAttribute("aria-invalid"));
  root.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
  if (summary) { summary.hidden = true; summary.replaceChildren(); }
}

/* errors: [{field: Element|null, message}] — shows them and moves focus to the first. */
export function showErrors(errors, summary, title = "Please fix the following:") {
  for (const { field, message } of errors) if (field) setFieldError(field, message);
  if (summary) {
    summary.replaceChildren(el("p", { class: "title", text: title }),
      el("ul", {}, errors.map(({ field, message }) => el("li", {},
        field ? el("a", { href: `#${field.id}`, onclick: (ev) => { ev.preventDefault(); field.focus(); } }, message) : message))));
    summary.hidden = false;
  }
  const first = errors.find((e) => e.field);
  if (first) first.field.focus();
  else if (summary) summary.focus();
}

/* DRF puts messages in lists and nested objects; flatten to [{path: [...], message}]. */
export function flattenDetails(details, path = []) {
  if (details === null || details === undefined) return [];
  if (typeof details === "string") return [{ path, message: details }];
  if (Array.isArray(details)) return details.flatMap((d) => flattenDetails(d, path));
  if (typeof details === "object") {
    return Object.entries(details).flatMap(([k, v]) => flattenDetails(v, k === "non_field_errors" ? path : [...path, k]));
  }
  return [];
}
