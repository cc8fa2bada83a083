// The photo panel of the chat page: pick / drop / camera, preview, POST /detect, boxes and names drawn on a
// canvas laid over the preview, top-k species with confidences, and "tell me about this bird". Where the photo was taken: a region
// picked from the list, or the browser's position asked for only when "use my location" is clicked.
import { postForm, describeError } from "./api.js";
import { h } from "./ui.js";

const ACCEPTED = ["image/jpeg", "image/png", "image/webp", "image/bmp"];
const COLORS = ["#d9480f", "#1971c2", "#2b8a3e", "#9c36b5", "#e67700"];

export function speciesName(sp) {
  const parts = [sp.chinese_name, sp.english_name].filter(Boolean);
  return parts.length ? parts.join(" ") : sp.label;
}

function percent(x) {
  return typeof x === "number" ? `${(x * 100).toFixed(x >= 0.995 || x < 0.1 ? 1 : 0)}%` : "";
}

const LABEL_H = 20;

function overlaps(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

/** Where a box's label goes: above the box, else inside its top edge, else lower inside it, else below it,
 * else the first free row anywhere; always within the canvas and clear of every label in ``placed``. */
export function placeLabel(box, w, width, height, placed) {
  const x = Math.min(Math.max(0, box.x), Math.max(0, width - w));
  const rows = [box.y - LABEL_H, box.y];
  for (let y = box.y + LABEL_H + 1; y + LABEL_H <= box.y + box.h; y += LABEL_H + 1) rows.push(y);
  rows.push(box.y + box.h);
  for (let y = 0; y + LABEL_H <= height; y += LABEL_H + 1) rows.push(y);
  for (const row of rows) {
    const y = Math.min(Math.max(0, row), Math.max(0, height - LABEL_H));
    const rect = { x, y, w, h: LABEL_H };
    if (!placed.some((p) => overlaps(p, rect))) return rect;
  }
  return { x, y: Math.max(0, Math.min(box.y, height - LABEL_H)), w, h: LABEL_H }; // no free row: over the box
}

/** The server's answer when it is not a confident species: "一种鸥 a gull (Larus) 93%, most likely …". */
export function describeAnswer(answer) {
  if (!answer) return "";
  if (answer.rank === "species") {
    return answer.uncertain ? `不太确定，最可能是 ${speciesName(answer)} · Not sure; most likely ${answer.english_name || answer.label} ${percent(answer.confidence)}` : "";
  }
  const zh = answer.chinese_name ? `一种${answer.chinese_name.replace(/[属科]$/, "")}（${answer.chinese_name}）` : `${answer.scientific_name} 的一种`;
  const en = answer.english_name ? `a ${answer.english_name.toLowerCase()} (${answer.scientific_name})` : `a member of ${answer.scientific_name}`;
  const likely = answer.most_likely;
  return `${zh} ${percent(answer.confidence)}，最可能是 ${speciesName(likely)} ${percent(likely.confidence)} · ${en}, most likely ${likely.english_name || likely.label}`;
}

function lookalikeBox(pair) {
  const [a, b] = pair.species;
  const box = h("div", "lookalike");
  box.append(h("strong", null, `易混淆 Look-alikes: ${speciesName(a)} ${percent(a.confidence)} / ${speciesName(b)} ${percent(b.confidence)}`));
  const how = pair.how_to_tell;
  if (how) box.append(h("p", null, how.zh || ""), h("p", "muted", how.en || ""));
  return box;
}

/** Questions to ask about the photo under a detection: they go to the chat with the photo's id. */
export function suggestedQuestions(det) {
  const out = [["有几只鸟？", "图里有几只鸟？"]];
  const pair = det.lookalike && det.lookalike.species;
  const other = pair ? pair[1] : null;
  if (other) {
    const name = other.chinese_name || other.english_name || other.label;
    out.push([`怎么区分它和${name}？`, `怎么区分它和${name}？`]);
  }
  out.push(["在哪里拍的？", "这张照片是在哪里拍的？"]);
  return out;
}

export function initPhoto({ onAsk, onResult, onSuggest }) {
  const zone = document.getElementById("drop-zone");
  const inputs = [document.getElementById("photo-input"), document.getElementById("camera-input")];
  const status = document.getElementById("photo-status");
  const figure = document.getElementById("photo-figure");
  const img = document.getElementById("photo-preview");
  const canvas = document.getElementById("photo-canvas");
  const caption = document.getElementById("photo-caption");
  const list = document.getElementById("detections");
  const regionSelect = document.getElementById("photo-region");
  const geoButton = document.getElementById("photo-geolocate");
  const whereText = document.getElementById("photo-location");
  let result = null;
  let controller = null;
  let objectUrl = null;
  let coords = null; // {lat, lon} from the browser, set only by a click on geoButton

  // The latest choice wins: a region clears the browser position, and the other way round.
  regionSelect.addEventListener("change", () => {
    coords = null;
    whereText.textContent = "";
  });
  geoButton.addEventListener("click", () => {
    if (!navigator.geolocation) {
      whereText.textContent = "这个浏览器不能定位。This browser cannot tell its location.";
      return;
    }
    whereText.textContent = "正在定位… Locating…";
    navigator.geolocation.getCurrentPosition(
      (pos) => {
        coords = { lat: pos.coords.latitude.toFixed(4), lon: pos.coords.longitude.toFixed(4) };
        regionSelect.value = "";
        whereText.textContent = `将使用 Will use ${coords.lat}, ${coords.lon}`;
      },
      (err) => { whereText.textContent = `定位失败 Location failed: ${err.message || err.code}`; },
      { maximumAge: 600000, timeout: 20000 },
    );
  });

  function whereFields() {
    if (coords) return { lat: coords.lat, lon: coords.lon };
    return regionSelect.value ? { region: regionSelect.value } : {};
  }

  function showWhere(loc) {
    if (!loc) {
      whereText.textContent = "未用位置 No location used.";
      return;
    }
    const option = [...regionSelect.options].find((o) => o.value && o.value === loc.region);
    const place = option ? option.textContent : `${Number(loc.lat).toFixed(2)}, ${Number(loc.lon).toFixed(2)}`;
    const source = { form: "你的位置 your position", region: "所选地区 chosen region", exif: "照片 EXIF photo EXIF",
                     default: "服务器默认 server default" }[loc.source] || String(loc.source);
    whereText.textContent = `位置 Location: ${place}（${source}）${loc.date ? ` · ${loc.date}` : ""}`;
  }

  function draw() {
    const ctx = canvas.getContext("2d");
    const width = img.clientWidth;
    const height = img.clientHeight;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    delete canvas.dataset.labels;
    if (!result || !result.is_bird || !result.image || !width) return;
    // Boxes are in the uploaded image's pixels; the preview is scaled to fit the panel.
    const sx = width / result.image.width;
    const sy = height / result.image.height;
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.textBaseline = "top";
    const boxes = result.detections.map((det) => {
      const [x1, y1, x2, y2] = det.box;
      return { x: x1 * sx, y: y1 * sy, w: (x2 - x1) * sx, h: (y2 - y1) * sy };
    });
    ctx.lineWidth = 3;
    boxes.forEach((b, i) => {
      ctx.strokeStyle = COLORS[i % COLORS.length];
      ctx.strokeRect(b.x, b.y, b.w, b.h);
    });
    // Labels after all boxes (so none is drawn over), each where it meets no earlier label: birds in a flock
    // sit close and labels above each box would cover one another.
    const placed = [];
    result.detections.forEach((det, i) => {
      const top = det.species && det.species[0];
      const label = `${i + 1} ${top ? speciesName(top) : "?"} ${top ? percent(top.confidence) : ""}`.trim();
      const rect = placeLabel(boxes[i], ctx.measureText(label).width + 8, width, height, placed);
      placed.push(rect);
      ctx.fillStyle = COLORS[i % COLORS.length];
      ctx.fillRect(rect.x, rect.y, rect.w, rect.h);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, rect.x + 4, rect.y + 3);
    });
    // For the page's tests (and anyone curious): where each box and label went, in CSS pixels.
    const round = (r) => [r.x, r.y, r.w, r.h].map((v) => Math.round(v * 10) / 10);
    canvas.dataset.labels = JSON.stringify(placed.map((r, i) => ({ label: round(r), box: round(boxes[i]) })));
  }

  function renderList() {
    list.replaceChildren();
    if (!result) return;
    if (!result.is_bird) {
      list.append(h("p", "not-bird", "这张照片里没有找到鸟。No bird found in this photo."));
      return;
    }
    result.detections.forEach((det, i) => {
      const card = h("section", "detection");
      card.style.borderColor = COLORS[i % COLORS.length];
      const title = h("h3", null, `鸟 ${i + 1} Bird ${i + 1}`);
      if (det.box_confidence === null || det.box_confidence === undefined) {
        title.append(h("span", "muted", " · 整张照片 whole photo"));
      } else {
        title.append(h("span", "muted", ` · 检测置信度 detection confidence ${percent(det.box_confidence)}`));
      }
      card.append(title);
      const answer = describeAnswer(det.answer);
      if (answer) card.append(h("p", "answer", answer));
      if (det.lookalike) card.append(lookalikeBox(det.lookalike));
      const ol = h("ol", "species-list");
      for (const sp of det.species || []) {
        const li = h("li", "species");
        const name = h("span", "species-name", speciesName(sp));
        if (sp.scientific_name) name.append(" ", h("i", "sci", sp.scientific_name));
        const bar = h("span", "bar");
        const fill = h("span", "bar-fill");
        fill.style.width = `${Math.max(0, Math.min(1, sp.confidence || 0)) * 100}%`;
        bar.append(fill);
        li.append(name, h("span", "conf", percent(sp.confidence)), bar);
        ol.append(li);
      }
      card.append(ol);
      const top = det.species && det.species[0];
      if (top) {
        const ask = h("button", "ask-bird", `介绍这只鸟 Tell me about this bird`);
        ask.type = "button";
        ask.setAttribute("aria-label", `介绍这只鸟：${speciesName(top)} Tell me about ${top.english_name || top.label}`);
        ask.addEventListener("click", () => onAsk(top));
        card.append(ask);
      }
      if (onSuggest && result.photo_id) {
        const row = h("div", "suggestions");
        row.setAttribute("aria-label", "可以问 Suggested questions");
        for (const [label, question] of suggestedQuestions(det)) {
          const b = h("button", "suggest small", label);
          b.type = "button";
          b.dataset.question = question;
          b.addEventListener("click", () => onSuggest(question));
          row.append(b);
        }
        card.append(row);
      }
      list.append(card);
    });
  }

  async function detect(file) {
    if (!file) return;
    if (file.type && !ACCEPTED.includes(file.type)) {
      status.textContent = `不支持的文件类型 Unsupported type: ${file.type}（JPEG/PNG/WebP/BMP）`;
      status.dataset.kind = "error";
      return;
    }
    if (controller) controller.abort();
    controller = new AbortController();
    result = null;
    renderList();
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    img.src = objectUrl;
    figure.hidden = false;
    caption.textContent = file.name || "";
    status.dataset.kind = "busy";
    status.textContent = "正在识别… Identifying…";
    draw();
    try {
      const fields = { image: file, top_k: 5, annotate: 0, ...whereFields() };
      const body = await postForm("/detect", fields, { signal: controller.signal });
      result = body;
      showWhere(body.location);
      const n = body.is_bird ? body.detections.length : 0;
      status.dataset.kind = "done";
      status.textContent = body.is_bird ? `找到 ${n} 只鸟。Found ${n} bird${n === 1 ? "" : "s"}.` : "没有找到鸟。No bird found.";
      renderList();
      if (img.complete) draw();
      if (onResult) onResult(body);
    } catch (err) {
      if (err.name === "AbortError") return;
      figure.hidden = true; // a file the server cannot read would only show as a broken image
      status.dataset.kind = "error";
      status.textContent = `识别失败：${describeError(err)}`;
    }
  }

  img.addEventListener("load", draw);
  new ResizeObserver(draw).observe(img);
  for (const input of inputs) {
    input.addEventListener("change", () => {
      detect(input.files[0]);
      input.value = "";
    });
  }
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = [...(e.dataTransfer.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) detect(file);
    else status.textContent = "请拖入一张图片。Please drop an image file.";
  });
  // Paste a photo from the clipboard anywhere on the page.
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) detect(file);
  });
}
