"""Which birds a question names, as the answer should treat them: catalogue species, everyday group names
(喜鹊 → the Pica species), typos above the resolver's threshold, and names the catalogue lacks (said to be
missing, with "did you mean" and the genus/family to answer at), so no answer silently swaps species."""
from __future__ import annotations

import difflib
import re

from .. import segment
from ..species.catalog import has_cjk, normalize
from ..species.names import NameResolver, Resolution
from .extractive import STOPWORDS

# The most species of a group or genus/family whose cards an answer quotes (all are listed by name).
MAX_CARDS = 4
MAX_LISTED = 12
_WORD = re.compile(r"[^\W\d_]+")
# Words for kinds of bird, not names of one: never reported as "not in the catalogue".
GENERIC_ZH = frozenset("鸟 小鸟 大鸟 鸟儿 水鸟 海鸟 候鸟 留鸟 飞鸟 益鸟 野鸟 雏鸟 幼鸟 成鸟 雄鸟 雌鸟 亲鸟 笼鸟 猛禽 鸣禽 "
                       "涉禽 游禽 攀禽 陆禽 家禽 禽 国鸟 省鸟 市鸟 吉祥鸟 神鸟 宠物鸟 观赏鸟 其他鸟 别的鸟".split())
_STOP_CHARS = frozenset("我你他她它些的了吗呢吧啊呀么是在有和与及或这那请给下只种个哪什")


def names_in(resolver: NameResolver, question: str) -> list[Resolution]:
    """Group names and names the catalogue does not hold exactly, in the order the question has them (exact
    catalogue names are ``find_mentions``' job). A name inside a longer unknown word (鹤 in 丹顶鹤) is not
    taken for itself."""
    catalog = resolver.catalog
    found: list[tuple[int, Resolution]] = []
    unknown_spans: list[tuple[int, int]] = []
    norm = normalize(question)
    if has_cjk(question):
        mentions = catalog.find_mentions(norm)
        pos = 0
        for word in _merge_heads(resolver, segment.words(norm)):
            start = norm.find(word, pos)
            pos = start + len(word) if start >= 0 else pos
            if len(word) < 2 or not has_cjk(word) or catalog.lookup(word) is not None:
                continue
            if word in GENERIC_ZH or normalize(word) in resolver.groups or not resolver.is_bird_word(word):
                continue
            if any(a <= start < b for _s, a, b in mentions if b - a >= len(word)):
                continue
            found.append((start, resolver.resolve(word)))
            unknown_spans.append((start, start + len(word)))
    found += _english_names(resolver, norm, question)
    for group, start, end in resolver.find_groups(question):
        if not any(a <= start and end <= b for a, b in unknown_spans):
            found.append((start, resolver.resolve(group.name)))
    return [r for _p, r in sorted(found, key=lambda pr: pr[0])]


def _merge_heads(resolver: NameResolver, words: list[str]) -> list[str]:
    """jieba cuts names it does not know before a lone bird character (渡渡|鸟, 黑脸琵|鹭): join them again."""
    out: list[str] = []
    for word in words:
        if (len(word) == 1 and out and has_cjk(out[-1]) and not set(out[-1]) & _STOP_CHARS
                and resolver.is_bird_word(out[-1] + word)):
            out[-1] += word
        else:
            out.append(word)
    return out


def _original(question: str, window: list[str]) -> str | None:
    """The window as the user wrote it ("Red-crowned Crane"), for the answer to quote."""
    m = re.search(r"[\s\-‐_'’]+".join(map(re.escape, window)), question, re.I)
    return m.group() if m else None


def _english_names(resolver: NameResolver, norm: str, question: str) -> list[tuple[int, Resolution]]:
    """Two- to four-word names ending in a bird word ("crane", or a typo of one: "egle") that the catalogue
    does not hold exactly; the longest such window not starting with a stop word is the name."""
    words = [(m.group(), m.start()) for m in _WORD.finditer(norm) if not has_cjk(m.group())]
    heads = resolver.head_words()
    genera = resolver.genus_words()
    out = []
    for e, (word, _start) in enumerate(words):
        if len(word) < 3 or word in STOPWORDS:
            continue
        latin = e > 0 and len(words[e - 1][0]) >= 4 and difflib.get_close_matches(words[e - 1][0], genera, n=1,
                                                                                   cutoff=0.85)
        if (not latin and word not in heads
                and (len(word) < 4 or not difflib.get_close_matches(word, heads, n=1, cutoff=0.8))):
            continue
        for s in range(max(0, e - 3), e):
            window = [w for w, _p in words[s:e + 1]]
            if any(w in STOPWORDS for w in window):
                continue
            name = " ".join(window)
            if resolver.catalog.lookup(name) is not None or resolver.catalog.find_mentions(name):
                break  # a catalogue name: find_mentions answers it
            original = _original(question, window) or name
            r = resolver.resolve(original)
            # "a big bird" is no name: only a capitalised name is said to be missing; a typo above the
            # threshold is taken either way.
            if r.status in ("exact", "fuzzy") or original[:1].isupper():
                out.append((words[s][1], r))
            break
    return out


def _list(species, lang: str) -> str:
    names = [(s.chinese_name or s.english_name) if lang == "zh" else s.english_name for s in species]
    more = len(names) - MAX_LISTED
    names = names[:MAX_LISTED]
    if lang == "zh":
        return "、".join(names) + (f" 等 {len(species)} 种" if more > 0 else "")
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _display(s, lang: str) -> str:
    if lang == "zh":
        return f"{s.chinese_name}（{s.english_name}）" if s.chinese_name else s.english_name
    return f"{s.english_name} ({s.scientific_name})"


def preface(r: Resolution, lang: str) -> str:
    """What the answer says first about the name: the group it means, or that it is missing."""
    q = r.query
    if r.status == "group":
        g = r.group
        if lang == "zh":
            return f"“{q}”通常指{g.zh}。目录里有：{_list(g.members, lang)}。"
        return f"\"{q}\" usually means {g.en}. This server's species list has: {_list(g.members, lang)}. "
    if r.status == "fuzzy":
        s = r.species
        return (f"按{_display(s, lang)}回答（“{q}”最接近的名称）。" if lang == "zh" else
                f"Answering for the {_display(s, lang)}, the closest name to \"{q}\". ")
    if r.status not in ("suggestions", "missing"):
        return ""
    parts = []
    if lang == "zh":
        parts.append(f"目录里没有{q}。")
        if r.suggestions:
            parts.append(f"你是不是想问：{'、'.join(_display(s, lang) for s in r.suggestions[:3])}？")
        if r.taxon:
            t = r.taxon
            level = t.name_zh or (f"{t.name}属" if t.rank == "genus" else t.name)
            parts.append(f"它应属于{level}（{t.name}），目录里的同{'属' if t.rank == 'genus' else '科'}鸟种有："
                         f"{_list(t.members, lang)}；以下资料出自这些鸟种，不是{q}本身。")
        return "".join(parts)
    parts.append(f"{q} is not in this server's species list.")
    if r.suggestions:
        parts.append(f" Did you mean: {'; '.join(_display(s, lang) for s in r.suggestions[:3])}?")
    if r.taxon:
        t = r.taxon
        parts.append(f" It belongs to the {t.rank} {t.name}; the list has: {_list(t.members, lang)}. What follows"
                     f" is about those species, not {q} itself.")
    return "".join(parts) + " "


def focus_of(r: Resolution) -> list:
    """The catalogue species whose cards answer for this name."""
    if r.status in ("exact", "fuzzy"):
        return [r.species]
    if r.status == "group":
        return list(r.group.members[:MAX_CARDS])
    if r.taxon:
        return list(r.taxon.members[:MAX_CARDS])
    return []
