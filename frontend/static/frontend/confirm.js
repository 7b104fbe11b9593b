/* Asking before an action that cannot be undone, in a modal <dialog>: focus starts on
 * "Cancel" (the safe choice), Escape cancels, and focus returns to the element that
 * opened it. One dialog per `id` (its buttons are `${id}-yes` and `${id}-no`), made on
 * first use. Used by the policy list and editor (delete) and the nodes page (drain,
 * revoke, delete).
 */

import { el } from "./api.js";

const dialogs = new Map();

function dialogFor(id) {
  if (dialogs.has(id)) return dialogs.get(id);
  const dialog = el("dialog", { id, class: "confirm", "aria-labelledby": `${id}-title`, "aria-describedby": `${id}-text` },
    el("form", { method: "dialog" },
      el("h2", { id: `${id}-title` }),
      el("p", { id: `${id}-text` }),
      el("div", { class: "actions" },
        el("button", { type: "submit", value: "yes", id: `${id}-yes` }),
        el("button", { type: "submit", value: "cancel", class: "secondary", id: `${id}-no`, autofocus: true }, "Cancel"))));
  document.body.append(dialog);
  dialogs.set(id, dialog);
  return dialog;
}

/* Resolves to true when the user confirmed. `yes` labels the confirming button; `danger`
 * styles it as destructive. */
export function confirmAction({ id = "confirm", title, text, yes, danger = true }) {
  const d = dialogFor(id);
  const opener = document.activeElement;
  d.querySelector(`#${id}-title`).textContent = title;
  d.querySelector(`#${id}-text`).textContent = text;
  const confirm = d.querySelector(`#${id}-yes`);
  confirm.textContent = yes;
  confirm.className = danger ? "danger" : "";
  d.returnValue = "";
  d.showModal();
  d.querySelector(`#${id}-no`).focus();
  return new Promise((resolve) => {
    d.addEventListener("close", () => {
      if (opener && opener.isConnected) opener.focus();
      resolve(d.returnValue === "yes");
    }, { once: true });
  });
}
