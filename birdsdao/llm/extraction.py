"""Knowledge extraction from the text itself, without an LLM (KE1 triples, KE2 entities, KE3 attributes).

``Extractor(catalog, resolver).extract(text, lang)`` → ``{"triples", "entities", "attributes", "attribute_items"}``:

- entities: birds (the species catalogue's names, then words that end like a bird's name for birds it lacks),
  family/order/IUCN terms (``entities.EntityRecognizer``), dates and numbers with units (regular expressions),
  people/places/organisations (jieba's part-of-speech tags nr/ns/nt, suffix rules, and for English a short
  gazetteer and capitalisation rules);
- attributes: a table of attribute triggers (zh/en, with synonyms) → a canonical attribute, each with the pattern
  that finds its value; the value is the span of the text as written (qualifiers such as 约/up to kept);
- triples: (subject, relation, value) for each attribute whose clause names a bird, or follows one that did
  ("它", "其", "it", "they" and zero subjects carry the previous clause's bird); plus (observer, verb, bird).

Nothing here is looked up from the cards: card facts are ``entities.triples``/``entities.attributes`` and the
answer labels them separately. ``bench/bench_extraction.py`` measures this module on a labelled set."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import segment
from . import entities as ent
from .entities import EntityRecognizer
from .naming import GENERIC_ZH

# --- numbers, units, dates -------------------------------------------------------------------------------
_ZH_DIGITS = "零〇一二两三四五六七八九十百千万亿"
_NUM_AR = r"\d+(?:,\d{3})*(?:\.\d+)?"
_NUM_ZH_ONE = rf"(?:{_NUM_AR}|[{_ZH_DIGITS}]+|上[百千万])(?:[多余几])?(?:[百千万亿])?(?:[多余])?"
_RANGE = r"\s*(?:-|－|–|—|~|～|至|到)\s*"
NUM_ZH = rf"{_NUM_ZH_ONE}(?:{_RANGE}{_NUM_ZH_ONE})?"
UNITS_ZH = ("平方公里|公顷|厘米|毫米|公里|千米|米|公斤|千克|克|吨|个月|小时|分钟|年|天|周|秒|枚|只|对|窝|种|头|次|%|℃|"
            "cm|mm|km|kg|m|g")
NUM_EN = rf"{_NUM_AR}(?:\s*(?:-|–|—|to)\s*{_NUM_AR})?"
UNITS_EN = ("km/h|mph|cm|mm|km|kg|m|g|lb|lbs|ft|feet|inches|metres?|meters?|centimet(?:re|er)s?|kilomet(?:re|er)s?|"
            "kilograms?|grams?|years?|months?|weeks?|days?|hours?|minutes?|eggs?|birds|pairs|individuals|species|%")
QUANTITY_ZH = re.compile(rf"(?<![0-9A-Za-z.])(?P<num>{NUM_ZH})\s*(?P<unit>{UNITS_ZH})(?![a-zA-Z])")
QUANTITY_EN = re.compile(rf"(?<![0-9A-Za-z.,])(?P<num>{NUM_EN})(?:\s*(?P<unit>{UNITS_EN})\b|(?![\d,.]))", re.I)
_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_DATE_ZH_ONE = (r"(?:\d{4}|[〇零一二三四五六七八九]{4})年(?:\d{1,2}月(?:\d{1,2}[日号])?)?|(?:\d{1,2}|[一二三四五六七八九十]{1,3})月"
                r"(?:\d{1,2}[日号])?")
DATE_ZH = re.compile(rf"(?:\d{{1,2}}{_RANGE}\d{{1,2}}月|(?:{_DATE_ZH_ONE})(?:{_RANGE}(?:{_DATE_ZH_ONE}))?)")
_DATE_EN_ONE = rf"(?:\d{{1,2}}\s+)?(?:{_MONTHS})\b(?:\s+\d{{1,2}}\b)?(?:,?\s+\d{{4}}\b)?"
DATE_EN = re.compile(rf"\b{_DATE_EN_ONE}(?:\s+(?:to|until|-|–)\s+{_DATE_EN_ONE})?"
                     rf"|\b(?:1[5-9]|20)\d\d\b(?!\s*(?:{UNITS_EN})\b)")  # a bare year, unless a unit follows

# --- people, places, organisations -----------------------------------------------------------------------
_ORG_SUFFIX_ZH = ("大学", "学院", "研究所", "研究院", "科学院", "协会", "学会", "联盟", "基金会", "动物园", "博物馆",
                  "管理局", "委员会", "中心", "公司", "保护站")
_PLACE_SUFFIX_ZH = ("国家级自然保护区", "自然保护区", "保护区", "国家公园", "湿地", "公园", "植物园", "半岛", "山脉",
                    "流域", "地区", "国家级", "库区", "中下游", "南麓", "北麓", "东滩", "东北", "西北", "东南", "西南",
                    "北方", "南方", "东部", "西部", "南部", "北部", "中部")
_PLACE_END = ("湖", "山", "岛", "江", "河", "省", "市", "县")  # jieba tags 玄武湖 nr: its ending says place
_ORG_EN = re.compile(
    r"\b(?:[Tt]he\s+)?((?:(?!The\b)[A-Z][\w&'-]*\s+)*"
    r"(?:University|Institute|Society|Lab|Laboratory|Fund|Foundation|Museum|"
    r"Zoo|Association|Trust|Union|Council|Academy|Service|Agency|Conservancy)(?:\s+(?:of|for)\s+(?:the\s+)?"
    r"[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*)?)|\b(IUCN|WWF|BirdLife International|RSPB|Audubon Society)\b")
_ORG_ACRONYMS_ZH = re.compile(r"IUCN|WWF")
_BOUNDARY_TAGS = frozenset("p c u uj ul uz ud ug uv d m q x r mq y e o zg".split())
# Words that are never part of a bird's name before it (verbs of seeing, copulas, numbers' neighbours).
_NOT_NAME_WORDS = frozenset("是 在 有 和 与 及 到 看到 观察 观察到 发现 记录 记录到 拍到 拍摄 拍摄到 研究 保护 饲养 喜欢 属于 "
                            "一只 只 一种 种 许多 很多 多种 这种 那种 一群 成群 上万只 最大 最小 之一 数到 目击 常 还 也 都 大量 大批 少量 "
                            "各种 每年 冬天 夏天 春天 秋天 冬季 夏季 春季 秋季".split())
_NOT_A_BIRD = frozenset("国鸟 冬候鸟 夏候鸟 旅鸟 留鸟 家鸭 家鹅 家鸡 雄鸭 雌鸭 企鹅 猫头鹰 鸟类 雉类 鹤类 鹭类 鸭类 雁类 "
                        "水禽 候鸟 益鸟 鸣禽".split())
# Common birds whose names do not end in a bird character.
_COMMON_BIRDS_ZH = frozenset("画眉 百灵 八哥 戴胜 相思鸟 绣眼".split())
_NOT_IN_ORG = frozenset("在 的 和 与 被 由 是 有 了 到 从 于 研究 人员 学生 专家 我们 他们".split())
# jieba tags many common nouns ns/nr (草原, 杨树, 越冬): landscape words are habitats, not named places.
_GENERIC_PLACES = frozenset("草原 稀树草原 高山 城市 河滩 大洲 山地 湿地 森林 农田 沼泽 湖泊 河流 海岸 沿海 山区 平原 "
                            "高原 荒漠 沙漠 海岛 岛屿 村落 公园 乡村 郊区 水域 滩涂 树林 竹林 灌丛 苔原 冰面 山丘 巢中 中营 巢".split())
# A person's name in Chinese text starts with a common surname (jieba's nr alone also tags 越冬, 杨树).
_SURNAMES = frozenset("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
                      "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫"
                      "孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅"
                      "童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车"
                      "项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛"
                      "仲虞敖巩明佘池查麻苑迟邝")
# Characters that make a longer bird name of the name after them (红嘴+蓝鹊, 东方+白鹳, 王+企鹅).
_BIRD_MODIFIER = frozenset("红橙黄绿青蓝紫黑白灰褐棕赤金银花斑大小长短凤冠尾嘴头颈胸腹背翅眉眼喉领羽东西南北方中华普通"
                           "王帝岩林山水田沙海雪")
# A short gazetteer: continents, oceans, regions and countries/places birds are commonly written about.
PLACES_EN = frozenset("""Africa|Asia|Europe|North America|South America|Central America|Latin America|
Antarctica|Antarctic|Arctic|Australia|Oceania|Eurasia|Siberia|Himalayas|Himalaya|Tibet|Tibetan Plateau|Mongolia|
China|Japan|Korea|India|Russia|Canada|Mexico|Brazil|Alaska|Greenland|Iceland|Scandinavia|Britain|Great Britain|
England|Scotland|Ireland|France|Spain|Germany|Italy|Netherlands|Madagascar|New Zealand|Indonesia|Malaysia|Thailand|
Vietnam|Philippines|Hong Kong|Taiwan|Beijing|Shanghai|Yunnan|Sichuan|Qinghai|Xinjiang|Hainan|Mediterranean|Pacific|
Atlantic|Indian Ocean|Caribbean|Amazon|Alps|Andes|Sahara|Middle East|Southeast Asia|East Asia|Central Asia|Yangtze|
Yellow River""".replace("\n", "").split("|"))
_PLACES_EN = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(PLACES_EN, key=len, reverse=True))) + r")\b")
_PERSON_TITLE_EN = re.compile(r"\b(?:Dr|Prof|Mr|Mrs|Ms|Professor)\.?\s+((?:[A-Z][a-z]+\s?){1,3})")
_CAP_NAME_EN = re.compile(r"\b[A-Z][a-z]+(?:-[A-Za-z][a-z]+| [A-Z][a-z]+){0,3}\b")
_CAP_RUN_EN = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+){1,2}\b")
_EN_NOT_NAME = frozenset("The A An In On At It Its They Their This That These Those From To By Of And Or But With "
                         "During After Before When While Since Each Every Some Many Most".split())

# --- attributes ---------------------------------------------------------------------------------------------
# Canonical attributes, Chinese and English; KE1 uses the same names as relations except where a name reads
# better as a relation (食性 → 食物, 科 → 属于).
ATTR_EN = {"体长": "length", "身高": "height", "翼展": "wingspan", "体重": "weight", "腿长": "leg length",
           "寿命": "lifespan", "食性": "diet", "分布": "distribution", "栖息地": "habitat", "繁殖期": "breeding season",
           "繁殖地": "breeding area", "越冬地": "wintering area", "窝卵数": "clutch size", "孵化期": "incubation period",
           "筑巢地点": "nest site", "保护级别": "conservation status", "种群数量": "population",
           "迁徙距离": "migration distance", "别名": "also known as", "科": "family", "目": "order"}
RELATION = {"zh": {"食性": "食物", "科": "属于", "目": "属于"}, "en": {"family": "belongs to", "order": "belongs to"}}
_QUAL_ZH = r"(?:约为|大约|约|可达|超过|不足|不到|仅|近|将近|多达|达到|达|至少|最多|平均)"
_QUAL_EN = (r"(?:about|around|approximately|roughly|nearly|almost|up to|over|more than|less than|fewer than|"
            r"at least|at most|some)\s+")
_SUFFIX_ZH = r"(?:左右|以上|以下|上下)?"
# Measured attributes: trigger words (synonyms) → canonical; the value is the quantity after it.
MEASURES_ZH = {"体长": "体长", "身长": "体长", "身高": "身高", "翼展": "翼展", "体重": "体重", "腿长": "腿长",
               "寿命": "寿命", "能活": "寿命", "孵化期": "孵化期", "孵化": "孵化期", "种群数量": "种群数量",
               "数量": "种群数量", "个体数": "种群数量", "迁徙距离": "迁徙距离", "产卵": "窝卵数", "窝卵数": "窝卵数",
               "每窝": "窝卵数"}
_MEASURE_ZH = re.compile(
    rf"(?P<key>{'|'.join(sorted(MEASURES_ZH, key=len, reverse=True))})[^，。；！？,;\d]{{0,4}}?"
    rf"(?P<v>{_QUAL_ZH}*\s*{NUM_ZH}\s*(?:{UNITS_ZH}){_SUFFIX_ZH})")
# The units each measure is given in.
_LENGTH_UNITS = ("厘米", "毫米", "米", "公里", "千米", "cm", "mm", "km", "m")
_MEASURE_UNITS_ZH = {"体长": _LENGTH_UNITS, "身高": _LENGTH_UNITS, "翼展": _LENGTH_UNITS, "腿长": _LENGTH_UNITS,
                     "迁徙距离": _LENGTH_UNITS, "体重": ("公斤", "千克", "克", "吨", "kg", "g"), "寿命": ("年", "个月"),
                     "孵化期": ("天", "日", "周"), "种群数量": ("只", "对", "头"), "窝卵数": ("枚",)}
_VALUE_LEAD_ZH = re.compile(r"^(?:\s+|在|于|主要|通常|常|多|一般)+")
_VALUE_LEAD_EN = re.compile(r"^(?:\s+|in\s+|on\s+|at\s+)+")
_V_EN = rf"(?:{_QUAL_EN})*{NUM_EN}\s*(?:{UNITS_EN})\b"
MEASURES_EN = [
    ("length", re.compile(rf"(?P<v>{_V_EN})\s+(?:long|in length)\b|\blength of\s+(?P<v2>{_V_EN})", re.I)),
    ("height", re.compile(rf"(?P<v>{_V_EN})\s+tall\b|\bheight of\s+(?P<v2>{_V_EN})|\bstands?\s+(?P<v3>{_V_EN})", re.I)),
    ("wingspan", re.compile(rf"\bwing\s?span\b[^.;\d]{{0,12}}?(?P<v>{_V_EN})", re.I)),
    ("weight", re.compile(rf"\bweigh(?:s|ing)?\s+(?P<v>{_V_EN})|\bweight of\s+(?P<v2>{_V_EN})", re.I)),
    ("lifespan", re.compile(rf"\blife\s?span of\s+(?P<v>{_V_EN})|\blives?\s+(?:for\s+)?(?P<v2>{_V_EN})", re.I)),
    ("clutch size", re.compile(rf"\blays?\s+(?P<v>{_V_EN})|\bclutch of\s+(?P<v2>{_V_EN})", re.I)),
    ("incubation period", re.compile(rf"\bincubation\b[^.;\d]{{0,16}}?(?P<v>{_V_EN})", re.I)),
    ("population", re.compile(rf"\bpopulation\b[^.;\d]{{0,16}}?(?P<v>{_V_EN})", re.I)),
]
_END_ZH = r"[^，。；！？,;!?]"
# Stated attributes: (canonical, pattern whose group "v" is the value). A value runs to the clause's end unless
# the pattern closes it (以…为食, 在…筑巢); _clause_attributes trims what leads it (在, 主要) and checks dates.
TEXT_ZH = [
    ("食性", re.compile(rf"以(?P<v>{_END_ZH}+?)为(?:主)?食")),
    ("食性", re.compile(rf"(?:捕食|取食|主要吃|吃)(?P<v>{_END_ZH}+)")),
    ("食性", re.compile(r"捕(?P<v>鱼)")),  # 潜水捕鱼
    ("食性", re.compile(rf"食物(?:主要)?(?:是|为|包括|有)(?P<v>{_END_ZH}+)")),
    ("筑巢地点", re.compile(rf"在(?P<v>{_END_ZH}{{1,16}}?)(?:用{_END_ZH}{{0,6}}?)?(?:挖洞|集群)?"
                        rf"(?:筑巢|营巢|筑成{_END_ZH}?巢|做窝|筑窝|做巢)")),
    ("筑巢地点", re.compile(rf"(?:巢(?:多|常)?筑[在于]|筑巢于|营巢于)(?P<v>{_END_ZH}+)")),
    ("栖息地", re.compile(rf"(?:栖息|生活|栖居)[于在](?P<v>{_END_ZH}+)")),
    ("栖息地", re.compile(rf"常见于(?P<v>{_END_ZH}+)")),
    ("分布", re.compile(rf"分布[于在](?P<v>{_END_ZH}+)")),
    ("繁殖期", re.compile(rf"繁殖期(?:为|是|在|一般为|通常为)?(?P<v>{_END_ZH}+)")),
    ("繁殖地", re.compile(rf"在(?P<v>[^，。；！？,;!?在]{{1,16}}?)(?:有)?繁殖(?![期的行地])")),
    ("繁殖地", re.compile(rf"繁殖于(?P<v>{_END_ZH}+)")),
    ("越冬地", re.compile(rf"(?:在|到)(?P<v>[^，。；！？,;!?在到]{{1,16}}?)越冬")),
    ("越冬地", re.compile(rf"(?:冬季|冬天|秋季|秋天)(?:迁往|迁至|飞往|南迁至)(?P<v>{_END_ZH}+)")),
    ("保护级别", re.compile(r"(?P<v>国家[一二]级(?:重点)?保护(?:野生)?动物)")),
    ("别名", re.compile(rf"(?:又名|又称|也叫|俗称|别名|亦称|也称)(?P<v>{_END_ZH}+)")),
]
# Where an English value ends: "and <another verb>", a time phrase, the sentence's end, or ", which/the...".
_STOP_EN = (r"(?=\s+(?:and|but|while|which|where|when|to)\s+(?:nests?|builds?|breeds?|winters?|lives?|has|have|is|"
            r"are|was|can|feeds?|eats?|lays?|hunts?|catch|catches|protect|incubation)\b"
            r"|\s+(?:at night|during|in winter|in summer|by the|in the (?:morning|evening))\b"
            r"|[.;!?]|,\s+(?:the|with|which|and it|and incubation|while|but)\b|$)")
_MOSTLY = r"(?:\s+(?:mainly|mostly|largely|chiefly|primarily))?"


def _en(*triggers: str) -> re.Pattern:
    """An English attribute pattern: any of ``triggers``, then the value up to where the statement ends."""
    return re.compile("|".join(rf"\b{t}\s+(?P<v{i}>.+?){_STOP_EN}" for i, t in enumerate(triggers)), re.I)


TEXT_EN = [
    ("diet", _en(rf"(?:feeds?|feeding|preys?|preying|lives?){_MOSTLY}\s+on", rf"(?:eats?|hunts?){_MOSTLY}",
                 r"diet (?:consists of|includes|is)")),
    ("nest site", _en(r"(?<!the )(?<!its )(?<!their )(?<!of )(?:nests?|builds? (?:its|their|a) nests?|nesting)"
                      r"(?:\s+(?:in|on|at))?")),
    ("habitat", _en(r"(?:lives?|living) in", r"inhabits?", r"(?:is |are )?common in")),
    ("distribution", _en(r"(?:distributed|found|occurs?|ranges?)\s+(?:across|in|on|throughout|over)", r"native to")),
    ("wintering area", _en(r"winters?\s+in")),
    ("breeding season", re.compile(rf"\bbreeds?\s+(?:from|between|in)\s+(?P<v>(?:{_MONTHS}).+?){_STOP_EN}", re.I)),
    ("breeding area", _en(r"breeds?\s+(?:in|on|across)")),
    ("also known as", _en(r"(?:also known as|also called|known locally as)(?:\s+the)?")),
]
_OBSERVE_ZH = re.compile(r"(?:观察到|观测到|拍摄到|拍到|记录到|数到|看到|目击|发现)了?")
_OBSERVE_EN = re.compile(r"\b(?:saw|observed|photographed|recorded|counted|spotted|found|discovered|ringed)\b")
_NEGATED = re.compile(r"(?:不|没有|从不|并不|很少|绝不)(?:会|是|在)?\s*$|\b(?:not|never|rarely|no longer)\s+$|n't\s+$", re.I)
_COMPARED = re.compile(r"(?:比|不如|像)$|\bthan (?:the |a )?$")  # 比灰鹤大: 灰鹤 is not the topic
_PRONOUN = re.compile(r"^(?:它们|它|其|this bird|this species|it|they)\b|^(?:它们|它|其)", re.I)


@dataclass
class Span:
    text: str
    type: str
    start: int
    end: int
    species_id: str | None = None

    def to_dict(self) -> dict:
        d = {"text": self.text, "type": self.type, "start": self.start, "end": self.end}
        if self.type == "species":
            d["species_id"] = self.species_id
        return d


def _jieba_freq(word: str) -> int:
    return segment.jieba().dt.FREQ.get(word) or 0


def _is_zh(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


class Extractor:
    """Rule-based KE1-3 over one text. ``catalog`` (a SpeciesCatalog) and ``resolver`` (a NameResolver, for bird
    names the catalogue lacks) are optional: without them birds are not recognised, the rest still is."""

    def __init__(self, catalog=None, resolver=None):
        self.catalog = catalog
        self.resolver = resolver
        self.recognizer = EntityRecognizer(catalog)

    # --- entities ---------------------------------------------------------------------------------------
    def entities(self, text: str) -> list[Span]:
        taken = [False] * len(text)
        found: list[Span] = []

        def add(start: int, end: int, kind: str, species_id: str | None = None) -> bool:
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end <= start or any(taken[start:end]):
                return False
            taken[start:end] = [True] * (end - start)
            found.append(Span(text[start:end], kind, start, end, species_id))
            return True

        zh = _is_zh(text)
        words = self._words(text) if zh else []
        for e in self._catalogue_terms(text, words):
            add(e["start"], e["end"], e["type"], e.get("species_id"))
        for m in (self._birds_not_in_catalogue(text, words) if zh else self._english_birds(text)):
            add(*m, "species")
        for m in (DATE_ZH if zh else DATE_EN).finditer(text):
            add(m.start(), m.end(), "date")
        if zh:
            for m in QUANTITY_ZH.finditer(text):
                if m.group("num") != "一" and (m.group("num") != "两" or m.group("unit") not in ("只", "种", "个")):
                    add(m.start(), m.end(), "quantity")
            for m in _ORG_ACRONYMS_ZH.finditer(text):
                add(m.start(), m.end(), "organization")
            for start, end, kind in self._jieba_names(words):
                add(start, end, kind)
        else:
            for m in QUANTITY_EN.finditer(text):
                if m.group("unit") or len(m.group("num")) >= 2:
                    add(m.start(), m.end(), "quantity")
            self._english_names(text, add)
        # Names inside a book title (《中国鸟类分布名录》) are the title's words, not entities of the text.
        titles = [m.span() for m in re.finditer(r"《[^》]*》", text)]
        found = [s for s in found if not any(a < s.start and s.end < b for a, b in titles)]
        return sorted(found, key=lambda s: s.start)

    def _words(self, text: str) -> list[tuple[str, str, int, int]]:
        """jieba (word, tag, start, end), tags from posseg."""
        import jieba.posseg as pseg  # noqa: PLC0415  (segment.jieba() has loaded the dictionary)

        segment.jieba()
        out, pos = [], 0
        for word, flag in pseg.cut(text):
            out.append((word, flag, pos, pos + len(word)))
            pos += len(word)
        return out

    def _catalogue_terms(self, text: str, words) -> list[dict]:
        found = self.recognizer.entities(text)
        if not _is_zh(text):
            # Plurals: "Arctic Terns" is the Arctic Tern. Blank the "s" (offsets stay) and look again.
            singular = re.sub(r"(?<=[a-z]{3})s\b", " ", text)
            if singular != text:
                taken = {i for e in found for i in range(e["start"], e["end"])}
                for e in self.recognizer.entities(singular):
                    plural = e["type"] == "species" and text[e["end"]:e["end"] + 1] == "s"
                    end = e["end"] + plural
                    if not taken & set(range(e["start"], end)):
                        found.append({**e, "text": text[e["start"]:end], "end": end})
            for e in found:  # "Wandering Albatross" is not the catalogue's "Albatross"
                m = re.search(r"((?:[A-Z][a-z]+[- ])+)$", text[:e["start"]])
                if e["type"] == "species" and m:
                    lead = [w for w in re.split(r"[- ]", m.group(1)) if w]
                    while lead and lead[0] in _EN_NOT_NAME:
                        lead = lead[1:]
                    if lead:
                        n = len(" ".join(lead)) + 1
                        e.update(start=e["start"] - n, text=text[e["start"] - n:e["end"]], species_id=None)
            return found
        # A catalogue name inside a longer bird word (白鹳 in 东方白鹳) is not that bird: the longer word is;
        # one followed by 科/目 names the family/order (反嘴鹬科).
        out = []
        for e in found:
            if e["type"] == "species" and text[e["end"]:e["end"] + 1] in ("科", "目"):
                e = {"text": text[e["start"]:e["end"] + 1], "type": "family" if text[e["end"]] == "科" else "order",
                     "start": e["start"], "end": e["end"] + 1}
            elif e["type"] == "species":
                word = next((w for w in words if w[2] <= e["start"] and e["end"] <= w[3]), None)
                longer = self._extend_bird_left(e["start"], e["end"], words)
                if longer[0] < e["start"]:
                    e = {**e, "start": longer[0], "end": longer[1], "text": text[longer[0]:longer[1]],
                         "species_id": None}
                elif word is not None and word[3] - word[2] > e["end"] - e["start"] and self._is_bird(word[0]):
                    e = {**e, "start": word[2], "end": word[3], "text": word[0], "species_id": None}
            out.append(e)
        return out

    def _is_bird(self, word: str) -> bool:
        if self.resolver is None or len(word) < 2:
            return False
        return word not in GENERIC_ZH and self.resolver.is_bird_word(word)

    def _birds_not_in_catalogue(self, text: str, words) -> list[tuple[int, int]]:
        """Chinese words that end like a bird's name (绿孔雀, 丹顶鹤): birds, though the catalogue lacks them.
        jieba cuts unknown names before their bird character (黑颈|鹤, 雕|鸮): such pieces are joined again."""
        if not words or self.resolver is None:
            return []
        out = []
        for i, (word, flag, start, end) in enumerate(words):
            if not _is_zh(word):
                continue
            if len(word) == 1 and i and _is_zh(words[i - 1][0]) and words[i - 1][1] not in _BOUNDARY_TAGS \
                    and self._is_bird(words[i - 1][0] + word) and (words[i - 1][0] + word) not in _NOT_A_BIRD:
                start = words[i - 1][2]
            elif not (self._is_bird(word) and flag not in ("v", "vn", "d", "p") and not word.endswith("类")
                      and word[0] not in "雄雌幼成亲") and word not in _COMMON_BIRDS_ZH:
                continue
            span = self._extend_bird_left(start, end, words)
            if text[span[0]:span[1]] not in _NOT_A_BIRD:  # 企鹅 is no one bird, 王企鹅 is
                out.append(span)
        return out

    def _english_birds(self, text: str) -> list[tuple[int, int]]:
        """Capitalised names ending in a bird's head word (Green Peafowl, Hoopoe): birds the catalogue lacks
        (or names it in a longer form: Wandering Albatross)."""
        if self.resolver is None:
            return []
        out = []
        for m in _CAP_NAME_EN.finditer(text):
            words = m.group(0).split()
            while words and words[0] in _EN_NOT_NAME:
                words = words[1:]
            name = " ".join(words)
            last = re.sub(r"s$", "", words[-1]) if words else ""
            if name and (self.resolver.is_bird_word(name) or self.resolver.is_bird_word(last)):
                out.append((m.end() - len(name), m.end()))
        return out

    @staticmethod
    def _extend_bird_left(start: int, end: int, words) -> tuple[int, int]:
        """A bird name jieba cut into pieces (黑枕|黄鹂, 中华|秋|沙鸭, 漂泊|信天翁): the name-like words right
        before it belong to it when nothing but a boundary (start, punctuation, particle, verb, number) is
        before them."""
        idx = next((k for k, w in enumerate(words) if w[3] == start), None)
        if idx is None:
            # jieba cut through the name (东方白|鹳): take the word's head when it is all name characters.
            inside = next((w for w in words if w[2] < start < w[3]), None)
            if inside is not None and set(inside[0][:start - inside[2]]) <= _BIRD_MODIFIER:
                return inside[2], end
            return start, end
        k = idx
        while k >= 0 and end - words[k][2] <= 6:
            w, f = words[k][0], words[k][1]
            if not _is_zh(w) or f in _BOUNDARY_TAGS or w in _NOT_NAME_WORDS or w in _GENERIC_PLACES \
                    or (f == "s" and not set(w) <= _BIRD_MODIFIER):
                break
            k -= 1
        if k == idx:
            return start, end
        # The words taken must sit after a boundary, or they are the sentence's own words, not the name's.
        if k >= 0 and words[k][1] not in _BOUNDARY_TAGS and words[k][0] not in _NOT_NAME_WORDS and _is_zh(words[k][0]):
            return start, end
        return words[k + 1][2], end

    def _jieba_names(self, words) -> list[tuple[int, int, str]]:
        """People (nr), places (ns, merged with the next place word or place suffix) and organisations (nt, or
        a run of nouns ending in 大学/研究所/协会...)."""
        out: list[tuple[int, int, str]] = []
        i, n = 0, len(words)
        while i < n:
            word, flag, start, end = words[i]
            if word.endswith(_ORG_SUFFIX_ZH) or flag == "nt":
                j = i
                # Extend left over nouns/place names that name the organisation (上海市|野生动物|保护|协会).
                while j > 0 and _is_zh(words[j - 1][0]) and words[j - 1][0] not in _NOT_IN_ORG \
                        and not words[j - 1][1].startswith(("p", "c", "u", "x", "m", "r", "q", "nr", "f")) \
                        and (words[j - 1][1] != "d" or words[j - 1][0] == "自然"):
                    j -= 1
                if flag == "nt" or j < i or word.endswith(_ORG_SUFFIX_ZH):
                    if word in _ORG_SUFFIX_ZH and j == i:
                        i += 1
                        continue
                    if out and out[-1][2] == "place" and out[-1][1] > words[j][2]:
                        out.pop()
                    out.append((words[j][2], end, "organization"))
                    i += 1
                    continue
            if (flag == "ns" and word not in _GENERIC_PLACES) or (flag.startswith("nr") and word.endswith(_PLACE_END)):
                s, e = start, end
                k = i + 1
                while k < n and (words[k][1] == "ns" and words[k][0] not in _GENERIC_PLACES
                                 or words[k][1].startswith("nr") and words[k][0].endswith(_PLACE_END)
                                 or words[k][0].endswith(_PLACE_SUFFIX_ZH) and words[k][1] not in ("v", "p")
                                 or words[k][0] in _PLACE_SUFFIX_ZH
                                 or (k + 1 < n and _is_zh(words[k][0]) and words[k][1].startswith(("n", "nr"))
                                     and words[k + 1][0] in _PLACE_SUFFIX_ZH)):
                    if words[k][0].endswith(_ORG_SUFFIX_ZH):
                        break
                    e = words[k][3]
                    k += 1
                if k < n and words[k][0].endswith(_ORG_SUFFIX_ZH):
                    out.append((s, words[k][3], "organization"))  # 北京|林业大学: the place names the organisation
                    i = k + 1
                    continue
                out.append((s, e, "place"))
                i = k
                continue
            # Dictionary words tagged nr (杨树 127, 越冬 250 in jieba's counts) are common nouns, not names.
            if flag.startswith("nr") and 2 <= len(word) <= 4 and _is_zh(word) and _jieba_freq(word) <= 10 \
                    and (word[0] in _SURNAMES or "·" in word):
                out.append((start, end, "person"))
            i += 1
        return out

    def _english_names(self, text: str, add) -> None:
        for m in _ORG_EN.finditer(text):
            g = 1 if m.group(1) else 2
            add(m.start(g), m.end(g), "organization")
        for m in _PERSON_TITLE_EN.finditer(text):
            add(m.start(1), m.end(1), "person")
        for m in _PLACES_EN.finditer(text):
            add(m.start(), m.end(), "place")
        for m in _CAP_RUN_EN.finditer(text):
            words = m.group(0).split()
            if words[0] in _EN_NOT_NAME:
                continue
            before = text[:m.start()].rstrip()
            # After "in"/"at"/"from" a capitalised name is a place; otherwise two or three of them are a person.
            prev = before.split()[-1].lower() if before.split() else ""
            add(m.start(), m.end(), "place" if prev in ("in", "at", "from", "near", "across", "to") else "person")
        for m in re.finditer(r"\b(?:in|at|from|near)\s+([A-Z][a-z]+)\b", text):
            if m.group(1) not in _EN_NOT_NAME and m.group(1) not in {"May", "March", "April", "June", "July"}:
                add(m.start(1), m.end(1), "place")

    # --- attributes and triples ----------------------------------------------------------------------------
    def extract(self, text: str, lang: str | None = None) -> dict:
        """{"entities": [...], "attributes": {attr: value}, "attribute_items": [...], "triples": [[h, r, t]]}:
        everything stated in ``text``; ``lang`` only names the keys (the text's own script decides the rules)."""
        zh = _is_zh(text)
        lang = lang or ("zh" if zh else "en")
        spans = self.entities(text)
        items = self._attribute_items(text, spans, zh)
        triples = []
        for it in items:
            for subject in it["subjects"]:
                rel = RELATION["zh" if zh else "en"].get(it["attribute"], it["attribute"])
                triples.append([subject, rel, it["value"]])
        triples += self._observations(text, spans, zh)
        attributes: dict[str, str] = {}
        for it in items:
            key = it["attribute"] if zh == (lang == "zh") else self._key(it["attribute"], lang)
            attributes.setdefault(key, it["value"])
        public = [{"subject": (it["subjects"] or [None])[0], "attribute": it["attribute"], "value": it["value"],
                   "start": it["start"], "end": it["end"]} for it in items]
        return {"entities": [s.to_dict() for s in spans], "attributes": attributes, "attribute_items": public,
                "triples": list(map(list, dict.fromkeys(map(tuple, triples))))}

    @staticmethod
    def _key(attribute: str, lang: str) -> str:
        if lang == "en":
            return ATTR_EN.get(attribute, attribute)
        return next((zh for zh, en in ATTR_EN.items() if en == attribute), attribute)

    def _clauses(self, text: str, zh: bool) -> list[tuple[int, int]]:
        splitter = re.compile(r"[，。；！？;!?]|,(?!\d)" if zh else r"(?<=[.!?;])\s+(?=[A-Z])|;")
        out, pos = [], 0
        for m in splitter.finditer(text):
            out.append((pos, m.start()))
            pos = m.end()
        out.append((pos, len(text)))
        return [(a, b) for a, b in out if b > a]

    def _attribute_items(self, text: str, spans: list[Span], zh: bool) -> list[dict]:
        birds = [s for s in spans if s.type == "species"]
        items: list[dict] = []
        subjects: list[str] = []
        for a, b in self._clauses(text, zh):
            clause = text[a:b]
            here = [s for s in birds if a <= s.start < b]
            found = self._clause_attributes(clause, a, spans, zh)
            for attr, vs, ve in found:
                # A bird compared with ("比灰鹤大", "than the crane") is not what the clause is about.
                before = [s.text for s in here if s.end <= vs and not _COMPARED.search(text[a:s.start])]
                # The bird named before the value is the subject; else the carried one ("它", zero subject).
                subj = list(dict.fromkeys(before)) or subjects
                items.append({"attribute": attr, "value": text[vs:ve], "start": vs, "end": ve, "subjects": list(subj)})
            here = [s for s in here if not any(vs <= s.start and s.end <= ve for _a, vs, ve in found)]
            if here:
                first = here[0]
                if not (zh and text[a:first.start].strip().endswith(("与", "和", "同", "比"))):
                    lead = [s.text for s in here if s.start <= first.start + 12 and self._leading(text, a, s, zh)
                            and not _COMPARED.search(text[a:s.start])]
                    if lead:
                        subjects = list(dict.fromkeys(lead))
        seen, out = set(), []
        for it in items:
            key = (it["attribute"], it["value"], tuple(it["subjects"]))
            if key not in seen:
                seen.add(key)
                out.append(it)
        return out

    @staticmethod
    def _leading(text: str, a: int, span: Span, zh: bool) -> bool:
        """Whether a bird in a clause is its topic (near its start), so later clauses about "it" mean it."""
        head = text[a:span.start]
        return len(head.strip()) <= (8 if zh else 30)

    def _clause_attributes(self, clause: str, offset: int, spans: list[Span], zh: bool) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        taken: list[tuple[int, int]] = []

        def add(attr: str, start: int, end: int, trigger: int | None = None):
            # A negated statement ("不以鱼为食", "does not feed on fish") states no value.
            head = start if trigger is None else trigger
            if _NEGATED.search(clause[max(0, head - 12):head]):
                return
            value = clause[start:end]
            # Trim what is not the value: leading "the"/在-like words and trailing particles.
            lead = (_VALUE_LEAD_ZH if zh else _VALUE_LEAD_EN).match(value)
            if lead:
                start += lead.end()
            value = clause[start:end]
            end -= len(value) - len(value.rstrip(" \t\n,"))
            if end <= start or any(s < end and start < e for s, e in taken):
                return
            taken.append((start, end))
            out.append((attr, offset + start, offset + end))

        if zh:
            for m in _MEASURE_ZH.finditer(clause):
                attr = MEASURES_ZH[m.group("key")]
                unit = re.search(rf"(?:{UNITS_ZH}){_SUFFIX_ZH}$", m.group("v"))
                if unit and not unit.group(0).startswith(_MEASURE_UNITS_ZH[attr]):
                    continue  # "寿命…3窝", "体重…80厘米": the number measures something else
                add(attr, m.start("v"), m.end("v"), m.start())
            for attr, pattern in TEXT_ZH:
                for m in pattern.finditer(clause):
                    s, e = m.span("v")
                    if attr == "繁殖地" and DATE_ZH.fullmatch(clause[s:e].strip("在于 ")):
                        attr2 = "繁殖期"
                    else:
                        attr2 = attr
                    if attr == "繁殖期" and not DATE_ZH.match(clause[s:e]):
                        continue
                    if attr in ("繁殖地", "越冬地", "筑巢地点") and re.search(r"[\d]|每年|冬季|秋季|春季|夏季", clause[s:e]):
                        # "每年冬季在山东荣成越冬": the value starts after the time words.
                        inner = re.search(r"在([^在]+)$", clause[s:e])
                        if inner:
                            s = s + inner.start(1)
                        elif DATE_ZH.search(clause[s:e]):
                            continue
                    add(attr2, s, e, m.start())
            # Family/order named as what the bird belongs to (属于鹭科, 同属鹤科).
            for sp in spans:
                if sp.type in ("family", "order") and offset <= sp.start and sp.end <= offset + len(clause):
                    lead = clause[:sp.start - offset]
                    if re.search(r"属于?$|归于$", lead):
                        add("科" if sp.type == "family" else "目", sp.start - offset, sp.end - offset)
        else:
            for attr, pattern in MEASURES_EN + TEXT_EN:
                for m in pattern.finditer(clause):
                    g = next(k for k, v in m.groupdict().items() if v)  # the alternative that matched
                    s, e = m.span(g)
                    if attr == "distribution" and DATE_EN.fullmatch(clause[s:e]):
                        continue
                    add(attr, s, e, m.start())
            for sp in spans:
                if sp.type in ("family", "order") and offset <= sp.start and sp.end <= offset + len(clause):
                    if re.search(r"belongs? to (?:the )?(?:family|order)?\s*$", clause[:sp.start - offset], re.I):
                        add("family" if sp.type == "family" else "order", sp.start - offset, sp.end - offset)
        # Conservation status: an IUCN category named in the clause.
        for sp in spans:
            if sp.type == "iucn_status" and offset <= sp.start and sp.end <= offset + len(clause):
                add("保护级别" if zh else "conservation status", sp.start - offset, sp.end - offset)
        return out

    def _observations(self, text: str, spans: list[Span], zh: bool) -> list[list[str]]:
        """(observer, verb, bird) when a person or organisation saw/recorded a bird in the same clause."""
        out = []
        pattern = _OBSERVE_ZH if zh else _OBSERVE_EN
        for a, b in self._clauses(text, zh):
            for m in pattern.finditer(text, a, b):
                who = [s for s in spans if a <= s.start and s.end <= m.start() and s.type == "person"] or \
                    [s for s in spans if a <= s.start and s.end <= m.start() and s.type == "organization"]
                what = [s for s in spans if m.end() <= s.start and s.end <= b and s.type == "species"]
                verb = m.group(0).rstrip("了")
                for w in who:
                    for bird in what[:1]:
                        out.append([w.text, verb, bird.text])
        return out


# --- one output schema for KE1-3, whoever extracted -------------------------------------------------------
ENTITY_TYPES = ("species", "family", "order", "iucn_status", "person", "place", "organization", "date", "quantity",
                "other")
# Type names a model may write instead (Chinese, or near-synonyms).
_TYPE_ALIASES = {"物种": "species", "鸟": "species", "鸟类": "species", "bird": "species", "科": "family",
                 "目": "order", "保护级别": "iucn_status", "保护等级": "iucn_status", "conservation status": "iucn_status",
                 "人": "person", "人物": "person", "人名": "person", "per": "person", "地点": "place", "地名": "place",
                 "location": "place", "loc": "place", "gpe": "place", "机构": "organization", "组织": "organization",
                 "org": "organization", "organisation": "organization", "日期": "date", "时间": "date", "time": "date",
                 "数量": "quantity", "数字": "quantity", "数值": "quantity", "number": "quantity", "measure": "quantity"}
_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def _in_text(span: str, text: str) -> bool:
    return bool(span) and _norm(span) in _norm(text)


def validate(kind: str, value, text: str) -> tuple:
    """(items in the KE output schema, how many were dropped): KE1 [[head, relation, tail]] with head and tail
    written in ``text``; KE2 [{"text", "type", "start", "end"}] with the span in ``text`` and a known type;
    KE3 {attribute: value} with the value written in ``text``. Anything else is dropped: a model (or a rule)
    may only report what the text says."""
    dropped = 0
    if kind == "KE1":
        out = []
        for t in value if isinstance(value, list) else []:
            if not (isinstance(t, (list, tuple)) and len(t) == 3 and all(isinstance(x, (str, int, float)) for x in t)):
                dropped += 1
                continue
            h, r, tail = (str(x).strip() for x in t)
            if h and r and _in_text(h, text) and _in_text(tail, text):
                if [h, r, tail] not in out:
                    out.append([h, r, tail])
            else:
                dropped += 1
        return out, dropped
    if kind == "KE2":
        out = []
        for e in value if isinstance(value, list) else []:
            span = e.get("text") if isinstance(e, dict) else None
            if not isinstance(span, str) or not span.strip():
                dropped += 1
                continue
            span = span.strip()
            start = e.get("start") if isinstance(e.get("start"), int) else -1
            if not (0 <= start and text[start:start + len(span)] == span):
                start = text.find(span)
            if start < 0:
                dropped += 1
                continue
            raw = str(e.get("type", "other")).strip()
            low = raw.lower()
            kind_ = low if low in ENTITY_TYPES else _TYPE_ALIASES.get(low, _TYPE_ALIASES.get(raw, "other"))
            item = {"text": span, "type": kind_, "start": start, "end": start + len(span)}
            if kind_ == "species":
                item["species_id"] = e.get("species_id") if isinstance(e.get("species_id"), str) else None
            out.append(item)
        return out, dropped
    pairs = value.items() if isinstance(value, dict) else (
        [tuple(p) for p in value if isinstance(p, (list, tuple)) and len(p) == 2] if isinstance(value, list) else [])
    out = {}
    for k, v in pairs:
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(k).strip() and _in_text(str(v), text):
            out.setdefault(str(k).strip(), str(v).strip())
        else:
            dropped += 1
    return out, dropped


CARDS_NOTE = {"zh": "以下事实来自物种资料卡片，文本中并未写明", "en": "Facts from the species cards, not stated in the text"}
NOTHING_FOUND = {
    "KE1": {"zh": "文本中没有找到可抽取的三元组。", "en": "No triples are stated in the text."},
    "KE2": {"zh": "文本中没有找到命名实体。", "en": "No named entities were found in the text."},
    "KE3": {"zh": "文本中没有写明鸟的属性。", "en": "The text states no attributes of a bird."},
}


def ke_result(kind: str, result: dict, text: str, catalog, lang: str, also=()) -> dict:
    """The JSON fields of a KE answer from ``Extractor.extract``: the task's key (validated as a model's would
    be) and, for KE1/KE3, the catalogue's facts about the birds the text names (or ``also``: the species the
    conversation is about) under ``from_cards``, labelled as not from the text."""
    text_key = {"KE1": "triples", "KE2": "entities", "KE3": "attributes"}[kind]
    out = {text_key: validate(kind, result[text_key], text)[0]}  # the rules pass the models' validator too
    if kind == "KE3":
        out["attribute_items"] = result["attribute_items"]
    if kind == "KE2" or catalog is None:
        return out
    ids = [e["species_id"] for e in result["entities"] if e["type"] == "species" and e.get("species_id")]
    birds = [catalog.get(i) for i in dict.fromkeys(ids)] or list(also)
    birds = [b for b in birds if b is not None][:3]
    if birds:
        cards = {"note": CARDS_NOTE[lang], "species": [ent.display_name(b, lang) for b in birds]}
        if kind == "KE1":
            cards["triples"] = [t for b in birds for t in ent.triples(b, lang)]
        else:
            cards["attributes"] = {ent.display_name(b, lang): ent.attributes(b, lang) for b in birds}
        out["from_cards"] = cards
    return out


def ke_text(kind: str, extracted: dict, lang: str) -> str:
    """The plain-text answer of a KE result: what the text states, then the card facts under their label."""
    zh = lang == "zh"
    if kind == "KE2":
        items = extracted.get("entities") or []
        body = ("、".join(f"{e['text']}（{e['type']}）" for e in items) if zh else
                ", ".join(f"{e['text']} ({e['type']})" for e in items))
    elif kind == "KE1":
        body = "\n".join(f"({h}, {r}, {t})" for h, r, t in extracted.get("triples") or [])
    else:
        body = "\n".join(f"{k}: {v}" for k, v in (extracted.get("attributes") or {}).items())
    body = body or NOTHING_FOUND[kind][lang]
    cards = extracted.get("from_cards")
    if cards:
        if kind == "KE1":
            facts = "\n".join(f"({h}, {r}, {t})" for h, r, t in cards["triples"])
        else:
            facts = "\n".join(f"{name} · {k}: {v}" for name, attrs in cards["attributes"].items()
                              for k, v in attrs.items())
        body += f"\n\n{CARDS_NOTE[lang]}{'：' if zh else ':'}\n{facts}"
    return body
