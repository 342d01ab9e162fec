// The compose page: start a composition, follow its events (stages and streamed text), then
// show the article with its images and the edit operations.
"use strict";

let current = null;
const $ = (id) => document.getElementById(id);

async function refreshList() {
  const list = $("articles");
  try {
    const v = await apiJson("/api/articles");
    list.replaceChildren(...v.data.map((j) => {
      const li = el("li");
      const open = el("a", j.title || j.instruction, { href: "#" + j.id, "data-id": j.id });
      open.addEventListener("click", () => openArticle(j.id));
      const del = el("button", "×", { title: "delete", "data-delete": j.id });
      del.addEventListener("click", async () => { await api("/api/articles/" + j.id, { method: "DELETE" }); refreshList(); });
      li.append(open, " ", el("small", j.status), " ", del);
      return li;
    }));
  } catch (e) { showError($("error"), e); }
}

async function compose(ev) {
  ev.preventDefault();
  $("error").textContent = "";
  $("stages").replaceChildren();
  $("live").textContent = "";
  $("article").replaceChildren();
  const body = { instruction: $("instruction").value, seed: Number($("seed").value || 0) };
  if ($("language").value) body.language = $("language").value;
  if ($("images").value !== "") body.images = Number($("images").value);
  if ($("library").value.trim()) body.library = $("library").value.trim();
  try {
    const job = await apiJson("/api/articles", { method: "POST", body });
    current = job.id;
    $("cancel").hidden = false;
    const r = await api("/api/articles/" + job.id + "/events");
    await readEvents(r, (data) => onEvent(JSON.parse(data)));
    await openArticle(job.id);
  } catch (e) { showError($("error"), e); }
  $("cancel").hidden = true;
  refreshList();
}

function onEvent(e) {
  if (e.type === "text") $("live").textContent += e.text;
  else if (e.type === "stage") {
    const li = el("li", e.stage + (e.state === "finished" ? ": " + e.summary : " …"), { class: e.state });
    $("stages").append(li);
  } else if (e.type === "cancelled") $("stages").append(el("li", "cancelled", { class: "cancelled" }));
  else if (e.type === "error") showError($("error"), e.message);
}

// Asks the server to stop the running composition; its events then end with "cancelled".
async function cancelCompose() {
  try {
    await apiJson("/api/articles/" + current + "/cancel", { method: "POST" });
  } catch (e) { showError($("error"), e); }
}

async function edit(body) {
  $("error").textContent = "";
  try {
    await apiJson("/api/articles/" + current + "/edit", { method: "POST", body });
    await openArticle(current);
  } catch (e) { showError($("error"), e); }
}

async function figure(slot, i) {
  const f = el("figure", null, { "data-slot": i });
  if (slot.asset) f.append(await authImage("/api/articles/" + current + "/" + slot.asset, slot.caption));
  f.append(el("figcaption", slot.caption));
  const caption = el("input", null, { type: "text", value: slot.caption, "aria-label": "caption" });
  const set = el("button", "Set caption", { "data-op": "caption" });
  set.addEventListener("click", () => edit({ op: "caption", slot: i, text: caption.value }));
  const re = el("button", "Re-caption", { "data-op": "recaption" });
  re.addEventListener("click", () => edit({ op: "recaption", slot: i }));
  const del = el("button", "Delete image", { "data-op": "delete" });
  del.addEventListener("click", () => edit({ op: "delete", slot: i }));
  const cands = el("div", null, { class: "candidates" });
  slot.candidates.forEach((c, j) => {
    const name = (c.description || String(c.path).split("/").pop()) + " (" + c.score.toFixed(2) + ")";
    const b = el("button", (j === slot.chosen ? "✓ " : "") + name, { "data-op": "swap", "data-candidate": j });
    b.addEventListener("click", () => edit({ op: "swap", slot: i, candidate: j }));
    cands.append(b);
  });
  f.append(caption, set, re, del, el("div", "Candidates:"), cands);
  return f;
}

async function openArticle(id) {
  current = id;
  const view = $("article");
  try {
    const v = await apiJson("/api/articles/" + id);
    const a = v.article;
    if (!a) { view.replaceChildren(el("p", "Status: " + v.job.status + (v.job.error ? " — " + v.job.error : ""))); return; }
    const parts = [el("h1", a.title)];
    for (let p = 0; p < a.paragraphs.length; p++) {
      parts.push(el("p", a.paragraphs[p], { "data-paragraph": p }));
      for (let i = 0; i < a.images.length; i++) if (a.images[i].after_paragraph === p) parts.push(await figure(a.images[i], i));
      const add = el("button", "+ image here", { "data-op": "add", "data-after": p });
      add.addEventListener("click", () => edit({ op: "add", paragraph: p }));
      parts.push(add);
    }
    const dl = el("button", "Download bundle (.zip)", { id: "download" });
    dl.addEventListener("click", async () => {
      const r = await api("/api/articles/" + id + "/bundle.zip");
      const a2 = el("a", null, { href: URL.createObjectURL(await r.blob()), download: "article.zip" });
      document.body.append(a2); a2.click(); a2.remove();
    });
    parts.push(el("hr"), dl);
    view.replaceChildren(...parts);
    view.dataset.edits = String(a.edits.length);
  } catch (e) { showError($("error"), e); }
}

setupKeyBox();
$("form").addEventListener("submit", compose);
$("cancel").addEventListener("click", cancelCompose);
refreshList();
if (location.hash.length > 1) openArticle(location.hash.slice(1));
