// Small page helpers shared by the chat and knowledge-base pages: the error notice and the token field.
import { describeError, getToken, setToken } from "./api.js";

/** Show a readable message in the page's alert region; the page stays usable underneath. */
export function showNotice(message, kind = "error") {
  const box = document.getElementById("notice");
  document.getElementById("notice-text").textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
}

export function showError(err) {
  showNotice(describeError(err), "error");
}

export function hideNotice() {
  document.getElementById("notice").hidden = true;
}

export function initChrome() {
  document.getElementById("notice-close").addEventListener("click", hideNotice);
  const token = document.getElementById("api-token");
  token.value = getToken();
  token.addEventListener("change", () => setToken(token.value.trim()));
}

/** Create an element with a class and text content (text only, never HTML). */
export function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
