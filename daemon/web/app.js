// The edged chat page: talks to this daemon's own OpenAI routes (/v1/models,
// /v1/chat/completions with stream), keeps conversations and settings in localStorage.
// The API key is never written to localStorage: it lives in the page's memory, and in
// sessionStorage (gone when the tab closes) only if the person ticks "remember on this device".
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const STORE = "edged.conversations";
  const KEY = "edged.apiKey"; // sessionStorage only, and only when "remember" is ticked
  const SETTINGS = "edged.settings";
  let conversations = load(STORE, []);
  let current = null; // the open conversation
  let controller = null; // AbortController of the answer being streamed
  let pending = []; // images attached to the next message, as data: URLs
  let seeing = new Set(); // models whose /v1/models entry says they take images
  // What the daemon decodes (stb_image); anything else is refused before it is read.
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/bmp"];

  function load(key, fallback) {
    try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
  }
  function save() {
    try { localStorage.setItem(STORE, JSON.stringify(conversations)); }
    catch { status("This conversation is too large to keep in the browser (its images): it lasts until the page closes."); }
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }
  // The key in sessionStorage when "remember on this device" is ticked, else nowhere but the field.
  function rememberKey() {
    const key = $("api-key").value.trim();
    try {
      if ($("remember-key").checked && key) sessionStorage.setItem(KEY, key);
      else sessionStorage.removeItem(KEY);
    } catch { /* storage refused (private mode): the key stays in memory */ }
  }
  function restoreKey() {
    // An older page kept the key in localStorage, for good: delete it, never reuse it.
    try { localStorage.removeItem(KEY); } catch { /* nothing to clean */ }
    let key = null;
    try { key = sessionStorage.getItem(KEY); } catch { /* none */ }
    if (key) {
      $("api-key").value = key;
      $("remember-key").checked = true;
      $("key-label").hidden = false;
    }
  }
  function status(text) { $("status").textContent = text || ""; }

  async function errorOf(resp) {
    try {
      const body = await resp.json();
      return (body.error && (body.error.message || body.error)) || resp.statusText;
    } catch { return resp.status + " " + resp.statusText; }
  }

  async function loadModels() {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (resp.status === 401) {
      $("key-label").hidden = false;
      status("This daemon wants an API key: type it in the API key field.");
      return;
    }
    if (!resp.ok) { status("Listing models failed: " + (await errorOf(resp))); return; }
    status("");
    const select = $("model");
    const previous = select.value || (current && current.model) || load(SETTINGS, {}).model;
    select.textContent = "";
    seeing = new Set();
    for (const m of (await resp.json()).data) {
      if ((m.capabilities || []).includes("multimodal")) seeing.add(m.id);
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.alias_of ? m.id + " → " + m.alias_of : m.id;
      select.appendChild(opt);
    }
    if (previous && [...select.options].some((o) => o.value === previous)) select.value = previous;
    showAttach();
  }

  // ---- images: picked, pasted or dropped; shown before sending and in the conversation ----
  function showAttach() {
    const sees = seeing.has($("model").value);
    $("attach-label").hidden = !sees;
    if (!sees && pending.length) { pending = []; renderPending(); }
  }
  function addImages(files) {
    if (!seeing.has($("model").value)) { status("This model does not take images."); return; }
    for (const file of files) {
      if (!IMAGE_TYPES.includes(file.type)) { status(file.name + ": only PNG, JPEG, GIF or BMP images."); continue; }
      const reader = new FileReader();
      reader.onload = () => { pending.push(reader.result); renderPending(); };
      reader.readAsDataURL(file);
    }
  }
  function imageNode(url) {
    const img = document.createElement("img");
    // Only data: URLs of images made by FileReader are ever shown (never a remote address).
    if (typeof url === "string" && url.startsWith("data:image/")) img.src = url;
    img.alt = "attached image";
    return img;
  }
  function renderPending() {
    const box = $("attachments");
    box.textContent = "";
    pending.forEach((url, i) => {
      const fig = document.createElement("figure");
      const img = imageNode(url);
      img.className = "thumb";
      const drop = document.createElement("button");
      drop.type = "button";
      drop.textContent = "×";
      drop.setAttribute("aria-label", "Remove image " + (i + 1));
      drop.addEventListener("click", () => { pending.splice(i, 1); renderPending(); });
      fig.append(img, drop);
      box.appendChild(fig);
    });
  }
  // The OpenAI content of a message: its images (first, as in the conversation) and text.
  function wire(m) {
    if (!m.images || !m.images.length) return { role: m.role, content: m.content };
    const parts = m.images.map((url) => ({ type: "image_url", image_url: { url } }));
    if (m.content) parts.push({ type: "text", text: m.content });
    return { role: m.role, content: parts };
  }

  function settings() {
    const num = (id) => { const v = parseFloat($(id).value); return Number.isFinite(v) ? v : undefined; };
    return { temperature: num("temperature"), top_p: num("top_p"), max_tokens: num("max_tokens") };
  }
  function saveSettings() {
    localStorage.setItem(SETTINGS, JSON.stringify({ ...settings(), model: $("model").value, system: $("system").value }));
  }
  function restoreSettings() {
    const s = load(SETTINGS, {});
    for (const id of ["temperature", "top_p", "max_tokens"]) if (s[id] !== undefined) $(id).value = s[id];
    if (s.system) $("system").value = s.system;
  }

  function renderList() {
    const list = $("conversations");
    list.textContent = "";
    for (const c of [...conversations].sort((a, b) => b.updated - a.updated)) {
      const li = document.createElement("li");
      if (current && c.id === current.id) li.className = "active";
      const open = document.createElement("button");
      open.className = "open";
      open.type = "button";
      open.textContent = c.title || "New chat";
      open.title = c.title || "";
      open.addEventListener("click", () => openConversation(c.id));
      const del = document.createElement("button");
      del.className = "delete";
      del.type = "button";
      del.textContent = "×";
      del.title = "Delete";
      del.setAttribute("aria-label", "Delete " + (c.title || "chat"));
      del.addEventListener("click", () => {
        conversations = conversations.filter((x) => x.id !== c.id);
        if (current && current.id === c.id) current = null;
        save();
        renderList();
        renderMessages();
      });
      li.append(open, del);
      list.appendChild(li);
    }
  }

  function messageNode(msg) {
    const div = document.createElement("div");
    div.className = "msg " + msg.role;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = msg.role === "user" ? "You" : (msg.model || "assistant");
    const content = document.createElement("div");
    content.className = "content";
    div.append(role, content);
    fill(div, msg);
    return div;
  }
  function fill(div, msg) {
    const content = div.querySelector(".content");
    if (msg.images && msg.images.length && !div.querySelector(".images")) {
      const strip = document.createElement("div");
      strip.className = "images";
      for (const url of msg.images) strip.appendChild(imageNode(url));
      div.insertBefore(strip, content);
    }
    if (msg.role === "user") content.textContent = msg.content;
    else content.innerHTML = window.EdgedMarkdown.render(msg.content); // escaped by the renderer
    let stats = div.querySelector(".stats");
    if (msg.stats) {
      if (!stats) { stats = document.createElement("div"); stats.className = "stats"; div.appendChild(stats); }
      stats.textContent = msg.stats;
    }
  }

  function renderMessages() {
    const box = $("messages");
    box.textContent = "";
    if (!current || !current.messages.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "Pick a model and send a message.";
      box.appendChild(p);
      return;
    }
    for (const m of current.messages) box.appendChild(messageNode(m));
    box.scrollTop = box.scrollHeight;
  }

  function openConversation(id) {
    current = conversations.find((c) => c.id === id) || null;
    if (current) {
      if (current.system !== undefined) $("system").value = current.system;
      if (current.model && [...$("model").options].some((o) => o.value === current.model)) $("model").value = current.model;
    }
    renderList();
    renderMessages();
  }

  function newConversation() {
    current = null;
    renderList();
    renderMessages();
    $("input").focus();
  }

  function statsText(ttft, tokens, seconds, timings, stopped) {
    const parts = [];
    if (timings && timings.predicted_per_second) parts.push(timings.predicted_per_second.toFixed(1) + " tok/s");
    else if (seconds > 0 && tokens > 0) parts.push((tokens / seconds).toFixed(1) + " tok/s");
    if (ttft !== null) parts.push("first token " + Math.round(ttft) + " ms");
    // The server's count when the answer ran to its end; else the pieces seen (about tokens).
    if (timings && timings.predicted_n) parts.push(timings.predicted_n + " tokens");
    else if (tokens) parts.push("~" + tokens + " tokens");
    if (timings && timings.cache_n) parts.push(timings.cache_n + " cached");
    if (stopped) parts.push("stopped");
    return parts.join(" · ");
  }

  async function send(text) {
    const model = $("model").value;
    if (!model) { status("No model to talk to (is the API key right?)."); return; }
    const images = pending;
    pending = [];
    renderPending();
    if (!current) {
      const title = text.slice(0, 60) || (images.length ? "Image" : "New chat");
      current = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6),
                  title, model, system: $("system").value, messages: [], updated: Date.now() };
      conversations.push(current);
    }
    current.model = model;
    current.system = $("system").value;
    current.updated = Date.now();
    current.messages.push(images.length ? { role: "user", content: text, images } : { role: "user", content: text });
    const reply = { role: "assistant", content: "", model };
    current.messages.push(reply);
    save();
    renderList();
    renderMessages();
    const node = $("messages").lastElementChild;
    node.classList.add("streaming");

    const history = current.messages.slice(0, -1).map(wire);
    if (current.system.trim()) history.unshift({ role: "system", content: current.system });
    const body = { model, messages: history, stream: true, stream_options: { include_usage: true }, ...settings() };

    controller = new AbortController();
    $("send").hidden = true;
    $("stop").hidden = false;
    status("");
    const started = performance.now();
    let ttft = null, chunks = 0, timings = null, stopped = false;
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) throw new Error(await errorOf(resp));
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const events = buffer.split(/\r?\n\r?\n/);
        buffer = events.pop();
        for (const event of events) {
          for (const line of event.split(/\r?\n/)) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const obj = JSON.parse(data);
            if (obj.error) throw new Error(obj.error.message || "the stream failed");
            if (obj.timings) timings = obj.timings;
            for (const choice of obj.choices || []) {
              const piece = choice.delta && choice.delta.content;
              if (piece) {
                if (ttft === null) ttft = performance.now() - started;
                chunks++;
                reply.content += piece;
              }
            }
          }
        }
        fill(node, reply);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else status("The answer failed: " + err.message);
    } finally {
      controller = null;
      const seconds = ttft === null ? 0 : (performance.now() - started - ttft) / 1000;
      reply.stats = statsText(ttft, chunks, seconds, timings, stopped);
      node.classList.remove("streaming");
      fill(node, reply);
      current.updated = Date.now();
      save();
      renderList();
      $("send").hidden = false;
      $("stop").hidden = true;
    }
  }

  function init() {
    restoreSettings();
    restoreKey();
    $("api-key").addEventListener("change", () => {
      rememberKey();
      loadModels();
    });
    $("remember-key").addEventListener("change", rememberKey);
    $("toggle-settings").addEventListener("click", () => {
      const s = $("settings");
      s.hidden = !s.hidden;
      $("toggle-settings").setAttribute("aria-expanded", String(!s.hidden));
    });
    for (const id of ["temperature", "top_p", "max_tokens", "system", "model"]) $(id).addEventListener("change", saveSettings);
    $("new-chat").addEventListener("click", newConversation);
    $("model").addEventListener("change", showAttach);
    $("attach").addEventListener("change", (e) => { addImages(e.target.files); e.target.value = ""; });
    $("input").addEventListener("paste", (e) => {
      const files = [...(e.clipboardData ? e.clipboardData.files : [])];
      if (files.length) { e.preventDefault(); addImages(files); }
    });
    const composer = $("composer");
    composer.addEventListener("dragover", (e) => {
      if (!seeing.has($("model").value)) return;
      e.preventDefault();
      composer.classList.add("dropping");
    });
    composer.addEventListener("dragleave", () => composer.classList.remove("dropping"));
    composer.addEventListener("drop", (e) => {
      composer.classList.remove("dropping");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      e.preventDefault();
      addImages(e.dataTransfer.files);
    });
    $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("input").value.trim();
      if ((!text && !pending.length) || controller) return;
      $("input").value = "";
      send(text);
    });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    renderList();
    renderMessages();
    loadModels();
  }
  init();
})();
