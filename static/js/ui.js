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

// What a source's ``score`` is, by the search that made it (birdsdao/kb/search.py fuse()): none is a percentage.
const SCORE_KINDS = {
  rrf: ["融合分数", "RRF", (s) => s.toFixed(3),
    "倒数排名融合：语义与关键词两个排名的 1/(60+名次) 之和，最高约 0.033 · reciprocal-rank fusion of the meaning and keyword rankings, Σ 1/(60+rank), at most ≈0.033"],
  vector: ["语义相似度", "cosine", (s) => s.toFixed(3),
    "向量余弦相似度，−1 到 1 · cosine similarity of the embeddings, −1 to 1"],
  bm25: ["关键词分数", "BM25", (s) => s.toFixed(2), "BM25 关键词匹配分数，没有上限 · BM25 keyword-match score, unbounded"],
  weighted: ["加权分数", "weighted", (s) => s.toFixed(3),
    "余弦相似度 + 0.3 × 关键词分数（相对最佳） · cosine similarity + 0.3 × BM25 relative to the best match"],
};

/** {short, long} words for a source's score: short beside a source in a list ("RRF 0.031"), long in its dialog
 * ("融合分数 RRF 0.031（…; higher is better, not a percentage）"). A species card found by name has no score. */
export function describeScore(src) {
  if (src.score_kind === "card") {
    return { short: "物种卡片 card", long: "物种卡片：按鸟名直接选取，未经搜索打分 · species card picked by the bird's name, not scored by a search" };
  }
  if (typeof src.score !== "number") return null;
  const [zh, en, format, what] = SCORE_KINDS[src.score_kind] || ["相关度分数", "relevance score", (s) => s.toFixed(3), ""];
  const value = format(src.score);
  const note = `${what ? `${what}；` : ""}越高越相关，不是百分比 · higher is better, not a percentage`;
  return { short: `${en} ${value}`, long: `${zh} ${en} ${value}（${note}）` };
}

/** "#2 of 5": where a source stands among its list by score (ties share a rank), or null without scores. */
export function scoreRank(src, sources) {
  if (typeof src.score !== "number" || src.score_kind === "card") return null;
  const scored = sources.filter((s) => typeof s.score === "number" && s.score_kind === src.score_kind);
  const rank = 1 + scored.filter((s) => s.score > src.score).length;
  return { rank, of: scored.length };
}
