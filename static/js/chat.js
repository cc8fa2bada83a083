// The chat page: controls (model, mode, knowledge base, prompt type), the conversation with streamed
// replies, stop / retry / copy, citations, and multi-turn history kept in the page and in localStorage.
import { getJSON, postStream, describeError } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { initPhoto, speciesName } from "./photo.js";
import { initTeach } from "./teach.js";
import { h, initChrome, showError, hideNotice, describeScore, scoreRank } from "./ui.js";

const STORE_KEY = "birdsdao.chat";
const PREFS_KEY = "birdsdao.prefs";
const MAX_STORED = 100; // messages kept in localStorage (the oldest are dropped first)
const MAX_HISTORY_PAIRS = 10; // turns sent back to the server as context

// What the user sees for the backends the server may offer; unknown names are shown as they come.
const MODEL_LABELS = {
  extractive: ["检索摘录（非生成式）", "Retrieval excerpts, not generative",
    "直接摘录知识库原文作答，不会编造，但也不会改写。Answers by quoting the knowledge base."],
  chatglm2: ["本地 ChatGLM2", "Local ChatGLM2", "在本机运行的 ChatGLM2 生成式模型。A generative model running on this server."],
  llama: ["本地 llama.cpp 模型", "Local llama.cpp", "在本机运行的 GGUF 生成式模型。A generative GGUF model on this server."],
  transformers: ["本地 Transformers 模型", "Local Transformers model", "在本机运行的 Transformers 生成式模型。A generative model on this server."],
  openai: ["OpenAI 兼容接口", "OpenAI-compatible API", "转发到配置的 OpenAI 兼容服务。Forwarded to the configured API."],
};

const PROMPT_HELP = {
  chat: "自由对话，可多轮追问。Free conversation with follow-up questions.",
  species: "介绍一种鸟：外形、分布、习性（可用照片识别的结果）。Describe a species, e.g. the one in your photo.",
  KE1: "从文本中抽取文中写明的知识三元组（头实体，关系，尾实体），如（白头海雕，体长，约80厘米）。Extract the knowledge triples the text states.",
  KE2: "标出文本中的命名实体：鸟名、人名、地点、机构、日期、带单位的数量。Mark named entities (birds, people, places, organisations, dates, quantities).",
  KE3: "抽取文中写明的属性键值对，如体长、翼展、食性、分布，值照原文。Extract the attributes the text states (length, wingspan, diet…), values as written.",
};

const $ = (id) => document.getElementById(id);

const state = {
  messages: [], // {role: "user"|"assistant", text, sources?, extra?, status?: "streaming"|"done"|"stopped"|"error", error?}
  speciesLabel: null, // the species the last photo named, sent so follow-ups are about it
  photoId: null, // the last photo /detect kept: questions go with it (the server answers from what it saw)
  controller: null,
};

// ---------- persistence ----------
function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (saved && Array.isArray(saved.messages)) {
      state.messages = saved.messages
        .filter((m) => m && (m.role === "user" || m.role === "assistant") && typeof m.text === "string")
        .map((m) => (m.status === "streaming" ? { ...m, status: "stopped" } : m));
      state.speciesLabel = typeof saved.speciesLabel === "string" ? saved.speciesLabel : null;
      state.photoId = typeof saved.photoId === "string" && PHOTO_ID.test(saved.photoId) ? saved.photoId : null;
    }
  } catch { /* corrupt or disabled storage: start fresh */ }
}

function save() {
  try {
    const messages = state.messages.slice(-MAX_STORED);
    localStorage.setItem(STORE_KEY, JSON.stringify({ messages, speciesLabel: state.speciesLabel, photoId: state.photoId }));
  } catch { /* quota or disabled storage: the page still works */ }
}

function loadPrefs() {
  try { return JSON.parse(localStorage.getItem(PREFS_KEY) || "{}") || {}; } catch { return {}; }
}

function savePrefs() {
  const prefs = {
    model_type: $("model-type").value,
    mode: document.querySelector("input[name=mode]:checked").value,
    kb_name: $("kb-name").value,
    prompt_type: $("prompt-type").value,
  };
  try { localStorage.setItem(PREFS_KEY, JSON.stringify(prefs)); } catch { /* ignore */ }
}

/** [user, assistant] pairs of the finished turns before message index `upTo`. */
function historyBefore(upTo) {
  const pairs = [];
  for (let i = 0; i + 1 < upTo; i++) {
    const a = state.messages[i], b = state.messages[i + 1];
    if (a.role === "user" && b.role === "assistant" && b.text && b.status !== "error") {
      pairs.push([a.text, b.text]);
      i++;
    }
  }
  return pairs.slice(-MAX_HISTORY_PAIRS);
}

// ---------- rendering ----------
function renderExtras(msg) {
  // KE1/KE2/KE3 structured results, when the server sends them, as small tables (text only).
  const box = h("div", "extras");
  if (Array.isArray(msg.triples) && msg.triples.length) {
    const table = h("table");
    table.append(h("caption", null, "知识三元组 Triples"));
    for (const t of msg.triples) {
      const tr = h("tr");
      for (const cell of t.slice(0, 3)) tr.append(h("td", null, cell));
      table.append(tr);
    }
    box.append(table);
  }
  if (Array.isArray(msg.entities) && msg.entities.length) {
    const ul = h("ul", "entities");
    for (const e of msg.entities) {
      const li = h("li");
      li.append(h("mark", null, e.text), h("span", "muted", ` ${e.type || ""}`));
      ul.append(li);
    }
    box.append(h("p", "extras-title", "命名实体 Entities"), ul);
  }
  if (msg.attributes && typeof msg.attributes === "object" && Object.keys(msg.attributes).length) {
    const dl = h("dl", "attributes");
    for (const [k, v] of Object.entries(msg.attributes)) dl.append(h("dt", null, k), h("dd", null, typeof v === "string" ? v : JSON.stringify(v)));
    box.append(h("p", "extras-title", "属性 Attributes"), dl);
  }
  // Facts from the species cards about the birds the text names: shown apart, labelled as not from the text.
  const cards = msg.from_cards;
  if (box.childNodes.length && cards && typeof cards === "object") {
    const section = h("details", "from-cards");
    section.append(h("summary", null, `资料卡片 From the cards（${typeof cards.note === "string" ? cards.note : ""}）`));
    if (Array.isArray(cards.triples)) {
      const table = h("table");
      for (const t of cards.triples) {
        const tr = h("tr");
        for (const cell of t.slice(0, 3)) tr.append(h("td", null, String(cell)));
        table.append(tr);
      }
      section.append(table);
    }
    if (cards.attributes && typeof cards.attributes === "object") {
      for (const [name, attrs] of Object.entries(cards.attributes)) {
        const dl = h("dl", "attributes card-attributes");
        for (const [k, v] of Object.entries(attrs || {})) dl.append(h("dt", null, `${name} · ${k}`), h("dd", null, String(v)));
        section.append(dl);
      }
    }
    box.append(section);
  }
  return box.childNodes.length ? box : null;
}

const PHOTO_ID = /^p[a-z2-7]{24}$/;

function fillBubble(bubble, msg) {
  if (msg.role === "user" && msg.photo) {
    // The uploaded photo as the user's message, served back by the server while it keeps it.
    const id = PHOTO_ID.test(msg.photo.id || "") ? msg.photo.id : null;
    const img = h("img", "chat-photo");
    img.alt = "你上传的照片 Your photo";
    if (id) img.src = `/photos/${id}`;
    img.addEventListener("error", () => img.replaceWith(h("span", null, "（照片已过期 Photo no longer kept）")), { once: true });
    bubble.replaceChildren(img);
    if (msg.text) bubble.append(h("p", "photo-note", msg.text));
    return;
  }
  if (msg.role === "user") {
    bubble.textContent = msg.text;
    return;
  }
  const sources = Array.isArray(msg.sources) ? msg.sources : [];
  const content = renderMarkdown(msg.text, { citations: sources.length });
  const extras = msg.status === "streaming" ? null : renderExtras(msg);
  if (extras) {
    // KE1-3: the table is the answer; the same facts as plain text stay one click away.
    const raw = h("details", "raw-text");
    raw.append(h("summary", null, "文本 Text"), content);
    bubble.replaceChildren(extras, raw);
  } else {
    bubble.replaceChildren(content);
  }
  if (msg.status === "streaming") {
    if (!msg.text) bubble.append(h("span", "typing", "思考中… Thinking…"));
    bubble.append(h("span", "cursor"));
  }
  if (msg.status === "stopped") bubble.append(h("p", "muted", "（已停止 Stopped）"));
  if (msg.status === "error") bubble.append(h("p", "error-text", `出错了：${msg.error}`));
  if (msg.stopped === "timeout") bubble.append(h("p", "muted", "（回答超时，已截断 Timed out）"));
  for (const warning of Array.isArray(msg.warnings) ? msg.warnings : []) bubble.append(h("p", "muted warning", warning));
}

function sourceList(msg, index) {
  const sources = Array.isArray(msg.sources) ? msg.sources : [];
  if (!sources.length) return null;
  const details = h("details", "sources");
  details.append(h("summary", null, `来源 Sources (${sources.length})`));
  const ol = h("ol");
  sources.forEach((src, i) => {
    const li = h("li");
    const button = h("button", "source-link", `[${i + 1}] ${src.doc_name || src.kb_name || "?"}`);
    button.type = "button";
    button.dataset.cite = String(i + 1);
    button.dataset.msg = String(index);
    li.append(button);
    const score = describeScore(src);
    if (score) li.append(h("span", "muted", ` · ${score.short}`));
    ol.append(li);
  });
  details.append(ol);
  return details;
}

function renderMessage(index) {
  const msg = state.messages[index];
  const li = h("li", `msg msg-${msg.role}${msg.photo ? " msg-photo" : ""}`);
  li.dataset.index = String(index);
  li.dataset.status = msg.status || "done";
  const who = h("span", "visually-hidden", msg.role === "user" ? "你说：You said:" : "助手：Assistant:");
  const bubble = h("div", "bubble");
  fillBubble(bubble, msg);
  li.append(who, bubble);
  if (msg.role === "assistant") {
    const list = sourceList(msg, index);
    if (list) li.append(list);
    const actions = h("div", "actions");
    const copy = h("button", "small copy-btn", "复制 Copy");
    copy.type = "button";
    copy.dataset.action = "copy";
    actions.append(copy);
    if (index === state.messages.length - 1 && msg.status !== "streaming") {
      const retry = h("button", "small retry-btn", "重试 Retry");
      retry.type = "button";
      retry.dataset.action = "retry";
      actions.append(retry);
    }
    if (msg.model_type) actions.append(h("span", "muted model-tag", modelLabel(msg.model_type)));
    li.append(actions);
  }
  return li;
}

function renderAll() {
  const list = $("messages");
  list.replaceChildren(...state.messages.map((_, i) => renderMessage(i)));
  $("empty-hint").hidden = state.messages.length > 0;
}

function rerender(index) {
  const old = $("messages").querySelector(`li[data-index="${index}"]`);
  const fresh = renderMessage(index);
  if (old) old.replaceWith(fresh); else $("messages").append(fresh);
  $("empty-hint").hidden = true;
  return fresh;
}

function scrollToEnd() {
  const list = $("messages");
  const last = list.lastElementChild;
  if (last) last.scrollIntoView({ block: "end" });
}

// ---------- sending ----------
function setBusy(busy) {
  $("send-btn").hidden = busy;
  $("stop-btn").hidden = !busy;
  $("messages").setAttribute("aria-busy", busy ? "true" : "false");
}

function requestFields(text, extra, userIndex) {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const fields = {
    user_input: text,
    prompt_type: extra.prompt_type || $("prompt-type").value,
    mode,
    history: JSON.stringify(historyBefore(userIndex)),
    stream: "1",
  };
  if ($("model-type").value) fields.model_type = $("model-type").value;
  if (mode === "kb" && $("kb-name").value) fields.kb_name = $("kb-name").value;
  const label = extra.species_label || state.speciesLabel;
  if (label) fields.species_label = label;
  if (extra.photo_id && PHOTO_ID.test(extra.photo_id)) fields.photo_id = extra.photo_id;
  return fields;
}

async function ask(userIndex) {
  const user = state.messages[userIndex];
  const extra = user.extra || {};
  state.messages.splice(userIndex + 1);
  state.messages.push({ role: "assistant", text: "", status: "streaming" });
  const index = state.messages.length - 1;
  const msg = state.messages[index];
  renderAll();
  scrollToEnd();
  setBusy(true);
  hideNotice();
  const controller = new AbortController();
  state.controller = controller;
  let deltas = 0;
  let frame = 0;
  const paint = () => {
    frame = 0;
    const li = rerender(index);
    li.dataset.deltas = String(deltas);
    scrollToEnd();
  };
  try {
    await postStream("/get_response", requestFields(user.text, extra, userIndex), (event) => {
      if (typeof event.error === "string") throw Object.assign(new Error(event.error), { fromStream: true });
      if (typeof event.delta === "string" && event.delta) {
        msg.text += event.delta;
        deltas += 1;
      }
      if (event.done) {
        if (Array.isArray(event.sources)) msg.sources = event.sources;
        for (const key of ["triples", "entities", "attributes", "from_cards", "model_type", "warnings", "stopped"]) if (event[key] !== undefined) msg[key] = event[key];
        if (typeof event.response === "string" && event.response && !msg.text) msg.text = event.response;
      }
      if (!frame) frame = requestAnimationFrame(paint);
    }, { signal: controller.signal });
    // Only now, after the last paint below, does the bubble say "done" (tests and screen readers rely on it).
    msg.status = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      msg.status = "stopped";
    } else {
      msg.status = "error";
      msg.error = describeError(err);
      showError(err);
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    state.controller = null;
    setBusy(false);
    const li = rerender(index);
    li.dataset.deltas = String(deltas);
    scrollToEnd();
    save();
  }
}

function send(text, extra = {}) {
  text = text.trim();
  if (!text || state.controller) return;
  // A question after a photo is about it (a retry sends the same photo again).
  if (state.photoId && !extra.photo_id) extra = { ...extra, photo_id: state.photoId };
  state.messages.push({ role: "user", text, extra });
  ask(state.messages.length - 1);
}

function retry() {
  if (state.controller) return;
  let i = state.messages.length - 1;
  while (i >= 0 && (state.messages[i].role !== "user" || state.messages[i].photo)) i--;
  if (i >= 0) ask(i);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Clipboard API refused (insecure origin or permission): fall back to a selected textarea.
    const area = h("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "已复制 Copied";
  setTimeout(() => { button.textContent = "复制 Copy"; }, 1500);
}

function openSource(msgIndex, n, opener) {
  const msg = state.messages[msgIndex];
  const src = msg && Array.isArray(msg.sources) ? msg.sources[n - 1] : null;
  if (!src) return;
  const dialog = $("source-dialog");
  $("source-title").textContent = `[${n}] ${src.doc_name || "?"}`;
  const rank = scoreRank(src, msg.sources);
  const meta = [src.kb_name && `知识库 ${src.kb_name}`, src.chunk_id && `片段 ${src.chunk_id}`,
    rank && `第 ${rank.rank} / ${rank.of} 名 ranked #${rank.rank} of ${rank.of}`].filter(Boolean).join(" · ");
  $("source-meta").textContent = meta;
  const score = describeScore(src);
  $("source-score").textContent = score ? score.long : "";
  $("source-score").hidden = !score;
  $("source-text").textContent = src.text || "";
  dialog.addEventListener("close", () => opener && opener.focus(), { once: true });
  dialog.showModal();
}

// ---------- controls ----------
function modelLabel(name) {
  const known = MODEL_LABELS[name];
  return known ? `${known[0]} · ${known[1]}` : name;
}

/** Accept the /models answer as {models: [...], default} with items as names or {name|model_type, ...}. */
function normalizeModels(body) {
  let items = body && (body.models ?? body.backends ?? body);
  if (items && !Array.isArray(items) && typeof items === "object") {
    items = Object.entries(items).map(([name, info]) => ({ name, ...(typeof info === "object" ? info : {}) }));
  }
  items = (Array.isArray(items) ? items : []).map((it) => (typeof it === "string" ? { name: it } : { ...it, name: it.name || it.model_type }));
  return { items: items.filter((it) => it.name), default: body && (body.default || body.default_model) };
}

async function loadModels(prefs) {
  const select = $("model-type");
  const help = $("model-help");
  const updateHelp = () => {
    const opt = select.selectedOptions[0];
    help.textContent = opt ? opt.dataset.help || "" : "";
  };
  select.addEventListener("change", () => { updateHelp(); savePrefs(); });
  try {
    const { items, default: def } = normalizeModels(await getJSON("/models"));
    select.replaceChildren();
    for (const it of items) {
      const known = MODEL_LABELS[it.name];
      const opt = h("option", null, (known ? known[0] : it.name) + (it.name === def ? "（默认）" : ""));
      opt.value = it.name;
      const unavailable = it.available === false || it.loaded === false || Boolean(it.error);
      opt.disabled = unavailable;
      const kind = it.generative === false ? "非生成式 not generative" : (it.generative ? "生成式 generative" : "");
      opt.dataset.help = unavailable ? `不可用 Unavailable: ${it.error || "未加载 not loaded"}`
        : (known ? `${known[1]}. ${known[2]}` : [it.name, kind, it.description].filter(Boolean).join(" · "));
      select.append(opt);
    }
    const wanted = [prefs.model_type, def].find((n) => n && items.some((it) => it.name === n && !select.querySelector(`option[value="${CSS.escape(n)}"]`).disabled));
    if (wanted) select.value = wanted;
  } catch (err) {
    select.replaceChildren(Object.assign(h("option", null, "服务器默认 Server default"), { value: "" }));
    help.textContent = `无法读取模型列表：${describeError(err)}`;
  }
  updateHelp();
}

async function loadKbs(prefs) {
  const select = $("kb-name");
  try {
    const body = await getJSON("/kb/list");
    select.replaceChildren();
    for (const kb of body.kbs || []) {
      const opt = h("option", null, `${kb.kb_name}${kb.docs !== undefined ? ` (${kb.docs} 文档 docs)` : ""}`);
      opt.value = kb.kb_name;
      select.append(opt);
    }
    if (prefs.kb_name && [...select.options].some((o) => o.value === prefs.kb_name)) select.value = prefs.kb_name;
    if (!select.options.length) $("kb-help").textContent = "还没有知识库，请到“知识库”页面创建。No knowledge base yet.";
  } catch (err) {
    $("kb-help").textContent = `无法读取知识库：${describeError(err)}`;
  }
}

function syncMode() {
  const kb = document.querySelector("input[name=mode]:checked").value === "kb";
  $("kb-name").disabled = !kb;
}

function initControls() {
  const prefs = loadPrefs();
  if (prefs.mode === "kb") document.querySelector("input[name=mode][value=kb]").checked = true;
  if (prefs.prompt_type && PROMPT_HELP[prefs.prompt_type]) $("prompt-type").value = prefs.prompt_type;
  const promptHelp = () => { $("prompt-help").textContent = PROMPT_HELP[$("prompt-type").value] || ""; };
  promptHelp();
  $("prompt-type").addEventListener("change", () => { promptHelp(); savePrefs(); });
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", () => { syncMode(); savePrefs(); });
  $("kb-name").addEventListener("change", savePrefs);
  syncMode();
  loadModels(prefs);
  loadKbs(prefs);
}

function init() {
  initChrome();
  // On a phone the options start folded so the photo and the conversation come first.
  const phone = window.matchMedia("(max-width: 800px)");
  $("options-panel").open = !phone.matches;
  phone.addEventListener("change", () => { $("options-panel").open = !phone.matches; });
  initControls();
  load();
  renderAll();
  scrollToEnd();

  const input = $("user-input");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.controller) return;
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    send(text);
    input.focus();
  });
  input.addEventListener("keydown", (e) => {
    // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition (pinyin) does neither.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop-btn").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    input.focus();
  });
  $("clear-history").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    state.messages = [];
    state.speciesLabel = null;
    state.photoId = null;
    save();
    renderAll();
  });
  $("messages").addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const li = button.closest("li.msg");
    const index = Number(button.dataset.msg ?? (li && li.dataset.index));
    if (button.dataset.cite) openSource(index, Number(button.dataset.cite), button);
    else if (button.dataset.action === "copy") copyText(state.messages[index].text, button);
    else if (button.dataset.action === "retry") retry();
  });

  initTeach();
  initPhoto({
    onResult(result) {
      // Follow-up questions ("它吃什么？") are about the bird in the latest photo.
      const top = result.is_bird && result.detections[0] && result.detections[0].species[0];
      state.speciesLabel = top ? top.label : null;
      state.photoId = PHOTO_ID.test(result.photo_id || "") ? result.photo_id : null;
      if (state.photoId && !state.controller) {
        const n = result.is_bird ? result.detections.length : 0;
        state.messages.push({ role: "user", text: "", photo: { id: state.photoId, boxes: n } });
        rerender(state.messages.length - 1);
        scrollToEnd();
      }
      save();
    },
    onSuggest(question) {
      send(question);
    },
    onAsk(species) {
      state.speciesLabel = species.label;
      save();
      const sci = species.scientific_name ? `，${species.scientific_name}` : "";
      send(`请介绍一下这种鸟：${speciesName(species)}${sci}`, { prompt_type: "species", species_label: species.label });
    },
  });
}

init();
