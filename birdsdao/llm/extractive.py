"""The default, weight-free backend: answers by quoting the most relevant sentences of the sources, each cited
[n]; it writes no claim of its own and never quotes sentences that address the assistant."""
from __future__ import annotations

import logging
import math
import re
import threading
from typing import Iterator

from ..config import DEFAULTS
from .. import segment
from ..segment import search_words
from .base import Backend, Limits, Passage, Prompt, has_cjk

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=\.)\s+(?=[A-Z0-9\"'(])|\n+")
_MARKDOWN_PREFIX = re.compile(r"^\s*(?:#{1,6}\s*|[-*+]\s+|\d+[.)]\s+|>\s*)")
# Only paired emphasis/code markers are Markdown; a lone "__" (window.__x, snake__case) is the document's text.
_MARKDOWN_PAIR = re.compile(r"(\*\*|__|`)(\S(?:.*?\S)?)\1")
_LATIN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Text that speaks to the assistant instead of about birds: kept out of answers (prompt injection).
_INJECTION = re.compile(
    r"ignore (?:all |the )?(?:previous|prior|above|earlier) (?:instructions|prompts?)|disregard (?:all |the )?"
    r"(?:previous|above) |system prompt|you are now|new instructions|忽略(?:之前|以上|上面|前面|先前)?(?:的)?(?:所有)?"
    r"(?:指令|指示|要求|提示)|无视(?:之前|以上)|系统提示|你现在是", re.I)
STOPWORDS = frozenset(
    "的 了 吗 呢 吧 啊 呀 么 是 在 有 和 与 及 或 它 它们 他 她 这 那 这个 那个 这种 那种 什么 怎么 怎样 如何 为什么 哪 哪个 哪些 哪里 "
    "吗？ 一 一种 种 只 个 请 告诉 我 你 介绍 一下 关于 可以 能 会 多少 几 ？ ? ， , 。 . ！ ! 、 ： : the a an is are was "
    "were be of to in on for and or what which who whom how why where when does do did it its this that these "
    "those about tell me please describe can could would you i my with as by from 些 一些 知识 了解 讲讲 说说 谈谈 "
    "信息 吧 呀 下 给 know something some".split())
# Where a bird lives is answered by sentences naming places and habitats.
_PLACES = ("荒漠", "森林", "林", "湿地", "草原", "草地", "海岸", "沿海", "山地", "山区", "灌丛", "热带", "沼泽", "湖",
           "河", "海", "岛", "洲", "美洲", "非洲", "亚洲", "欧洲", "澳大利亚", "中国", "北美", "南美", "特有",
           "forest", "wetland", "desert", "grassland", "coast", "island", "mountain")
_STOP_CHARS = frozenset("我你他她它些的了吗呢吧啊呀么是在有和与及或这那请给下")
# Question words that name a topic the cards word differently ("它吃什么" -> the diet sentence).
EXPANSIONS = {
    "吃": ("食", "捕食", "觅食", "食物"), "食物": ("食", "捕食", "觅食"), "食性": ("食", "捕食"),
    "哪里": ("分布", "栖息", "生活", "见于") + _PLACES, "住": ("栖息", "分布") + _PLACES,
    "分布": ("栖息", "见于") + _PLACES, "生活": ("栖息",) + _PLACES,
    "多大": ("体长", "翼展", "体重"), "大小": ("体长", "翼展", "体重"), "多重": ("体重",), "多长": ("体长",),
    "叫声": ("鸣叫", "鸣声", "叫"), "叫": ("鸣",), "保护": ("保护级别", "IUCN", "濒危", "无危"),
    "濒危": ("保护级别", "IUCN"), "科": ("科",), "目": ("目",), "学名": ("学名",), "英文": ("英文名",),
    "繁殖": ("巢", "产卵", "繁殖期"), "巢": ("繁殖", "产卵"), "迁徙": ("迁", "越冬", "繁殖地"),
    "长什么样": ("羽", "体长", "特征", "外形"), "样子": ("羽", "特征", "外形"), "特征": ("羽", "外形"),
    # English questions also reach Chinese-only descriptions (many cards have no English text).
    "eat": ("diet", "food", "feeds", "prey", "食"), "food": ("diet", "feeds", "prey", "食"),
    "diet": ("feeds", "prey", "食"),
    "where": ("range", "habitat", "distribution", "found", "分布", "栖息", "生活") + _PLACES,
    "live": ("habitat", "range", "found", "分布", "栖息", "生活") + _PLACES,
    "big": ("length", "wingspan", "weight"), "size": ("length", "wingspan", "weight"),
    "sound": ("call", "song", "voice"), "call": ("song", "voice"), "endangered": ("iucn", "status"),
    "status": ("iucn", "conservation"), "family": ("family",), "order": ("order",),
    "look": ("plumage", "feathers", "appearance"), "nest": ("breeding", "eggs"), "breed": ("nest", "eggs"),
}
NOT_MENTIONED = {
    "zh": "资料中没有提到这一点。资料中关于它的记载：",
    "en": "The documents do not mention this. What they do say:",
}
NOTHING = {
    "zh": "资料中没有找到与这个问题相关的内容。",
    "en": "The documents contain nothing relevant to this question.",
}


def terms(text: str) -> list[str]:
    """Query terms: jieba words for Chinese, lower-cased words for Latin script, minus stop words."""
    out: list[str] = []
    for token in search_words(text):
        token = token.strip().lower()
        if not token or token in STOPWORDS:
            continue
        if has_cjk(token):
            if not set(token) <= _STOP_CHARS:  # jieba glues particles ("我些"): not a topic
                out.append(token)
        else:
            out.extend(w for w in _LATIN.findall(token) if w not in STOPWORDS)
    expanded = list(out)
    for token in out:
        expanded.extend(EXPANSIONS.get(token, ()))
    return list(dict.fromkeys(expanded))


_HEADING = re.compile(r"^\s*#{1,6}\s.*$", re.M)
# Provenance lines ("来源：…") describe where facts come from; they answer nothing.
_PROVENANCE = re.compile(r"^\s*(?:来源|Sources?)\s*[:：].*$", re.M | re.I)


_FAMILY_SECTION = re.compile(r"科级概述|family overview", re.I)
FAMILY_LABEL = {"zh": "（科的共同特征）", "en": "(family trait) "}


def split_sections(text: str) -> list[tuple[str, bool]]:
    """(sentence, from a family-level overview?) for a passage. Headings are titles, not statements: they
    are left out, but a sentence under a family overview heading is marked so the answer can say it is
    about the family, not necessarily this species."""
    out = []
    family = False
    for block in re.split(r"^(\s*#{1,6}\s.*)$", _PROVENANCE.sub("", text), flags=re.M):
        if _HEADING.match(block):
            family = bool(_FAMILY_SECTION.search(block))
            continue
        for raw in _SENTENCE_END.split(block):
            if not raw:
                continue
            sentence = _MARKDOWN_PAIR.sub(r"\2", _MARKDOWN_PREFIX.sub("", raw)).strip()
            if len(sentence) >= 4 and re.search(r"\w", sentence):
                out.append((sentence, family))
    return out


def split_sentences(text: str) -> list[str]:
    return [sentence for sentence, _ in split_sections(text)]


class ExtractiveBackend(Backend):
    kind = "retrieval-only"
    generative = False
    local = False  # pure Python over a few passages: no model to serialise on

    def __init__(self, name: str, embedder=None, max_sentences: int = DEFAULTS["EXTRACTIVE_MAX_SENTENCES"],
                 max_chars: int = 600):
        super().__init__(name, context_window=0)
        self.embedder = embedder
        self.max_sentences = max_sentences
        self.max_chars = max_chars
        self._cache: dict[str, list[float]] = {}
        self._cache_lock = threading.Lock()
        segment.jieba()  # load the dictionary now, not on the first question

    def describe(self) -> dict:
        return {"embedder": self.embedder is not None}

    # --- selection ------------------------------------------------------------------------------
    def select(self, prompt: Prompt) -> tuple[list[tuple[str, Passage, bool]], bool]:
        """(the chosen (sentence, passage, from a family overview?), best first; whether they answer the
        question)."""
        query = prompt.search_query or prompt.question
        candidates: list[tuple[str, Passage, int, bool]] = []
        for passage in prompt.passages:
            for position, (sentence, family) in enumerate(split_sections(passage.text)):
                if not _INJECTION.search(sentence):
                    candidates.append((sentence, passage, position, family))
        if not candidates:
            return [], False
        query_terms = terms(query)
        subject = [s for s in prompt.subject_terms if s]
        # A term inside the subject's own names ("白头海雕", "eagle") says which bird, not what about it.
        is_subject = {t: any(t in name for name in subject) for t in query_terms}
        topic_terms = [t for t in query_terms if not is_subject[t]]
        # Answer in the question's language when those sentences cover the question; else quote the other.
        want_cjk = prompt.lang == "zh"
        same_lang = [c for c in candidates if has_cjk(c[0]) == want_cjk]
        if same_lang and (not topic_terms or any(t in c[0].lower() for t in topic_terms for c in same_lang)
                          or not any(t in c[0].lower() for t in topic_terms for c in candidates)):
            candidates = same_lang
        lowered = [c[0].lower() for c in candidates]
        n = len(candidates)
        idf = {t: math.log(1 + n / (1 + sum(t in s for s in lowered))) for t in query_terms}
        answered = not topic_terms or any(t in low for t in topic_terms for low in lowered)
        if not answered:
            # The documents do not speak about what was asked: say so (stream() does), then offer only the
            # two leading facts about the subject, never sentences dressed up as an answer.
            about = [(c[0], c[1], c[3]) for c, low in zip(candidates, lowered) if any(n in low for n in subject)]
            return about[:2], False
        scores = []
        for (sentence, passage, position, _family), low in zip(candidates, lowered):
            overlap = sum(idf[t] * (1 + 0.1 * min(len(t), 4)) * (0.3 if is_subject[t] else 1.0)
                          for t in query_terms if t in low)
            # Small priors: better-ranked passage, earlier sentence (summaries come first), not too long.
            prior = 0.3 / passage.number + 0.2 / (1 + position) - 0.001 * max(0, len(sentence) - 120)
            scores.append(overlap + prior)
        order = sorted(range(n), key=lambda i: -scores[i])
        if topic_terms:  # only sentences about what was asked; naming the bird alone is not an answer
            order = [i for i in order if any(t in lowered[i] for t in topic_terms)]
        order = self._rerank(query, candidates, order, scores)
        chosen: list[tuple[str, Passage, bool]] = []
        used = 0
        best = scores[order[0]]
        for i in order:
            sentence, passage, _, family = candidates[i]
            if any(sentence == c[0] for c in chosen):
                continue  # a family overview shared by several cards of the answer: quoted once
            if len(chosen) >= self.max_sentences or (chosen and used + len(sentence) > self.max_chars):
                break
            # Stop at sentences far weaker than the best one (they are filler, not answer).
            if chosen and best > 1 and scores[i] < 0.35 * best:
                break
            chosen.append((sentence, passage, family))
            used += len(sentence)
        return chosen, True

    def _rerank(self, query, candidates, order, scores):
        """With the embedder service: mix cosine similarity into the top lexical candidates."""
        if self.embedder is None:
            return order
        top = order[:12]
        try:
            q, vectors = self._vectors(query, [candidates[i][0] for i in top])
        except Exception:  # the embedder is an optional refinement, never a reason to fail an answer
            log.exception("embedder failed; lexical ranking only")
            return order
        top_lex = max(scores[i] for i in top) or 1.0
        for i, v in zip(top, vectors):
            scores[i] = scores[i] / top_lex + float(sum(a * b for a, b in zip(q, v)))  # unit vectors: cosine
        return sorted(top, key=lambda i: -scores[i]) + order[12:]

    def _vectors(self, query: str, sentences: list[str]):
        """Query and sentence vectors (L2-normalised); card sentences recur, so their vectors are cached."""
        model = self.embedder.get() if hasattr(self.embedder, "get") else self.embedder
        with self._cache_lock:
            known = {s: self._cache[s] for s in sentences if s in self._cache}
        missing = [s for s in dict.fromkeys(sentences) if s not in known]
        if missing:
            known.update(zip(missing, model.embed_documents(missing)))
            with self._cache_lock:
                self._cache.update((s, known[s]) for s in missing)
                while len(self._cache) > 20_000:
                    self._cache.pop(next(iter(self._cache)))
        return model.embed_query(query), [known[s] for s in sentences]

    # --- the interface ---------------------------------------------------------------------------
    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        chosen, answered = self.select(prompt)
        if not answered:
            yield NOTHING[prompt.lang] if not chosen else NOT_MENTIONED[prompt.lang]
        sep = "" if prompt.lang == "zh" else " "
        for i, (sentence, passage, family) in enumerate(chosen):
            if limits.expired():
                return
            end = "" if sentence[-1] in "。！？.!?；;：:" else ("。" if prompt.lang == "zh" else ".")
            label = FAMILY_LABEL[prompt.lang] if family else ""
            yield f"{sep if i or not answered else ''}{label}{sentence}{end}[{passage.number}]"


def create(name: str, config, services) -> ExtractiveBackend:
    return ExtractiveBackend(name, embedder=services.optional("embedder") if config["EXTRACTIVE_EMBEDDER"] else None,
                             max_sentences=int(config["EXTRACTIVE_MAX_SENTENCES"]))
