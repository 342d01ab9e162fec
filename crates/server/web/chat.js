// The chat page: a multi-turn conversation through /v1/chat/completions, answers streamed,
// images attached as data: URIs.
"use strict";

const $ = (id) => document.getElementById(id);
let history = [];

async function loadModels() {
  try {
    const v = await apiJson("/v1/models");
    $("model").replaceChildren(...v.data.map((m) => el("option", m.id, { value: m.id })));
  } catch (e) { showError($("error"), e); }
}

function readAsDataUrl(file) {
  return new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(r.result);
    r.onerror = () => fail(r.error);
    r.readAsDataURL(file);
  });
}

function bubble(role, text, images) {
  const d = el("div", null, { class: "msg " + role });
  for (const src of images || []) d.append(el("img", null, { src, alt: "attached image" }));
  const t = el("span", text);
  d.append(t);
  $("messages").append(d);
  return t;
}

async function send(ev) {
  ev.preventDefault();
  $("error").textContent = "";
  const text = $("text").value;
  const images = await Promise.all([...$("file").files].map(readAsDataUrl));
  const content = [{ type: "text", text }].concat(images.map((url) => ({ type: "image_url", image_url: { url } })));
  history.push({ role: "user", content: images.length ? content : text });
  bubble("user", text, images);
  $("text").value = "";
  $("file").value = "";
  const out = bubble("assistant", "");
  let answer = "";
  try {
    const r = await api("/v1/chat/completions", { method: "POST", body: { model: $("model").value, messages: history, stream: true, max_tokens: 256 } });
    if (!r.ok) { const v = await r.json(); throw new Error(v.error.message); }
    await readEvents(r, (data) => {
      if (data === "[DONE]") return;
      const c = JSON.parse(data);
      if (c.error) throw new Error(c.error.message);
      const d = c.choices && c.choices[0] && c.choices[0].delta;
      if (d && d.content) { answer += d.content; out.textContent = answer; }
    });
    history.push({ role: "assistant", content: answer });
  } catch (e) {
    history.pop();
    out.parentElement.remove();
    showError($("error"), e);
  }
}

setupKeyBox();
$("form").addEventListener("submit", send);
$("clear").addEventListener("click", () => { history = []; $("messages").replaceChildren(); });
loadModels();
