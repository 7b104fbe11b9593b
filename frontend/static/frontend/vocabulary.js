/* The vocabulary the server, the policies and the agents share (agent.protocol.vocabulary),
 * as the page carries it (a JSON script element rendered by base.html; the same document is
 * GET /api/v1/vocabulary/). Read from here instead of spelling strategies, actions or
 * metric names in the UI's own code. */

const element = document.getElementById("vocabulary");
export const VOCABULARY = element ? JSON.parse(element.textContent) : { actions: [], metrics: [] };

/* Action names in their canonical order. */
export const ACTIONS = VOCABULARY.actions.map((a) => a.name);
/* Actions that take a value (a number or one of a set of names). */
export const VALUE_ACTIONS = new Set(VOCABULARY.actions.filter((a) => a.value).map((a) => a.name));
/* action -> the names it accepts, for actions whose value is a choice (set_strategy, ...). */
export const ACTION_CHOICES = Object.fromEntries(
  VOCABULARY.actions.filter((a) => a.choices).map((a) => [a.name, a.choices]));
/* name -> one-line description, for every action and metric. */
export const DESCRIPTIONS = Object.fromEntries(
  [...VOCABULARY.actions, ...VOCABULARY.metrics].map((t) => [t.name, t.description]));
