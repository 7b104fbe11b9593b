/* Add a node (staff): a join token with a use limit and an expiry, answered with what to
 * run on the node — the pip install, the environment file (the token in it), the systemd
 * unit and the commands that start it, each with a copy button — rendered by the server
 * from the one template the install doc shows. The page then waits for a node to enrol
 * with the token and says so. Below, the join tokens: state, nodes enrolled, revoke.
 */

import { del, el, errorMessage, every, formatTime, get, post } from "./api.js";
import { clearErrors, flattenDetails, showErrors } from "./forms.js";

const $ = (id) => document.getElementById(id);
const form = $("node-form");
const summary = $("token-errors");
const body = document.querySelector("#join-tokens tbody");
const result = $("node-result");
let waitingFor = null; // the id of the token just made, until a node enrols with it

function say(text, ok) {
  result.textContent = text;
  result.className = `result ${ok ? "ok" : "error"}`;
}

async function refresh() {
  const r = await get("/api/v1/join-tokens/");
  if (!r.ok) { say(errorMessage(r), false); return; }
  if (!r.body.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "8", text: "No join tokens yet." })));
    return;
  }
  body.replaceChildren(...r.body.map((t) => el("tr", { dataset: { id: String(t.id), state: t.state } },
    el("td", { text: t.label || "—" }), el("td", {}, el("code", { text: `${t.prefix}…` })),
    el("td", { text: `${formatTime(t.created_at)}${t.created_by ? ` by ${t.created_by}` : ""}` }),
    el("td", { text: formatTime(t.expires_at) }),
    el("td", { text: `${t.uses_left} of ${t.uses_allowed}` }),
    el("td", {}, el("span", { class: `status status-${t.state}`, text: t.state.replace("_", " ") })),
    el("td", { text: t.nodes.join(", ") || "—" }),
    el("td", {}, t.state === "active"
      ? el("button", { type: "button", class: "small danger", "aria-label": `Revoke join token ${t.prefix}`, onclick: () => revoke(t) }, "Revoke")
      : ""))));
  const made = waitingFor && r.body.find((t) => t.id === waitingFor);
  if (made && made.nodes.length) {
    $("setup-enrolled").replaceChildren(`Node ${made.nodes.join(", ")} enrolled: `,
      el("a", { href: "/nodes/" }, "see it on the nodes page"), ".");
    if (made.uses_left === 0) waitingFor = null;
  }
}

async function revoke(t) {
  const r = await del(`/api/v1/join-tokens/${t.id}/`);
  say(r.ok ? `Join token ${t.prefix}… revoked: no more nodes enrol with it.` : errorMessage(r), r.ok);
  await refresh();
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors(form, summary);
  const payload = {
    label: $("node-label").value.trim(),
    uses: Number($("node-uses").value),
    expires_in_hours: Number($("node-expires").value),
    kind: form.querySelector("input[name=kind]:checked").value,
  };
  if ($("node-name").value.trim()) payload.node_name = $("node-name").value.trim();
  const r = await post("/api/v1/join-tokens/", payload);
  if (!r.ok) {
    const fields = { label: $("node-label"), node_name: $("node-name"), uses: $("node-uses"), expires_in_hours: $("node-expires"), kind: $("node-kind") };
    const errors = flattenDetails(r.body.details).map(({ path, message }) => ({ field: fields[path[0]] || null, message }));
    showErrors(errors.length ? errors : [{ field: null, message: errorMessage(r) }], summary, "The join token was not created:");
    return;
  }
  const setup = r.body.setup;
  $("setup-install").textContent = setup.install;
  $("setup-env-path").textContent = setup.env_file_path;
  $("setup-env").textContent = setup.env_file;
  $("setup-unit-path").textContent = setup.unit_path;
  $("setup-unit").textContent = setup.unit;
  $("setup-start").textContent = setup.start;
  $("setup-enrolled").textContent = "Waiting for the node to enrol…";
  $("node-setup").hidden = false;
  $("node-setup").focus();
  waitingFor = r.body.id;
  say(`Join token ${r.body.prefix}… created: good for ${r.body.uses_allowed} node(s) until ${formatTime(r.body.expires_at)}.`, true);
  refresh();
});

document.querySelectorAll("button.copy").forEach((button) => button.addEventListener("click", async () => {
  const text = $(button.dataset.copy).textContent;
  try { await navigator.clipboard.writeText(text); say("Copied.", true); }
  catch (err) {
    // Without clipboard access (plain HTTP), select the text for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents($(button.dataset.copy));
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    say("Selected: press Ctrl+C to copy.", true);
  }
}));

$("setup-done").addEventListener("click", () => {
  // Forget the secret: it cannot be shown again.
  for (const id of ["setup-install", "setup-env", "setup-unit", "setup-start"]) $(id).textContent = "";
  $("node-setup").hidden = true;
  waitingFor = null;
  $("node-label").focus();
});

every(2000, refresh);
