"""Shared corpus for the KB benchmarks, built from ../shared/data/*.csv (bench-only; the server never reads it):
one Markdown "species card" per species, and templated Chinese/English questions whose answer is that card.
When the species branch's eval set (birdsdao/species/data/eval_questions.jsonl) exists it is used instead."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
IUCN_ZH = {"LC": "无危", "NT": "近危", "VU": "易危", "EN": "濒危", "CR": "极危", "EW": "野外灭绝", "EX": "灭绝", "DD": "数据缺乏"}


def species_rows() -> list[dict]:
    rows = {}
    for name in ("birds525_species_reference.csv", "inat_bird_species_reference.csv"):
        with open(SHARED / name, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                sci = row["scientific_name"]
                if sci and row["english_name"] and sci not in rows:
                    rows[sci] = row
                elif sci in rows and row.get("chinese_name") and not rows[sci].get("chinese_name"):
                    rows[sci]["chinese_name"] = row["chinese_name"]
    return list(rows.values())


def card(row: dict) -> tuple[str, str]:
    zh = row.get("chinese_name") or ""
    title = f"{zh} {row['english_name']}".strip()
    iucn = row.get("iucn_status") or "DD"
    text = (f"# {title} ({row['scientific_name']})\n"
            f"## 名称 Names\n中文名：{zh or '无'}。英文名：{row['english_name']}。学名：{row['scientific_name']}。\n"
            f"## 分类 Taxonomy\n{row['english_name']}属于{row.get('order') or '未知'}目、{row.get('family') or '未知'}科。"
            f"It belongs to the order {row.get('order')} and the family {row.get('family')}.\n"
            f"## 保护 Conservation\nIUCN 红色名录等级：{iucn}（{IUCN_ZH.get(iucn, '未知')}）。eBird code: {row.get('ebird_code')}.\n")
    return f"{row['scientific_name']}.md", text


def questions(rows: list[dict], n: int = 200, seed: int = 7) -> list[dict]:
    eval_file = ROOT / "birdsdao" / "species" / "data" / "eval_questions.jsonl"
    if eval_file.exists():
        return [json.loads(line) for line in eval_file.read_text("utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    zh_rows = [r for r in rows if r.get("chinese_name")]
    out = []
    zh_t = ["{zh}属于哪个科？", "{zh}的保护等级是什么？", "{zh}的学名是什么", "介绍一下{zh}"]
    en_t = ["What family does the {en} belong to?", "Is the {en} endangered?", "scientific name of {en}",
            "Tell me about the {en}"]
    for row in rng.sample(zh_rows, n // 2):
        out.append({"question": rng.choice(zh_t).format(zh=row["chinese_name"]), "lang": "zh",
                    "doc_name": f"{row['scientific_name']}.md"})
    for row in rng.sample(rows, n // 2):
        out.append({"question": rng.choice(en_t).format(en=row["english_name"]), "lang": "en",
                    "doc_name": f"{row['scientific_name']}.md"})
    return out
