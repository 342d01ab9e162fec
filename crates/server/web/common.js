// Shared by the pages: the API key (kept in this browser only), requests with it, and reading
// server-sent events from a fetch response (EventSource cannot send the key). Every text from
// the server goes into the page through textContent, never as HTML.
"use strict";

function apiKey() { return localStorage.getItem("xcomposer-key") || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey()) h["Authorization"] = "Bearer " + apiKey();
  return h;
}

async function api(path, opts) {
  opts = opts || {};
  const init = { method: opts.method || "GET", headers: headers(opts.body ? { "Content-Type": "application/json" } : {}) };
  if (opts.body) init.body = JSON.stringify(opts.body);
  const r = await fetch(path, init);
  return r;
}

async function apiJson(path, opts) {
  const r = await api(path, opts);
  const v = await r.json();
  if (!r.ok) throw new Error((v.error && v.error.message) || ("HTTP " + r.status));
  return v;
}

// Calls onEvent with each parsed `data:` payload of an SSE response until it ends.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (block.startsWith("data: ")) onEvent(block.slice(6));
    }
  }
}

// An element with text content (never HTML) and attributes.
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// An image the API serves behind the key: fetched, shown from a blob: URL.
async function authImage(path, alt) {
  const img = el("img", null, { alt: alt || "" });
  const r = await api(path);
  if (r.ok) img.src = URL.createObjectURL(await r.blob());
  return img;
}

function setupKeyBox() {
  const box = document.getElementById("key");
  box.value = apiKey();
  box.addEventListener("change", () => localStorage.setItem("xcomposer-key", box.value.trim()));
}

function showError(where, e) {
  where.textContent = String(e && e.message ? e.message : e);
}
