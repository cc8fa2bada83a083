// A tiny whitelist Markdown renderer for model and document text. It never parses HTML: every piece of
// text becomes a text node, and the only elements it creates are the ones listed below
// (p, br, ul, ol, li, pre, code, strong, em, h4, button for [n] citations). Hostile text such as
// `<img src=x onerror=...>` therefore shows up literally and cannot run.

// Underscore emphasis only at word boundaries, so snake_case names and `window.__x` stay as written.
const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*|(?<!\w)__[^_\n]+__(?!\w))|(\*[^*\s][^*\n]*\*|(?<!\w)_[^_\s][^_\n]*_(?!\w))|(\[\d{1,3}\])/g;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** Inline spans: `code`, **bold**, *italic*, and [n] citation markers (when a citation handler is given). */
function appendInline(parent, text, options) {
  let last = 0;
  // matchAll iterates over a copy of the regex, so the recursion for nested spans cannot reset our position.
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    const token = m[0];
    if (m[1]) {
      const code = el("code");
      code.textContent = token.slice(1, -1);
      parent.append(code);
    } else if (m[2]) {
      const strong = el("strong");
      appendInline(strong, token.slice(2, -2), options);
      parent.append(strong);
    } else if (m[3]) {
      const em = el("em");
      appendInline(em, token.slice(1, -1), options);
      parent.append(em);
    } else {
      const n = Number(token.slice(1, -1));
      if (options.citations && n >= 1 && n <= options.citations) {
        const button = el("button", "cite");
        button.type = "button";
        button.textContent = token;
        button.dataset.cite = String(n);
        button.setAttribute("aria-label", `来源 ${n} Source ${n}`);
        parent.append(button);
      } else {
        parent.append(document.createTextNode(token));
      }
    }
    last = m.index + token.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

const BULLET = /^\s*[-*•]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,3})[.)、]\s+(.*)$/;
const HEADING = /^\s{0,3}#{1,6}\s+(.*)$/;
const FENCE = /^\s*```/;

/**
 * Render `text` into a DocumentFragment.
 * options.citations: how many sources there are; [n] with 1 <= n <= citations becomes a button
 * (data-cite="n") the caller wires to the source snippet.
 */
export function renderMarkdown(text, options = {}) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let paragraph = null;
  let list = null;
  const endBlocks = () => { paragraph = null; list = null; };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (FENCE.test(line)) {
      endBlocks();
      const pre = el("pre");
      const code = el("code");
      const body = [];
      for (i += 1; i < lines.length && !FENCE.test(lines[i]); i++) body.push(lines[i]);
      code.textContent = body.join("\n");
      pre.append(code);
      fragment.append(pre);
      continue;
    }
    if (!line.trim()) { endBlocks(); continue; }
    const heading = HEADING.exec(line);
    if (heading) {
      endBlocks();
      const h = el("h4");
      appendInline(h, heading[1], options);
      fragment.append(h);
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = bullet ? null : NUMBERED.exec(line);
    if (bullet || numbered) {
      const tag = bullet ? "UL" : "OL";
      if (!list || list.tagName !== tag) {
        paragraph = null;
        list = el(tag.toLowerCase());
        if (numbered && numbered[1] !== "1") list.start = Number(numbered[1]);
        fragment.append(list);
      }
      const li = el("li");
      appendInline(li, bullet ? bullet[1] : numbered[2], options);
      list.append(li);
      continue;
    }
    if (list && /^\s{2,}\S/.test(line)) {
      // An indented continuation line belongs to the last list item.
      list.lastChild.append(document.createTextNode(" "));
      appendInline(list.lastChild, line.trim(), options);
      continue;
    }
    list = null;
    if (!paragraph) {
      paragraph = el("p");
      fragment.append(paragraph);
    } else {
      paragraph.append(el("br"));
    }
    appendInline(paragraph, line, options);
  }
  return fragment;
}
