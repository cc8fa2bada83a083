"""Name resolution that says how sure it is: an exact name, a typo or partial name above a confidence threshold,
an everyday group name (``data/common_groups.csv``: 喜鹊, 乌鸦, 海鸥 ...), or a name the catalogue lacks, with
"did you mean" suggestions and, where the name's head word tells it, the genus or family to answer at."""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .catalog import Species, SpeciesCatalog, _edit_distance, has_cjk, normalize

GROUPS_FILE = Path(__file__).resolve().parent / "data" / "common_groups.csv"
# Below this a guess is not an answer: the caller gets suggestions instead of a species.
CONFIDENT = 0.8
# A head word (鹤, "crane") names a family when this share of the catalogue species ending in it belong to it.
HEAD_SHARE = 0.6
_RULE_FIELDS = {"genus": "genus", "family": "family", "order": "order"}
STATUSES = ("exact", "fuzzy", "group", "suggestions", "missing")


@dataclass(frozen=True)
class Group:
    """An everyday name for several species (喜鹊 -> genus Pica), as ``common_groups.csv`` defines it."""
    name: str
    zh: str
    en: str
    members: tuple[Species, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "zh": self.zh, "en": self.en, "members": [m.names() for m in self.members]}


@dataclass(frozen=True)
class Taxon:
    """The genus or family a missing name belongs to, with its species in the catalogue."""
    rank: str
    name: str
    name_zh: str | None
    members: tuple[Species, ...]

    def to_dict(self) -> dict:
        return {"rank": self.rank, "name": self.name, "name_zh": self.name_zh,
                "members": [m.names() for m in self.members]}


@dataclass(frozen=True)
class Resolution:
    """What a name means here. ``species`` is set only for ``exact`` and ``fuzzy`` (confidence >= CONFIDENT)."""
    query: str
    status: str
    species: Species | None = None
    confidence: float = 0.0
    suggestions: tuple[Species, ...] = ()
    group: Group | None = None
    taxon: Taxon | None = None

    @property
    def exact(self) -> bool:
        return self.status == "exact"

    def to_dict(self) -> dict:
        return {"query": self.query, "status": self.status,
                "species": self.species.names() if self.species else None,
                "confidence": round(self.confidence, 3),
                "suggestions": [s.names() for s in self.suggestions],
                "group": self.group.to_dict() if self.group else None,
                "taxon": self.taxon.to_dict() if self.taxon else None}


def read_groups(path: str | Path = GROUPS_FILE) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]


class NameResolver:
    """Name decisions over one catalogue. Immutable after construction (thread-safe)."""

    def __init__(self, catalog: SpeciesCatalog, groups: list[dict] | None = None):
        self.catalog = catalog
        self._species = [s for s in catalog.all() if s.rank == "species"]
        self.groups: dict[str, Group] = {}
        for row in read_groups() if groups is None else groups:
            members = self._members(row["members"])
            named = catalog.lookup(row["name"])  # 麻雀, 白鹭 are also one species' name: that one first
            if named in members:
                members.remove(named)
                members.insert(0, named)
            if members:  # a smaller catalogue may have none of a group
                self.groups[normalize(row["name"])] = Group(row["name"], row["zh"], row["en"], tuple(members))
        self._genera = {s.genus for s in self._species if s.genus}
        # Head words: the last word of English names, the last 1-2 characters of Chinese names.
        self._heads: dict[str, Counter] = {}
        self._family_zh: dict[str, str] = {}
        self._vocabulary: set[str] = set()
        for s in self._species:
            if s.family and s.family_zh:
                self._family_zh[s.family] = s.family_zh
            for name in (s.english_name, *(a for a in s.aliases if not has_cjk(a))):
                self._vocabulary.update(normalize(name).split())
            if not s.family:
                continue
            heads = []
            if s.english_name:
                heads.append(normalize(s.english_name).split()[-1])
            zh = normalize(s.chinese_name or "")
            heads += [zh[-n:] for n in (2, 1) if len(zh) > n]
            for h in heads:
                self._heads.setdefault(h, Counter())[(s.genus, s.family)] += 1
        # What every question's name search needs, computed once (the resolver never changes).
        self._genus_words = sorted(g.lower() for g in self._genera)
        self._head_words = [h for h in self._heads if not has_cjk(h)]

    def _members(self, spec: str) -> list[Species]:
        """``genus:Pica|family:Laridae``; ``;`` separates alternatives, the first that has members wins."""
        for alternative in spec.split(";"):
            found: dict[str, Species] = {}
            for rule in alternative.split("|"):
                kind, _, value = rule.strip().partition(":")
                for s in self._species:
                    if (s.id == value if kind == "species" else getattr(s, _RULE_FIELDS[kind]) == value):
                        found.setdefault(s.id, s)
            if found:
                return list(found.values())
        return []

    # --- decisions ---------------------------------------------------------------------------------
    def resolve(self, text: str) -> Resolution:
        key = normalize(text or "")
        query = (text or "").strip()
        if not key:
            return Resolution(query, "missing")
        group = self.groups.get(key)
        if group is not None:
            return Resolution(query, "group", confidence=1.0, group=group)
        hit = self.catalog.lookup(text)
        if hit is not None:
            return Resolution(query, "exact", species=hit, confidence=1.0)
        scored = self._candidates(key)
        if scored and scored[0][0] >= CONFIDENT and (len(scored) == 1 or scored[1][0] < scored[0][0]):
            return Resolution(query, "fuzzy", species=scored[0][1], confidence=scored[0][0])
        suggestions = tuple(s for _c, s in scored[:5])
        taxon = self._taxon(key)
        if suggestions:
            return Resolution(query, "suggestions", confidence=scored[0][0], suggestions=suggestions, taxon=taxon)
        return Resolution(query, "missing", taxon=taxon)

    def _candidates(self, key: str) -> list[tuple[float, Species]]:
        """(confidence, species), best first, one per species."""
        best: dict[str, tuple[float, Species]] = {}

        def add(conf: float, s: Species | None):
            if s is not None and s.rank in ("species", "subspecies") and conf > best.get(s.id, (0.0,))[0]:
                best[s.id] = (conf, s)

        if has_cjk(key):
            # A catalogue name inside the text, or the text inside one name: sure in proportion to the overlap.
            for s, start, end in self.catalog.find_mentions(key):
                add(0.5 + 0.5 * (end - start) / len(key), s)
            if len(key) >= 2:
                for k, s in self.catalog.names_containing(key):
                    add(len(key) / len(k), s)
        else:
            words = key.split()
            for cand, species in self.catalog.close_names(key, max(2, len(key) // 3), 0.7):
                d = _edit_distance(key, cand, 6)
                conf = 1 - d / max(len(key), len(cand))
                # A word of the query that is itself a catalogue word, spelled differently from the candidate's,
                # is a different bird's name ("Red-crowned" vs "Grey Crowned"), not a typo.
                cw = cand.split()
                if any(w in self._vocabulary and w not in cw for w in words):
                    conf *= 0.5
                if len(key) < 5 and d:
                    conf *= 0.5  # short names: one edit is another word
                add(conf, species)
        return sorted(best.values(), key=lambda cs: -cs[0])

    def _taxon(self, key: str) -> Taxon | None:
        """The genus (a Latin binomial's first word) or family (the head word: 鹤, "crane") of a missing name."""
        words = key.split()
        if len(words) >= 2 and words[0].capitalize() in self._genera:
            return self._taxon_of("genus", words[0].capitalize())
        heads = [key[-n:] for n in (2, 1) if len(key) > n] if has_cjk(key) else words[-1:]
        for h in heads:
            counts = self._heads.get(h)
            if not counts:
                continue
            total = sum(counts.values())
            genera, families = Counter(), Counter()
            for (genus, family), n in counts.items():
                genera[genus] += n
                families[family] += n
            genus, n = genera.most_common(1)[0]
            if n == total and total >= 2:
                return self._taxon_of("genus", genus)
            family, n = families.most_common(1)[0]
            if n / total >= HEAD_SHARE:
                return self._taxon_of("family", family)
        return None

    def _taxon_of(self, rank: str, name: str) -> Taxon:
        members = tuple(s for s in self._species if getattr(s, rank) == name)
        zh = self._family_zh.get(name) if rank == "family" else None
        return Taxon(rank, name, zh, members)

    # --- names in free text ------------------------------------------------------------------------
    def find_groups(self, text: str) -> list[tuple[Group, int, int]]:
        """Everyday group names in ``text`` that are not part of a catalogue name (灰喜鹊 is a species)."""
        norm = normalize(text)
        covered = [(a, b) for _s, a, b in self.catalog.find_mentions(norm)]
        found = []
        for key, group in self.groups.items():
            start = norm.find(key)
            while start >= 0:
                end = start + len(key)
                if not any(a < end and start < b and (b - a) > len(key) for a, b in covered):
                    found.append((group, start, end))
                    break
                start = norm.find(key, start + 1)
        # The longest name wins where two overlap (老鹰 over 鹰).
        found.sort(key=lambda g: -(g[2] - g[1]))
        kept: list[tuple[Group, int, int]] = []
        for g in found:
            if all(g[2] <= k[1] or k[2] <= g[1] for k in kept):
                kept.append(g)
        return sorted(kept, key=lambda g: g[1])


    def genus_words(self) -> list[str]:
        """Catalogue genus names, lower case (the first word of a Latin name)."""
        return self._genus_words

    def head_words(self) -> list[str]:
        """English head words of catalogue names ("crane", "eagle")."""
        return self._head_words

    def is_bird_word(self, word: str) -> bool:
        """Whether ``word`` ends like a bird's name here (知更鸟, 丹顶鹤, "crane"): a candidate missing name."""
        key = normalize(word)
        if has_cjk(key):
            return len(key) >= 2 and any(key[-n:] in self._heads for n in (2, 1) if len(key) > n)
        return bool(key) and key.split()[-1] in self._heads
