"""Catalogue terms and card facts: the recogniser of species names in Chinese/English/Latin (via the species
catalogue), family and order names (Chinese and scientific) and IUCN status terms that ``extraction.py`` starts
from, and a species' card facts as triples/attributes (KE answers list those only under ``from_cards``)."""
from __future__ import annotations

import re

IUCN = {
    "LC": ("无危", "Least Concern"),
    "NT": ("近危", "Near Threatened"),
    "VU": ("易危", "Vulnerable"),
    "EN": ("濒危", "Endangered"),
    "CR": ("极危", "Critically Endangered"),
    "EW": ("野外灭绝", "Extinct in the Wild"),
    "EX": ("灭绝", "Extinct"),
    "DD": ("数据缺乏", "Data Deficient"),
}


def iucn_label(code: str | None, lang: str) -> str | None:
    if not code:
        return None
    zh, en = IUCN.get(code, (code, code))
    return f"{zh}（{code}）" if lang == "zh" else f"{en} ({code})"


class EntityRecognizer:
    """Longest-match recognition over a term table built once from the catalogue."""

    def __init__(self, catalog):
        self.catalog = catalog
        terms: dict[str, str] = {}
        for code, (zh, en) in IUCN.items():
            terms[zh] = "iucn_status"
            terms[en] = "iucn_status"
        for sp in (catalog.all() if catalog is not None else []):
            for value, kind in ((sp.family, "family"), (sp.family_zh, "family"), (sp.order, "order"),
                                (sp.order_zh, "order")):
                if value and len(value) >= 2:
                    terms.setdefault(value, kind)
        self.terms = terms
        # Longest first so "野外灭绝" wins over "灭绝"; Latin terms need word boundaries, CJK do not.
        parts = []
        for term in sorted(terms, key=len, reverse=True):
            escaped = re.escape(term)
            parts.append(rf"(?<![A-Za-z]){escaped}(?![A-Za-z])" if term[0].isascii() else escaped)
        self._pattern = re.compile("|".join(parts), re.I) if parts else None

    def entities(self, text: str) -> list[dict]:
        found: list[dict] = []
        taken = [False] * len(text)
        if self.catalog is not None:
            for sp, start, end in sorted(self.catalog.find_mentions(text), key=lambda m: m[1] - m[2]):
                if any(taken[start:end]):
                    continue
                taken[start:end] = [True] * (end - start)
                found.append({"text": text[start:end], "type": "species", "start": start, "end": end,
                              "species_id": sp.id})
        if self._pattern is not None:
            for m in self._pattern.finditer(text):
                if any(taken[m.start():m.end()]):
                    continue
                kind = self.terms.get(m.group(0)) or self._kind_ci(m.group(0))
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
                found.append({"text": m.group(0), "type": kind, "start": m.start(), "end": m.end()})
        return sorted(found, key=lambda e: e["start"])

    def _kind_ci(self, text: str) -> str:
        lowered = text.lower()
        return next((k for t, k in self.terms.items() if t.lower() == lowered), "other")


def display_name(sp, lang: str) -> str:
    if lang == "zh" and sp.chinese_name:
        return sp.chinese_name
    return sp.english_name or sp.scientific_name


def triples(sp, lang: str) -> list[list[str]]:
    """Facts of one species as [head, relation, tail]."""
    name = display_name(sp, lang)
    zh = lang == "zh"
    family = (sp.family_zh if zh else None) or sp.family
    order = (sp.order_zh if zh else None) or sp.order
    rows = [[name, "学名" if zh else "scientific name", sp.scientific_name]]
    if sp.english_name and sp.english_name != name:
        rows.append([name, "英文名" if zh else "English name", sp.english_name])
    if family:
        rows.append([name, "属于" if zh else "belongs to family", family])
    if order:
        rows.append([family or name, "属于" if zh else "belongs to order", order])
    status = iucn_label(sp.iucn_status, lang)
    if status:
        rows.append([name, "保护级别" if zh else "IUCN status", status])
    return rows


def attributes(sp, lang: str) -> dict:
    zh = lang == "zh"
    pairs = [
        ("中文名" if zh else "chinese_name", sp.chinese_name),
        ("学名" if zh else "scientific_name", sp.scientific_name),
        ("英文名" if zh else "english_name", sp.english_name),
        ("目" if zh else "order", " ".join(x for x in (sp.order_zh if zh else None, sp.order) if x) or None),
        ("科" if zh else "family", " ".join(x for x in (sp.family_zh if zh else None, sp.family) if x) or None),
        ("保护级别" if zh else "iucn_status", iucn_label(sp.iucn_status, lang)),
    ]
    return {k: v for k, v in pairs if v}
