/* The policy list and the built-in templates. */

import { el, errorMessage, formatTime, get } from "./api.js";

async function policies() {
  const body = document.querySelector("#policies tbody");
  const r = await get("/api/v1/policies/");
  if (!r.ok) { body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7", text: errorMessage(r) }))); return; }
  if (!r.body.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7" }, "No policies yet. Start from a template below or ",
      el("a", { href: "/policies/new/" }, "write one"), ".")));
    return;
  }
  body.replaceChildren(...r.body.map((p) => {
    const def = p.definition || {};
    const rules = Array.isArray(def.rules) ? def.rules : [];
    return el("tr", { dataset: { id: String(p.id) } },
      el("td", { text: p.id }), el("td", {}, el("a", { href: `/policies/${p.id}/` }, p.name)),
      el("td", { text: `v${p.version}` }), el("td", { text: rules.map((x) => x.name).join(", ") }),
      el("td", { text: def.dry_run ? "dry run" : (p.enabled === false ? "disabled" : "acting") }),
      el("td", { text: p.owner }), el("td", { text: formatTime(p.updated_at) }));
  }));
}

async function templates() {
  const list = document.getElementById("templates");
  const r = await get("/api/v1/policies/templates/");
  if (!r.ok) { list.replaceChildren(el("li", { text: errorMessage(r) })); return; }
  list.replaceChildren(...r.body.map((t) => el("li", { class: "card" },
    el("h3", { text: t.name }), el("p", { class: "muted", text: t.description }),
    el("a", { class: "button secondary", href: `/policies/new/?template=${encodeURIComponent(t.id)}` }, "Use this template"))));
}

policies();
templates();
