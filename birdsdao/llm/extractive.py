"""The default, weight-free backend: answers by quoting the most relevant sentences of the sources, each cited
[n]; it writes no claim of its own and never quotes sentences that address the assistant."""
from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Iterator

from ..config import DEFAULTS
from .. import segment
from ..kb.search import is_cjk_text
from ..kb.species_kb import SPECIES_KB
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
    "信息 吧 呀 下 给 know something some 真的 是不是 有没有 会不会 能不能".split())
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
NOTHING = {
    "zh": "资料中没有找到与这个问题相关的内容。",
    "en": "The documents contain nothing relevant to this question.",
}
# A retrieved passage in the other language may hold the answer, but word matching cannot tell: say where it is.
OTHER_LANGUAGE = {"zh": "另有英文资料可能相关（本回答方式只能摘录与问题同语言的句子），见[{n}]。",
                  "en": " A Chinese passage may answer it (this answering mode only quotes sentences in the question's "
                        "language): see [{n}]."}
# "资料中没有关于寿命的记载。" -- said instead of quoting a sentence that only names the bird.
NOT_FOUND = {"zh": "资料中没有关于{topic}的记载。", "en": "The sources say nothing about {topic}."}


@dataclass(frozen=True)
class Intent:
    """A kind of question and what a sentence must contain to answer it (a sentence that only names the
    subject is not an answer: "喜鹊能活多久" needs a lifespan, not the magpie's family)."""

    name: str
    ask: re.Pattern
    needs: re.Pattern
    zh: str
    en: str


def _re(words: str) -> re.Pattern:
    return re.compile(words, re.I)


_PLACE_WORDS = "|".join(_PLACES)
_LOOKS = (r"羽|色|斑|纹|嘴|喙|冠|尾|翅|翼|眉|喉|脚|腿|头|体长|厘米|体型|大|小|plumage|feather|white|black|brown|red|"
          r"gr[ae]y|yellow|blue|green|bill|beak|crest|tail|wing|head|throat|legs?|larger|smaller|bigger|size|length|cm")
INTENTS = (
    Intent("compare", _re(r"区别|区分|分辨|辨别|辨认|不同|差别|差异|异同|分清|怎么分|像不像|\bvs\.?(?=\s|$)|versus|"
                          r"differen|compare|comparison|tell\b.*\bapart|distinguish|which is (?:bigger|larger)"),
           _re(_LOOKS + r"|叫声|\bcalls?\b|\bsong|分布|\brange\b"), "两者的区别", "how they differ"),
    Intent("lifespan", _re(r"寿命|活多久|能活|活多少|活几|多少岁|几岁|lifespan|life span|longevity|how long\b.*\blive|"
                           r"how old|live for how long"),
           _re(r"寿命|\d\s*岁|存活|活到|长寿|lifespan|life span|longevity|years? old|\blive[sd]?\b[^.]{0,20}\d+\s*years"),
           "寿命", "its lifespan"),
    Intent("size", _re(r"多大|多长|多重|大小|体长|翼展|体重|个头|体型|更大|更小|谁大|哪个大|how big|how large|\bsize\b|"
                       r"how long is|how long are|\blength\b|wingspan|weigh|how heavy|how tall|bigger|larger|smaller"),
           _re(r"厘米|公分|毫米|\d\s*米|公斤|千克|\d\s*克|体长|翼展|体重|体型|\bcm\b|\bkg\b|\d\s*g\b|length|wingspan|"
               r"weigh|inches|最大|最小|最重|largest|smallest|heaviest|-sized|sized\b"), "体型大小", "its size"),
    Intent("speed", _re(r"多快|速度|时速|how fast|\bspeed"), _re(r"速度|时速|公里|\bkm\b|mph|最快|fastest|speed"),
           "速度", "its speed"),
    Intent("hunt", _re(r"捕鱼|捕猎|狩猎|抓鱼|猎物|怎么捕|怎么抓|\bhunts?\b|hunting|\bcatch"),
           _re(r"捕|猎|抓|扎|俯冲|刺|听觉|\bhunts?\b|hunting|\bcatch|prey|dives?\b"), "捕食方式", "how it hunts"),
    Intent("diet", _re(r"吃|食物|食性|觅食|捕食|为食|\beats?\b|\beating\b|diet|\bfood\b|\bfeeds?\b|\bprey\b"),
           _re(r"食|吃|捕|啄|虫|鼠|鱼|蛙|虾|谷|种子|草籽|果|植物|橡子|diet|\bfeeds?\b|\beats?\b|prey|fish|insects?|"
               r"seeds?|carrion|omnivor|nectar|fruit"), "食性", "its diet"),
    Intent("nest", _re(r"巢|窝|\bnests?\b|nesting"), _re(r"巢|窝|\bnests?\b|nesting"), "筑巢", "its nest"),
    Intent("breeding", _re(r"繁殖|产卵|下蛋|蛋|孵|育雏|\bbreed|\beggs?\b|chicks?"),
           _re(r"繁殖|产卵|卵|蛋|孵|育雏|巢|\bbreed|\beggs?\b|chicks?|clutch"), "繁殖", "its breeding"),
    Intent("dive", _re(r"潜水|潜多|多深|\bdives?\b|diving|how deep"), _re(r"潜|深|\bdives?\b|diving|deep"),
           "潜水", "diving"),
    Intent("flight", _re(r"会飞|能飞|飞吗|\bfly\b|\bflight|flightless"), _re(r"飞|\bfly\b|flight|flightless"),
           "飞行", "flight"),
    Intent("habitat", _re(r"哪里|哪儿|在哪|分布|栖息|生活在|住在|见到|哪些地方|where|habitat|\brange\b|distribut|"
                          r"found in|live in|lives in"),
           _re(r"分布|栖息|见于|生活于|生活在|常见于|繁殖于|越冬|特有|" + _PLACE_WORDS + r"|habitat|\brange\b|found|"
               r"\blives?\b|native|forests?|wetlands?|coasts?|rivers?|lakes?|america|europe|asia|africa|australia"),
           "分布和栖息地", "where it lives"),
    Intent("voice", _re(r"叫声|鸣声|鸣叫|怎么叫|叫起来|唱歌|鸟叫|模仿|\bsounds?\b|\bcalls?\b|\bsong\b|\bsings?\b|"
                        r"voice|mimic"),
           _re(r"叫|鸣|唱|声|模仿|mimic|\bcalls?\b|song|voice|\bsings?\b|croak|whistle|kraa|kronk|gronk|caw"), "叫声",
           "its voice"),
    Intent("migration", _re(r"迁徙|迁移|候鸟|留鸟|越冬|过冬|冬天|冬季|migrat|winter"),
           _re(r"迁|越冬|冬季|候鸟|留鸟|migrat|winter"), "迁徙", "migration"),
    Intent("status", _re(r"保护(?:动物|级别|等级|状况|鸟)|几级保护|濒危|受胁|iucn|珍稀|灭绝|endanger|threat|conservation|"
                         r"\bstatus\b|extinct|protected"),
           _re(r"iucn|受胁|保护|濒危|无危|近危|易危|极危|灭绝|status|endanger|threat|protect"), "保护状况",
           "its conservation status"),
    Intent("taxonomy", _re(r"哪个科|什么科|哪一科|哪个目|什么目|哪一目|科属|分类|哪个属|\bfamily\b|\border\b|genus|"
                           r"classif"),
           _re(r"科|目|属|family|order|genus|formes\b|idae\b"), "分类", "its classification"),
    Intent("name", _re(r"学名|英文名|拉丁名|英文叫|中文名|叫什么名|scientific name|latin name|english name|"
                       r"chinese name|called in"),
           _re(r"学名|英文名|中文名|其他名称|scientific|called"), "名称", "its names"),
    Intent("looks", _re(r"长什么样|样子|外形|外观|特征|羽色|颜色|什么色|识别|认出|look like|looks like|appearance|"
                        r"plumage|colou?r|identify|features?"), _re(_LOOKS), "外形", "what it looks like"),
)


# A kind that makes another one only a modifier: "在哪里筑巢" asks for the nest, "寿命有多长" for a lifespan.
_OVERRIDES = {"compare": "*", "lifespan": "*", "hunt": ("diet",),
              **{k: ("habitat", "looks") for k in ("nest", "breeding", "migration", "diet", "voice", "size", "dive",
                                                   "flight", "speed")}}


def _strip(text: str, names: list[str]) -> str:
    for name in names:
        text = text.replace(name, " ")
    return text


def intents_of(question: str) -> list[Intent]:
    """The kinds of thing a question asks (none for "介绍一下白头海雕": any fact about it answers); a sentence
    answers when it holds what any of them needs (one holding what all need is preferred)."""
    found = [i for i in INTENTS if i.ask.search(question)]
    for intent in list(found):
        drops = _OVERRIDES.get(intent.name, ())
        found = [i for i in found if i is intent or not (drops == "*" or i.name in drops)]
    return found


def is_comparison(question: str) -> bool:
    return bool(INTENTS[0].ask.search(question))


def terms(text: str) -> list[str]:
    """Query terms: jieba words for Chinese, lower-cased words for Latin script, minus stop words, plus the
    words the cards use for their topics (EXPANSIONS)."""
    out = base_terms(text)
    expanded = list(out)
    for token in out:
        expanded.extend(EXPANSIONS.get(token, ()))
    return list(dict.fromkeys(expanded))


def base_terms(text: str) -> list[str]:
    """``terms`` without the expansions: the words the question itself used."""
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
    return list(dict.fromkeys(out))


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
        question). Only sentences that answer are chosen: ones holding what the question's kind needs
        (INTENTS), else ones covering at least half of its topic words; none of them: nothing is quoted."""
        query = prompt.search_query or prompt.question
        candidates: list[tuple[str, Passage, int, bool]] = []
        for passage in prompt.passages:
            for position, (sentence, family) in enumerate(split_sections(passage.text)):
                if not _INJECTION.search(sentence):
                    candidates.append((sentence, passage, position, family))
        if not candidates:
            return [], False
        intents = intents_of(prompt.question)
        query_terms = terms(query)
        subject = [s for s in prompt.subject_terms if s]
        # A term inside the subject's own names ("白头海雕", "eagle") says which bird, not what about it.
        is_subject = {t: any(t in name for name in subject) for t in query_terms}
        groups = [(t, *EXPANSIONS.get(t, ())) for t in base_terms(prompt.question)
                  if t in is_subject and not is_subject[t]]
        need = max(1, -(-len(groups) // 2))

        names = sorted({n for n in subject if len(n) > 1}, key=len, reverse=True)

        def answers(sentence: str, low: str) -> bool:
            if intents:
                # The subject's own name is no content ("小嘴乌鸦" holds 小, "Sandhill Crane" a place word).
                low = _strip(low, names)
                return any(i.needs.search(low) for i in intents)
            return not groups or sum(any(a in low for a in g) for g in groups) >= need

        lowered = [c[0].lower() for c in candidates]
        ok = [answers(c[0], low) for c, low in zip(candidates, lowered)]
        if len(intents) > 1:  # "蛋有多大": the sentences about the egg's size, when there are some
            every = [ok[i] and all(x.needs.search(_strip(lowered[i], names)) for x in intents) for i in range(len(ok))]
            ok = every if any(every) else ok
        if any(o and not c[3] for o, c in zip(ok, candidates)):
            # The species' own sentences answer: its family's shared traits would only pad the answer.
            ok = [o and not c[3] for o, c in zip(ok, candidates)]
        # Per source, answer in the question's language when its sentences there answer; else quote the other
        # language's (an English question over a card described in Chinese, a Chinese one over an English page).
        want_cjk = prompt.lang == "zh"
        keep = []
        for passage in prompt.passages:
            mine = [i for i, c in enumerate(candidates) if ok[i] and c[1] is passage]
            keep += [i for i in mine if has_cjk(candidates[i][0]) == want_cjk] or mine
        if not keep:
            return [], False
        n = len(candidates)
        idf = {t: math.log(1 + n / (1 + sum(t in s for s in lowered))) for t in query_terms}
        scores = {}
        for i in keep:
            (sentence, passage, position, _family), low = candidates[i], lowered[i]
            overlap = sum(idf[t] * (1 + 0.1 * min(len(t), 4)) * (0.3 if is_subject[t] else 1.0)
                          for t in query_terms if t in low)
            hits = sum(len(i_.needs.findall(sentence)) for i_ in intents)
            # Small priors: better-ranked passage, earlier sentence (summaries come first), not too long.
            prior = 0.3 / max(passage.number, 1) + 0.2 / (1 + position) - 0.001 * max(0, len(sentence) - 120)
            scores[i] = overlap + 0.5 * min(hits, 4) + prior
        order = sorted(keep, key=lambda i: -scores[i])
        order = self._rerank(query, candidates, order, scores)
        pinned: set[int] = set()
        if intents and intents[0].name == "compare":
            order, pinned = self._compare_order(candidates, order)
        chosen: list[tuple[str, Passage, bool]] = []
        used = 0
        best = scores[order[0]]
        for i in order:
            sentence, passage, _, family = candidates[i]
            flat = re.sub(r"\s+", "", sentence)
            if any(flat in re.sub(r"\s+", "", c[0]) or re.sub(r"\s+", "", c[0]) in flat for c in chosen):
                continue  # said already (a family overview shared by cards, a chunk overlap's fragment)
            if pinned:  # a comparison: the pinned sentences (one per source, a handful), nothing else
                if i not in pinned:
                    break
            elif len(chosen) >= self.max_sentences or (chosen and used + len(sentence) > self.max_chars):
                break
            elif chosen and best > 1 and scores[i] < 0.5 * best:
                break  # far weaker than the best one: filler, not answer
            chosen.append((sentence, passage, family))
            used += len(sentence)
        return chosen, True

    @staticmethod
    def _compare_order(candidates, order) -> tuple[list[int], set[int]]:
        """A comparison: the look-alike line first, then the best sentence of each bird's card, and only those."""
        first, seen = [], set()
        for i in order:
            passage = candidates[i][1]
            key = "lookalike" if passage.score_kind == "lookalike" else passage.species_id or passage.doc_name
            if key == "lookalike" or key not in seen:
                first.append(i)
                seen.add(key)
        first.sort(key=lambda i: candidates[i][1].score_kind != "lookalike")
        return first, set(first)

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
            intents = intents_of(prompt.question)
            topic = getattr(intents[0], prompt.lang) if intents and prompt.passages else None
            yield NOT_FOUND[prompt.lang].format(topic=topic) if topic else NOTHING[prompt.lang]
            # (Not for the species cards: Chinese text with English names, quoted across languages above.)
            other = [p for p in prompt.passages if p.kb_name != SPECIES_KB and p.score_kind not in ("card", "lookalike")
                     and is_cjk_text(p.text) != (prompt.lang == "zh")]
            if other:
                yield OTHER_LANGUAGE[prompt.lang].format(n=other[0].number)
            return
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
