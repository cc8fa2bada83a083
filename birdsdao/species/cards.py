"""Species cards: the structured card of a species and its Markdown rendering (what the bundled species KB,
``kb/species_kb.py``, indexes). Sentences stand alone, each naming its species, as retrieval cuts cards into chunks."""
from __future__ import annotations

import re

# Fields whose value comes straight from the reference tables whenever it is present.
_TABLE_FIELDS = ("scientific_name", "english_name", "label")

_SOURCE_ZH = {"published": "公开名录", "published (parent species)": "公开名录（取自原种）", "project": "本项目撰写"}


def doc_name(record: dict) -> str:
    """A file-system and URL safe document name from the label: ``BALD EAGLE`` -> ``BALD_EAGLE.md``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", record["label"]).strip("_").upper() + ".md"


def make_card(record: dict) -> dict:
    """The card of one species: every field of the record, each field's source, and its document name."""
    card = {k: v for k, v in record.items() if k != "sources"}
    sources = {k: "published" for k in _TABLE_FIELDS}
    sources.update({k: v for k, v in record.get("sources", {}).items() if v})
    sources["iucn_status_zh"] = sources.get("iucn_status")
    card["sources"] = {k: v for k, v in sources.items() if v}
    card["doc_name"] = doc_name(record)
    return card


def _zh_name(record: dict) -> str:
    return record.get("chinese_name") or record["english_name"]


def _taxonomy_zh(record: dict) -> str | None:
    parts = []
    for rank, zh_rank in (("order", "目"), ("family", "科")):
        latin, zh = record.get(rank), record.get(f"{rank}_zh")
        if latin:
            parts.append(f"{zh}（{latin}）" if zh else f" {latin} {zh_rank}")
    return "".join(parts).strip() if parts else None


def render_card(record: dict, lang: str = "zh") -> str:
    """Markdown text of the card. ``lang="zh"`` (default) is Chinese-first; ``"en"`` English-first."""
    return _render_en(record) if lang == "en" else _render_zh(record)


def _render_zh(r: dict) -> str:
    name = _zh_name(r)
    zh = r.get("chinese_name")
    src = r.get("sources", {})
    title = " ".join(x for x in (zh, r["english_name"]) if x) + f"（{r['scientific_name']}）"
    lines = [f"# {title}", ""]
    facts = []
    if zh:
        note = _zh_name_note(r)
        facts.append(f"{zh}的英文名是 {r['english_name']}，学名 {r['scientific_name']}{note}。")
    else:
        facts.append(f"{r['english_name']} 的学名是 {r['scientific_name']}，暂无中文名。")
    aliases = [a for a in r.get("aliases", []) if a not in (zh, r["english_name"], r["scientific_name"])]
    if aliases:
        facts.append(f"{name}的其他名称：{'、'.join(aliases)}。")
    tax = _taxonomy_zh(r)
    if tax:
        facts.append(f"{name}在分类上属于{tax}。")
    if r.get("iucn_status"):
        status = f"{r['iucn_status_zh']}（{r['iucn_status']}）" if r.get("iucn_status_zh") else r["iucn_status"]
        facts.append(f"{name}的 IUCN 受胁等级为{status}。")
    if r.get("ebird_code"):
        facts.append(f"{name}的 eBird 物种代码是 {r['ebird_code']}。")
    lines += facts
    desc = r.get("description") or {}
    if desc.get("zh"):
        if desc.get("kind") == "family":
            family = r.get("family_zh") or r.get("family")
            lines += ["", f"## 科级概述（{_SOURCE_ZH['project']}）", "",
                      f"本项目尚未撰写{name}的专门介绍。{name}属于{family}，以下是该科鸟类的共同特征，"
                      f"不一定都适用于{name}：", "", desc["zh"]]
        else:
            lines += ["", f"## 简介（{_SOURCE_ZH['project']}）", "", desc["zh"]]
        if desc.get("en"):
            lines += ["", desc["en"]]
        if desc.get("family_zh"):
            family = r.get("family_zh") or r.get("family")
            lines += ["", f"## 科级概述（{_SOURCE_ZH['project']}）", "",
                      f"{name}属于{family}，以下是该科鸟类的共同特征，不一定都适用于{name}：", "",
                      desc["family_zh"]]
    lines += ["", "来源：" + "；".join(_source_notes_zh(src))]
    return "\n".join(lines).strip() + "\n"


def _zh_name_note(r: dict) -> str:
    """Where the Chinese name comes from, said where the name is first given: the project's own
    translation, or the named published list (IOC); the shared tables' list is covered by the sources line."""
    if r.get("chinese_name_source") == "project":
        return "，中文名为本项目译名"
    return f"，中文名取自 {r['chinese_name_ref']}" if r.get("chinese_name_ref") else ""


def _zh_name_note_en(r: dict) -> str:
    if r.get("chinese_name_source") == "project":
        return " (the project's own translation)"
    return f" ({r['chinese_name_ref']})" if r.get("chinese_name_ref") else ""


def _source_notes_zh(src: dict) -> list[str]:
    published = ["学名", "英文名"] + [zh for key, zh in (("chinese_name", "中文名"), ("order", "目"),
                                                     ("family", "科"), ("iucn_status", "IUCN 等级"),
                                                     ("ebird_code", "eBird 代码"))
                                    if (src.get(key) or "").startswith("published")]
    project = [zh for key, zh in (("chinese_name", "中文名"), ("order", "目"), ("family", "科"),
                                  ("order_zh", "目科中文名"), ("description", "简介")) if src.get(key) == "project"]
    notes = [f"{'、'.join(published)}取自公开名录"]
    if project:
        notes.append(f"{'、'.join(dict.fromkeys(project))}由本项目撰写")
    return notes


def _render_en(r: dict) -> str:
    zh = r.get("chinese_name")
    en = r["english_name"]
    title = en + (f" {zh}" if zh else "") + f" ({r['scientific_name']})"
    lines = [f"# {title}", ""]
    lines.append(f"The {en} ({r['scientific_name']}) is called {zh} in Chinese{_zh_name_note_en(r)}." if zh
                 else f"The {en} has the scientific name {r['scientific_name']}.")
    if r.get("order") or r.get("family"):
        lines.append(f"The {en} belongs to the order {r.get('order') or '?'}, family {r.get('family') or '?'}.")
    if r.get("iucn_status"):
        lines.append(f"The {en} has IUCN status {r['iucn_status']}.")
    if r.get("ebird_code"):
        lines.append(f"The {en}'s eBird code is {r['ebird_code']}.")
    desc = r.get("description") or {}
    text = desc.get("en") or desc.get("zh")
    if text:
        heading = "Family overview" if desc.get("kind") == "family" else "Description"
        lines += ["", f"## {heading} (written by the project)", "", text]
    return "\n".join(lines).strip() + "\n"
