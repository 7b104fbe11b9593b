/* API tokens: list, create (the secret is shown once), revoke. */

import { del, el, errorMessage, formatTime, get, post } from "./api.js";
import { clearErrors, flattenDetails, showErrors } from "./forms.js";

const $ = (id) => document.getElementById(id);
const form = $("token-form");
const summary = $("token-errors");
const body = document.querySelector("#tokens tbody");
const result = $("token-result");

function stateOf(t) {
  if (t.revoked_at) return "revoked";
  if (t.expires_at && new Date(t.expires_at) < new Date()) return "expired";
  return "active";
}

async function refresh() {
  const r = await get("/api/v1/tokens/");
  if (!r.ok) { result.textContent = errorMessage(r); return; }
  if (!r.body.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7", text: "No tokens yet." })));
    return;
  }
  body.replaceChildren(...r.body.map((t) => {
    const state = stateOf(t);
    return el("tr", { dataset: { id: String(t.id), state } },
      el("td", { text: t.name }), el("td", {}, el("code", { text: `${t.prefix}…` })),
      el("td", { text: formatTime(t.created_at) }), el("td", { text: formatTime(t.last_used_at) }),
      el("td", { text: t.expires_at ? formatTime(t.expires_at) : "never" }),
      el("td", {}, el("span", { class: `status status-${state}`, text: state })),
      el("td", {}, state === "active"
        ? el("button", { type: "button", class: "small danger", "aria-label": `Revoke ${t.name}`, onclick: () => revoke(t) }, "Revoke")
        : ""));
  }));
}

async function revoke(t) {
  const r = await del(`/api/v1/tokens/${t.id}/`);
  result.textContent = r.ok ? `Token "${t.name}" revoked.` : errorMessage(r);
  result.className = `result ${r.ok ? "ok" : "error"}`;
  await refresh();
  $("token-name").focus();
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors(form, summary);
  const payload = { name: $("token-name").value.trim() };
  if ($("token-expires").value.trim()) payload.expires_in_days = Number($("token-expires").value);
  const r = await post("/api/v1/tokens/", payload);
  if (!r.ok) {
    const fields = { name: $("token-name"), expires_in_days: $("token-expires") };
    const errors = flattenDetails(r.body.details).map(({ path, message }) => ({ field: fields[path[0]] || null, message }));
    showErrors(errors.length ? errors : [{ field: null, message: errorMessage(r) }], summary, "The token was not created:");
    return;
  }
  form.reset();
  $("secret-value").value = r.body.token;
  $("token-secret").hidden = false;
  $("secret-value").focus();
  $("secret-value").select();
  result.textContent = `Token "${r.body.name}" created.`;
  result.className = "result ok";
  refresh();
});

$("secret-copy").addEventListener("click", async () => {
  $("secret-value").select();
  try { await navigator.clipboard.writeText($("secret-value").value); result.textContent = "Copied."; }
  catch (err) { document.execCommand && document.execCommand("copy"); result.textContent = "Selected: press Ctrl+C to copy."; }
});
$("secret-done").addEventListener("click", () => {
  // Forget the secret: it cannot be shown again.
  $("secret-value").value = "";
  $("token-secret").hidden = true;
  $("token-name").focus();
});

refresh();
