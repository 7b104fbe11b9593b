/* Switching a policy on or off and deleting it, shared by the policy list and the editor.
 *
 * Deleting asks first in a modal <dialog>: focus starts on "Cancel" (the safe choice),
 * Escape cancels, and focus returns to the button that opened it. The server refuses
 * to delete a policy that an unfinished job uses (409); its message says which jobs and
 * what to do instead, and the caller shows it.
 */

import { del, el, put } from "./api.js";

/* {ok, status, body} from PUT /api/v1/policies/{id}/ with only `enabled`. */
export function setPolicyEnabled(policyId, enabled) {
  return put(`/api/v1/policies/${policyId}/`, { enabled });
}

export function deletePolicy(policyId) {
  return del(`/api/v1/policies/${policyId}/`);
}

/* What a policy does now, in one word for a badge. */
export function policyMode(policy) {
  if (policy.enabled === false) return "disabled";
  return policy.definition && policy.definition.dry_run ? "dry run" : "acting";
}

let dialog = null;

function confirmDialog() {
  if (dialog) return dialog;
  dialog = el("dialog", { id: "confirm-delete", class: "confirm", "aria-labelledby": "confirm-delete-title",
    "aria-describedby": "confirm-delete-text" },
  el("form", { method: "dialog" },
    el("h2", { id: "confirm-delete-title" }),
    el("p", { id: "confirm-delete-text" }),
    el("div", { class: "actions" },
      el("button", { type: "submit", value: "delete", class: "danger", id: "confirm-delete-yes" }, "Delete policy"),
      el("button", { type: "submit", value: "cancel", class: "secondary", id: "confirm-delete-no", autofocus: true }, "Cancel"))));
  document.body.append(dialog);
  return dialog;
}

/* Ask before deleting; resolves to true when the user confirmed. */
export function confirmDelete(policy) {
  const d = confirmDialog();
  const opener = document.activeElement;
  d.querySelector("h2").textContent = `Delete policy "${policy.name}"?`;
  d.querySelector("p").textContent = `All ${policy.version > 1 ? `${policy.version} versions` : "its versions"} and its `
    + "decisions on finished jobs are deleted too (the jobs' audit trail keeps them). This cannot be undone.";
  d.returnValue = "";
  d.showModal();
  d.querySelector("#confirm-delete-no").focus();
  return new Promise((resolve) => {
    d.addEventListener("close", () => {
      if (opener && opener.isConnected) opener.focus();
      resolve(d.returnValue === "delete");
    }, { once: true });
  });
}
