/* Talking to the REST API from the browser: session cookie, CSRF header, one error shape.
 *
 * Every call resolves to {ok, status, body}; it never throws for an HTTP error, so a
 * page can show the server's message (`{"code","message","details"}`) where it belongs.
 * A network failure resolves to status 0 with a message saying so.
 */

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body instanceof FormData) {
    init.body = body; // multipart: the browser sets the Content-Type with its boundary
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (!["GET", "HEAD", "OPTIONS"].includes(method)) init.headers["X-CSRFToken"] = csrfToken();
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, body: { code: "network", message: "The server could not be reached.", details: {} } };
  }
  let data = null;
  const isJson = (resp.headers.get("Content-Type") || "").includes("json");
  const text = await resp.text();
  if (text && isJson) {
    try { data = JSON.parse(text); } catch (err) { data = null; }
  }
  if (!resp.ok && (data === null || typeof data !== "object")) {
    // Not one of ours (e.g. Django's HTML 404 for a route that does not exist).
    data = { code: `http_${resp.status}`, message: `${resp.status} ${resp.statusText}`, details: {} };
  }
  return { ok: resp.ok, status: resp.status, body: data };
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const put = (path, body) => api("PUT", path, body);
export const del = (path) => api("DELETE", path);

/* True when the endpoint is not there (yet): the page degrades instead of failing. */
export function missing(result) {
  return result.status === 405 || (result.status === 404 && result.body.code !== "not_found");
}

export function errorMessage(result) {
  if (!result.body) return `HTTP ${result.status}`;
  return result.body.message || result.body.detail || `HTTP ${result.status}`;
}

/* Small DOM helpers shared by the pages. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

export function formatAgo(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function formatNumber(v) {
  if (v === null || v === undefined || v === "") return "—";
  const n = Number(v);
  if (!isFinite(n)) return String(v);
  const a = Math.abs(n);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return n.toExponential(2);
  return String(Math.round(n * 10000) / 10000);
}

/* Repeat fn every interval ms while the page is visible; returns a stop function. */
export function every(intervalMs, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) { try { await fn(); } catch (err) { /* next tick retries */ } }
    timer = setTimeout(tick, intervalMs);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
