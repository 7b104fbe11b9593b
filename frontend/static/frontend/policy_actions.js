/* Switching a policy on or off and deleting it, shared by the policy list and the editor.
 *
 * Deleting asks first (confirm.js). The server refuses to delete a policy that an
 * unfinished job uses (409); its message says which jobs and what to do instead, and the
 * caller shows it.
 */

import { del, put } from "./api.js";
import { confirmAction } from "./confirm.js";

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

/* Ask before deleting; resolves to true when the user confirmed. */
export function confirmDelete(policy) {
  return confirmAction({
    id: "confirm-delete",
    title: `Delete policy "${policy.name}"?`,
    text: `All ${policy.version > 1 ? `${policy.version} versions` : "its versions"} and its `
      + "decisions on finished jobs are deleted too (the jobs' audit trail keeps them). This cannot be undone.",
    yes: "Delete policy",
  });
}
