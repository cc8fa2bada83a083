"""What the server saw in a photo, as words: the composed description that grounds answers about a photo
(counts per species, positions in words, each bird's top species and confidence with the runner-up when
close, "not a bird", EXIF date/season, camera, place), the questions it answers directly for the
retrieval-only backend (counts, positions, place, date/season, camera, species, sex), the caption and the
KE1-KE3 extraction over a photo.

It reads the photo record that ``birdsdao.vision.photos.photo_record`` wrote (plain JSON), so this package
never imports ``vision``. Nothing here says more than the record holds: what was not seen (sex, behaviour,
age) is said to be unknown unless a species card states it, and then it is quoted as the card's."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Passage

PHOTO_KB = "photo"  # the kb_name of the description passage among an answer's sources

KINDS = ("sex", "compare", "position", "count", "place", "date", "camera", "species")
_KIND_WORDS = {
    "sex": r"雄|雌|公的|母的|公鸟|母鸟|\bmale\b|\bfemale\b|\bsex\b",
    "compare": r"区分|区别|分辨|分清|不同|\btell (?:them |it )?apart\b|\bdifference\b|\bdistinguish\b",
    "position": r"左|右|哪一边|哪边|哪一侧|哪侧|\bwhich side\b|中间|中央|正中|最大|最小|最近|最远|前面|后面|上面|下面|上方|下方|\bleft|\bright\b|\bmiddle\b|"
                r"\bcent(?:re|er)\b|\bbiggest\b|\blargest\b|\bsmallest\b|\bnearest\b|\bclosest\b|\bfront\b",
    "count": r"几只|多少只|多少个|几个|数量|多少鸟|\bhow many\b|\bnumber of\b|\bcount\b",
    "place": r"哪里|哪儿|在哪|地点|什么地方|位置|\bwhere\b|\bplace\b|\blocation\b",
    "date": r"什么时候|何时|时间|日期|哪天|几月|季节|\bwhen\b|\bdate\b|\bseason\b|\bmonth\b",
    "camera": r"相机|设备|\bcamera\b",
    "species": r"什么鸟|哪种|什么种|是什么|品种|物种|\bwhat bird\b|\bwhich bird\b|\bwhat species\b|\bwhich species\b|"
               r"\bwhat is\b|\bwhat's\b|\bwhat are\b",
}
_KIND_RE = {k: re.compile(v, re.I) for k, v in _KIND_WORDS.items()}
# "它在哪里分布？" asks the card, not the photo, unless the photo is named too.
_CARD_TOPIC = re.compile(r"分布|栖息|迁徙|繁殖|生活在|过冬|越冬|\bwinters?\b|\brange\b|\bhabitat|\bmigrat|\bbreed|\blives?\b", re.I)
_PHOTO_WORD = re.compile(r"拍|照片|图|画面|\bphoto|\bpicture|\bimage|\btaken\b|\bshot\b", re.I)
_SEX_SENTENCE = re.compile(r"雄|雌|\bmales?\b|\bfemales?\b|\bsexes\b", re.I)
_SEASON_SENTENCE = re.compile(r"冬|夏|春|秋|迁|留鸟|候鸟|繁殖|\bwinters?\b|\bsummers?\b|\bmigrat(?:es?|ion|ing|ory)\b|"
                              r"\bresident\b|\bbreeds?\b|\bbreeding\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=\.)\s+|\n+")

SEASONS = {"zh": ("冬季", "春季", "夏季", "秋季"), "en": ("winter", "spring", "summer", "autumn")}
LABEL = {"zh": "（据照片识别结果）", "en": "(from what the server saw in the photo) "}


@dataclass
class Bird:
    number: int  # 1-based, as /detect lists it
    names: dict  # the answer's names: species, or the genus/family when no species is sure enough
    rank: str
    confidence: float
    runner_up: dict | None
    cx: float  # box centre, as a fraction of the image's width / height
    cy: float
    area: float  # box area / image area
    whole_image: bool
    box: tuple = (0.0, 0.0, 0.0, 0.0)
    box_confidence: float = 0.0
    lookalike: dict | None = None  # /detect's look-alike pair: both species and how_to_tell {zh, en}
    same_as: int | None = None  # the number of the bird whose box holds this one's (same species): one bird

    def name(self, lang: str) -> str:
        n = self.names
        if lang == "zh":
            return n.get("chinese_name") or n.get("english_name") or n.get("scientific_name") or n.get("label") or "?"
        return n.get("english_name") or n.get("scientific_name") or n.get("label") or "?"

    def key(self) -> str:
        return self.names.get("scientific_name") or self.names.get("label") or self.name("en")


def _names_of(sp: dict) -> dict:
    return {k: sp.get(k) for k in ("label", "chinese_name", "english_name", "scientific_name")}


def options(config) -> dict:
    """PhotoFacts' settings from the app config."""
    return {"runner_up_gap": float(config["LOOKALIKE_GAP"]), "same_bird_inside": float(config["PHOTO_SAME_BIRD_INSIDE"]),
            "confident_box": float(config["BIRD_BOX_CONF"])}


def _inside(small: tuple, big: tuple) -> float:
    """The share of ``small``'s box area that lies inside ``big``."""
    w = min(small[2], big[2]) - max(small[0], big[0])
    h = min(small[3], big[3]) - max(small[1], big[1])
    area = (small[2] - small[0]) * (small[3] - small[1])
    return max(0.0, w) * max(0.0, h) / area if area > 0 else 0.0


class PhotoFacts:
    """One photo record, read once; every method answers in ``lang`` ("zh" or "en").

    ``runner_up_gap``: the second species is named when within this of the top (LOOKALIKE_GAP, as /detect).
    ``same_bird_inside``, ``confident_box``: a box below ``confident_box`` confidence lying at least
    ``same_bird_inside`` of its area inside a larger box is the same bird seen twice by the detector (a duck's
    body inside the whole duck, often named as another species): counted once (bench/bench_photo_qa.py)."""

    def __init__(self, record: dict, runner_up_gap: float = 0.15, same_bird_inside: float = 0.75,
                 confident_box: float = 0.5):
        self.record = record
        image = record.get("image") or {}
        width, height = float(image.get("width") or 1), float(image.get("height") or 1)
        self.birds: list[Bird] = []
        if record.get("is_bird"):
            for i, det in enumerate(record.get("detections") or [], start=1):
                species = det.get("species") or []
                answer = det.get("answer") or (species[0] if species else {})
                rank = answer.get("rank", "species")
                top = species[0] if species else answer
                runner = None
                if len(species) > 1 and float(species[0].get("confidence", 0)) - float(species[1].get("confidence", 0)) \
                        < runner_up_gap:
                    runner = {**_names_of(species[1]), "confidence": float(species[1].get("confidence", 0))}
                x1, y1, x2, y2 = (float(v) for v in det.get("box") or (0, 0, width, height))
                self.birds.append(Bird(
                    number=i, names=_names_of(answer if rank != "species" else top), rank=rank,
                    confidence=float(answer.get("confidence", top.get("confidence", 0.0))), runner_up=runner,
                    cx=(x1 + x2) / 2 / width, cy=(y1 + y2) / 2 / height,
                    area=max(0.0, (x2 - x1) * (y2 - y1)) / (width * height),
                    whole_image=det.get("box_confidence") is None, box=(x1, y1, x2, y2),
                    box_confidence=float(det.get("box_confidence") or 0.0), lookalike=det.get("lookalike")))
        for b in sorted(self.birds, key=lambda b: b.area):
            if b.whole_image or b.box_confidence >= confident_box:
                continue
            for a in self.birds:
                if (a is not b and a.area > b.area and a.same_as is None and not a.whole_image
                        and _inside(b.box, a.box) >= same_bird_inside):
                    b.same_as = a.number
                    break
        self.seen = [b for b in self.birds if b.same_as is None]  # one per bird
        self.taken = record.get("taken") or {}
        self.place = record.get("place")
        self.location = record.get("location")

    # -- the parts --------------------------------------------------------------------------------
    def species_labels(self) -> list[str]:
        """The labels of the species seen (species-rank answers, most birds first), for their cards."""
        counts: dict[str, int] = {}
        for b in self.seen:
            if b.rank == "species" and b.names.get("label"):
                counts[b.names["label"]] = counts.get(b.names["label"], 0) + 1
        return sorted(counts, key=lambda k: -counts[k])

    def groups(self) -> list[tuple[Bird, int]]:
        """(first bird, count) per species (or genus/family answer), most numerous first."""
        out: dict[str, list] = {}
        for b in self.seen:
            out.setdefault(b.key(), [b, 0])[1] += 1
        return sorted(((b, n) for b, n in out.values()), key=lambda t: (-t[1], t[0].number))

    def count_text(self, lang: str) -> str:
        n = len(self.seen)
        if not n:
            return "照片里没有找到鸟。" if lang == "zh" else "No bird was found in the photo."
        parts = [f"{c} 只{b.name('zh')}" if lang == "zh" else f"{c} {b.name('en')}" for b, c in self.groups()]
        whole = any(b.whole_image for b in self.seen)
        if lang == "zh":
            note = "（没有找到单独的鸟框，按整张照片识别）" if whole else ""
            return f"图中有 {n} 只鸟：{'、'.join(parts)}{note}。"
        note = " (no separate bird box was found; the whole photo was read)" if whole else ""
        return f"The photo shows {n} bird{'s' if n != 1 else ''}: {', '.join(parts)}{note}."

    def _where(self, b: Bird, lang: str) -> str:
        if b.whole_image:
            return "整张照片" if lang == "zh" else "the whole photo"
        h = 0 if b.cx < 0.4 else 2 if b.cx > 0.6 else 1
        v = 0 if b.cy < 0.33 else 2 if b.cy > 0.67 else 1
        if lang == "zh":
            words = [("左侧", "中间", "右侧")[h]]
            if v != 1:
                words.append(("上方", "", "下方")[v])
            size = "很大" if b.area >= 0.25 else "较小" if b.area < 0.03 else "中等大小"
            return f"画面{''.join(words)}，{size}"
        words = [("left", "centre", "right")[h]]
        if v != 1:
            words.insert(0, ("upper", "", "lower")[v])
        size = "large" if b.area >= 0.25 else "small" if b.area < 0.03 else "medium-sized"
        return f"{' '.join(words)} of the frame, {size}"

    def nearest(self) -> Bird | None:
        boxed = [b for b in self.seen if not b.whole_image]
        return max(boxed, key=lambda b: b.area) if len(boxed) > 1 else None

    def bird_line(self, b: Bird, lang: str) -> str:
        if b.same_as is not None:
            return (f"鸟 {b.number} 是个不确定的框，几乎都在鸟 {b.same_as} 的框里：是同一只鸟，只算一次" if lang == "zh" else
                    f"Bird {b.number} is an unsure box lying almost wholly inside bird {b.same_as}'s: the same bird, "
                    "counted once")
        pct = f"{b.confidence * 100:.0f}%"
        rank = {"genus": ("属", "genus"), "family": ("科", "family")}.get(b.rank)
        if lang == "zh":
            what = f"{b.name('zh')}（{pct}" + (f"，只能确定到{rank[0]}" if rank else "") + "）"
            if b.runner_up:
                what += f"，也可能是{_name(b.runner_up, 'zh')}（{b.runner_up['confidence'] * 100:.0f}%）"
            line = f"鸟 {b.number}：{self._where(b, 'zh')}；{what}"
            return line + ("；看起来最近（框最大）" if b is self.nearest() else "")
        what = f"{b.name('en')} ({pct}" + (f", only sure to the {rank[1]}" if rank else "") + ")"
        if b.runner_up:
            what += f", possibly {_name(b.runner_up, 'en')} ({b.runner_up['confidence'] * 100:.0f}%)"
        line = f"Bird {b.number}: {self._where(b, 'en')}; {what}"
        return line + ("; looks nearest (largest box)" if b is self.nearest() else "")

    def how_to_tell(self, b: Bird, lang: str) -> str:
        """How to tell bird ``b``'s two close species apart, from the cards /detect quoted; "" when none."""
        pair = b.lookalike or {}
        how = (pair.get("how_to_tell") or {}).get(lang)
        species = pair.get("species") or []
        if not how or len(species) < 2:
            return ""
        first, second = _name(species[0], lang), _name(species[1], lang)
        if lang == "zh":
            return f"鸟 {b.number} 像{first}也像{second}，区分方法：{how}"
        return f"Bird {b.number} looks like both {first} and {second}; to tell them apart: {how}"

    def season(self, lang: str) -> str | None:
        date = self.taken.get("date")
        if not date:
            return None
        month = int(date[5:7])
        index = (month % 12) // 3  # Dec-Feb 0 (winter), Mar-May 1 ...
        lat = (self.location or {}).get("lat")
        southern = isinstance(lat, (int, float)) and lat < 0 and (self.location or {}).get("source") in ("exif", "form")
        if southern:
            index = (index + 2) % 4
        return SEASONS[lang][index]

    def date_text(self, lang: str) -> str:
        date, time_ = self.taken.get("date"), self.taken.get("time")
        if not date:
            return ("照片没有记录拍摄日期（EXIF 中没有），无法判断拍摄季节。" if lang == "zh"
                    else "The photo does not record when it was taken (no EXIF date), so its season is unknown.")
        when = f"{date} {time_}" if time_ else date
        season = self.season(lang)
        if lang == "zh":
            return f"照片拍摄于 {when}（{season}，按 EXIF 记录）。"
        return f"The photo was taken on {when} ({season}, per its EXIF)."

    def place_text(self, lang: str) -> str:
        loc = self.location or {}
        if self.place:
            name = self.place["zh"] if lang == "zh" else self.place["en"]
            how = {"exif": ("照片的 GPS", "the photo's GPS"), "form": ("上传时给出的经纬度", "the position sent with it")}
            src = how.get(loc.get("source"), ("位置", "its position"))
            coords = f"{loc['lat']:.3f}, {loc['lon']:.3f}" if "lat" in loc else ""
            if lang == "zh":
                return f"拍摄地点：{name}（据{src[0]} {coords}，取最近的城镇）。"
            return f"Taken near {name} (from {src[1]} {coords}, nearest town)."
        if loc.get("source") in ("region", "default") and loc.get("region"):
            return (f"照片没有 GPS 位置；识别时按地区“{loc['region']}”估计，具体地点未知。" if lang == "zh" else
                    f"The photo has no GPS position; the region '{loc['region']}' was assumed, the exact place is unknown.")
        return ("照片没有 GPS 位置信息，无法判断拍摄地点。" if lang == "zh"
                else "The photo carries no GPS position, so where it was taken is unknown.")

    def camera_text(self, lang: str) -> str:
        cam = self.taken.get("camera")
        if lang == "zh":
            return f"拍摄设备：{cam}（EXIF）。" if cam else "照片没有记录相机型号。"
        return f"Camera: {cam} (EXIF)." if cam else "The photo does not record its camera."

    def description(self, lang: str) -> str:
        """The composed description: the grounding document for answers about the photo."""
        lines = [self.count_text(lang)]
        lines += [self.bird_line(b, lang) + ("。" if lang == "zh" else ".") for b in self.birds]
        lines += [text for b in self.seen if (text := self.how_to_tell(b, lang))]
        lines += [self.date_text(lang), self.place_text(lang)]
        if self.taken.get("camera"):
            lines.append(self.camera_text(lang))
        lines.append("以上是服务器从照片中识别到的全部内容；性别、年龄、行为等没有识别，不能从照片断定。" if lang == "zh" else
                     "This is all the server recognised in the photo; sex, age and behaviour were not recognised "
                     "and cannot be told from it.")
        return "\n".join(lines)

    def passage(self, lang: str, number: int = 1) -> Passage:
        title = "照片识别结果" if lang == "zh" else "What the server saw in the photo"
        return Passage(number=number, text=self.description(lang), kb_name=PHOTO_KB, doc_name=title,
                       chunk_id="photo#description", score=1.0, heading=title, score_kind="photo")

    # -- direct answers (the retrieval-only backend) -------------------------------------------------
    def kind(self, question: str) -> str | None:
        """Which fact the question asks for, or None (a question for the cards, e.g. "它吃什么？")."""
        for kind in KINDS:
            if _KIND_RE[kind].search(question):
                if kind in ("place", "date") and _CARD_TOPIC.search(question) and not _PHOTO_WORD.search(question):
                    continue
                return kind
        return None

    def direct_answer(self, question: str, lang: str, cards: list[Passage]) -> str | None:
        """The answer built from the photo's facts (labelled as such), or None when the question is not one
        of them. ``cards``: the species cards among the sources (for sex and season), cited as [n]."""
        kind = self.kind(question)
        if kind is None:
            return None
        if kind == "compare":
            told = [text for b in self.seen if (text := self.how_to_tell(b, lang))]
            if not told:
                return None  # no close look-alike was seen: the cards of the species named answer it
            body = "\n".join(told)
        elif kind == "count":
            body = self.count_text(lang)
        elif kind == "position":
            body = self.position_answer(question, lang)
        elif kind == "place":
            body = self.place_text(lang)
        elif kind == "date":
            body = self.date_text(lang)
            quoted = _quote(cards, _SEASON_SENTENCE, lang) if self.taken.get("date") else ""
            if quoted:
                body += ("图鉴关于季节的说法：" if lang == "zh" else " What the cards say about seasons: ") + quoted
        elif kind == "camera":
            body = self.camera_text(lang)
        elif kind == "sex":
            body = self.sex_answer(lang, cards)
        else:
            body = self.species_answer(lang)
        return LABEL[lang] + body

    def species_answer(self, lang: str) -> str:
        if not self.seen:
            return self.count_text(lang)
        lines = [self.bird_line(b, lang) for b in self.seen]
        return ("；".join(lines) + "。") if lang == "zh" else ("; ".join(lines) + ".")

    def position_answer(self, question: str, lang: str) -> str:
        if not self.seen:
            return self.count_text(lang)
        if len(self.seen) == 1:
            b = self.seen[0]
            return (f"图中只有一只鸟。{self.bird_line(b, 'zh')}。" if lang == "zh" else
                    f"There is only one bird. {self.bird_line(b, 'en')}.")
        q = question.lower()
        boxed = [b for b in self.seen if not b.whole_image] or self.seen
        pick, word = None, None
        for pattern, chooser, zh, en in (
                (r"左|\bleft", lambda: min(boxed, key=lambda b: b.cx), "最左边", "leftmost"),
                (r"右|\bright", lambda: max(boxed, key=lambda b: b.cx), "最右边", "rightmost"),
                (r"中间|中央|正中|\bmiddle|\bcent", lambda: min(boxed, key=lambda b: abs(b.cx - 0.5)), "最靠中间", "most central"),
                (r"最小|最远|后面|smallest|farthest|furthest|back", lambda: min(boxed, key=lambda b: b.area), "最小（看起来最远）", "smallest (looks farthest)"),
                (r"最大|最近|前面|biggest|largest|nearest|closest|front", lambda: max(boxed, key=lambda b: b.area), "最大（看起来最近）", "largest (looks nearest)"),
                (r"上面|上方|\btop\b|upper", lambda: min(boxed, key=lambda b: b.cy), "最上方", "topmost"),
                (r"下面|下方|\bbottom\b|lower", lambda: max(boxed, key=lambda b: b.cy), "最下方", "lowest")):
            if re.search(pattern, q):
                pick, word = chooser(), (zh if lang == "zh" else en)
                break
        if pick is None:
            return self.species_answer(lang)
        if lang == "zh":
            return f"{word}的是{self.bird_line(pick, 'zh')}。"
        return f"The {word} one is {self.bird_line(pick, 'en')}."

    def sex_answer(self, lang: str, cards: list[Passage]) -> str:
        quoted = _quote(cards, _SEX_SENTENCE, lang)
        if quoted:
            return ("照片识别不区分雌雄；图鉴说两性外观不同，可对照：" + quoted if lang == "zh" else
                    "The photo's recognition does not tell the sexes apart; the card says they differ: " + quoted)
        return ("无法从照片判断这只鸟是雄鸟还是雌鸟：识别结果不含性别，图鉴也没有说两性外观不同。" if lang == "zh" else
                "I cannot tell from the photo whether it is male or female: recognition does not give the sex "
                "and the card does not say the sexes look different.")

    # -- caption and extraction ----------------------------------------------------------------------
    def caption(self) -> str:
        """One paragraph in Chinese, then one in English."""
        out = []
        for lang in ("zh", "en"):
            parts = [self.count_text(lang)]
            if self.seen:
                parts.append(("；".join(self.bird_line(b, lang) for b in self.seen) + "。") if lang == "zh"
                             else "; ".join(self.bird_line(b, lang) for b in self.seen) + ".")
            if self.taken.get("date"):
                parts.append(self.date_text(lang))
            if self.place:
                parts.append(self.place_text(lang))
            out.append(("" if lang == "zh" else " ").join(parts))
        return "\n\n".join(out)

    def extract(self, kind: str, lang: str) -> tuple[str, dict]:
        """KE1 triples, KE2 entities or KE3 attributes of what was seen: (text, the response's extra keys)."""
        subject = "图中" if lang == "zh" else "photo"
        date = self.taken.get("date")
        place = (self.place or {}).get("zh" if lang == "zh" else "en")
        if kind == "KE1":
            rows = []
            for b, n in self.groups():
                rows.append([subject, "包含" if lang == "zh" else "contains",
                             f"{n}只{b.name('zh')}" if lang == "zh" else f"{n} {b.name('en')}"])
            for rel_zh, rel_en, value in (("拍摄地点", "taken at", place), ("拍摄日期", "taken on", date),
                                          ("拍摄季节", "season", self.season(lang)),
                                          ("拍摄设备", "camera", self.taken.get("camera"))):
                if value:
                    rows.append([subject, rel_zh if lang == "zh" else rel_en, value])
            return "\n".join(f"({h}, {r}, {t})" for h, r, t in rows), {"triples": rows}
        if kind == "KE2":
            items = [{"text": b.name(lang), "type": "species" if b.rank == "species" else b.rank} for b, _ in self.groups()]
            items += [{"text": v, "type": t} for v, t in ((place, "place"), (date, "date"),
                                                          (self.taken.get("camera"), "camera")) if v]
            text = ("、".join(f"{e['text']}（{e['type']}）" for e in items) if lang == "zh"
                    else ", ".join(f"{e['text']} ({e['type']})" for e in items))
            return text, {"entities": items}
        keys = {"zh": ("鸟的数量", "物种", "拍摄地点", "拍摄日期", "拍摄季节", "拍摄设备"),
                "en": ("birds", "species", "place", "date", "season", "camera")}[lang]
        values = (str(len(self.seen)), ("、" if lang == "zh" else ", ").join(b.name(lang) for b, _ in self.groups()),
                  place, date, self.season(lang), self.taken.get("camera"))
        attrs = {k: v for k, v in zip(keys, values) if v}
        return "\n".join(f"{k}: {v}" for k, v in attrs.items()), {"attributes": attrs}


def _name(names: dict, lang: str) -> str:
    if lang == "zh":
        return names.get("chinese_name") or names.get("english_name") or names.get("scientific_name") or "?"
    return names.get("english_name") or names.get("scientific_name") or "?"


def _quote(cards: list[Passage], pattern: re.Pattern, lang: str, limit: int = 2) -> str:
    """Up to ``limit`` sentences of the cards that match ``pattern``, each cited as [n]."""
    out = []
    for card in cards:
        for sentence in _SENTENCE_END.split(card.text):
            sentence = sentence.strip()
            if sentence and not sentence.startswith("#") and pattern.search(sentence):
                out.append(f"{sentence}[{card.number}]")
                if len(out) >= limit:
                    return ("" if lang == "zh" else " ").join(out)
    return ("" if lang == "zh" else " ").join(out)
