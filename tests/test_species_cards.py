"""Species cards: every species either recognizer can name has a complete, non-empty card whose facts say
where they come from; Chinese names are unique; the Markdown and the KB documents carry the three names;
the evaluation set covers every species."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from birdsdao.species import SpeciesCatalog
from birdsdao.tools.build_species_data import DATA_DIR, DEFAULT_SHARED_DATA
from birdsdao.tools.build_species_eval import build_questions
from birdsdao.kb.species_kb import iter_card_documents
from birdsdao.species.cards import doc_name

SHARED_DATA = Path(os.environ.get("BIRDSDAO_SHARED", DEFAULT_SHARED_DATA.parent)) / "data"
REQUIRED = ("id", "label", "scientific_name", "english_name", "chinese_name", "order", "order_zh", "family",
            "family_zh", "iucn_status", "iucn_status_zh", "ebird_code", "aliases", "description", "sources",
            "doc_name")
SOURCES = {"published", "published (parent species)", "project"}


@pytest.fixture(scope="module")
def catalog() -> SpeciesCatalog:
    return SpeciesCatalog.load()


def _table(name: str) -> list[dict]:
    if not (SHARED_DATA / name).exists():
        pytest.skip("../shared/data not present")
    with open(SHARED_DATA / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _vocabulary(catalog) -> list:
    """Every species the two recognizers can answer with, found the way /detect finds them."""
    found = [catalog.by_label(r["label"]) for r in _table("birds525_species_reference.csv")]
    found += [catalog.by_inat_index(int(r["index"])) for r in _table("inat_bird_species_reference.csv")
              if r["label"] != "background"]
    assert all(s is not None for s in found)
    return list({s.id: s for s in found}.values())


def test_every_species_in_the_vocabulary_has_a_complete_card(catalog):
    vocabulary = _vocabulary(catalog)
    assert len(vocabulary) == len(catalog)
    for species in vocabulary:
        card = catalog.card(species.id)
        assert card is not None, species.id
        missing = [k for k in REQUIRED if k not in card]
        assert not missing, (species.id, missing)
        for key in ("id", "label", "scientific_name", "english_name", "chinese_name", "doc_name"):
            assert card[key], (species.id, key)
        assert card["description"]["zh"] and len(card["description"]["zh"]) >= 20, species.id
        assert card["description"]["kind"] in {"species", "family"}


def test_every_filled_fact_says_where_it_comes_from(catalog):
    for species in catalog.all():
        card = catalog.card(species.id)
        sources = card["sources"]
        assert set(sources.values()) <= SOURCES, species.id
        for key in ("chinese_name", "order", "family", "order_zh", "family_zh", "iucn_status", "ebird_code"):
            assert bool(card[key]) == (key in sources), (species.id, key)
        assert sources["description"] == "project"
        assert card["chinese_name_source"] == sources["chinese_name"]


def test_published_chinese_names_are_used_as_published(catalog):
    for row in _table("inat_bird_species_reference.csv") + _table("birds525_species_reference.csv"):
        if not row["chinese_name"]:
            continue
        species = catalog.by_inat_index(int(row["index"])) if "index" in row else catalog.by_label(row["label"])
        assert species.chinese_name_source == "published"
        # alternatives written inline ("麻雀 (树麻雀)") keep the first as the name and the rest as aliases
        assert species.chinese_name == re.split(r"[/()（）]", row["chinese_name"])[0].strip()
        assert row["chinese_name"] in (species.chinese_name, *species.aliases)


def test_chinese_names_are_unique_or_allowlisted_with_a_reason(catalog):
    with open(DATA_DIR / "zh_name_allowlist.csv", newline="", encoding="utf-8") as fh:
        allowed = {r["chinese_name"]: r for r in csv.DictReader(fh)}
    assert all(r["reason"].strip() for r in allowed.values())
    owners: dict[str, list[str]] = {}
    for species in catalog.all():
        owners.setdefault(species.chinese_name, []).append(species.id)
    shared = {name: ids for name, ids in owners.items() if len(ids) > 1}
    assert set(shared) <= set(allowed), shared


def test_every_chinese_name_resolves_to_its_own_species(catalog):
    for species in catalog.all():
        assert catalog.resolve(species.chinese_name) is species, species.chinese_name


def test_iucn_and_taxonomy_are_rendered_in_chinese(catalog):
    eagle = catalog.card("Haliaeetus leucocephalus")
    assert (eagle["order_zh"], eagle["family_zh"]) == ("鹰形目", "鹰科")
    assert (eagle["iucn_status"], eagle["iucn_status_zh"]) == ("LC", "无危")
    text = catalog.card_text("Haliaeetus leucocephalus")
    assert "鹰形目（Accipitriformes）鹰科（Accipitridae）" in text and "无危（LC）" in text
    assert "baleag" in text and "白头海雕栖息于湖泊" in text and "主要以鱼类为食" in text


def test_card_text_contains_the_three_names_in_both_languages(catalog):
    for species in catalog.all():
        for lang in ("zh", "en"):
            text = catalog.card_text(species.id, lang)
            for name in (species.chinese_name, species.english_name, species.scientific_name):
                assert name in text, (species.id, lang, name)


def test_family_level_text_is_labelled_as_such(catalog):
    for species in catalog.all():
        card = catalog.card(species.id)
        text = catalog.card_text(species.id)
        if card["description"]["kind"] == "family":
            assert "科级概述" in text and f"本项目尚未撰写{species.chinese_name}的专门介绍" in text
        else:
            assert "## 简介" in text
        if "科级概述" in text:
            assert f"不一定都适用于{species.chinese_name}" in text


def test_card_text_of_an_unknown_species_is_a_key_error(catalog):
    assert catalog.card("Nonexistent bird") is None
    with pytest.raises(KeyError):
        catalog.card_text("Nonexistent bird")


def test_kb_documents_one_per_species_with_safe_unique_names(catalog):
    docs = list(iter_card_documents(catalog))
    assert len(docs) == len(catalog)
    names = [name for name, _, _ in docs]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z0-9_]+\.md", name) for name in names)
    by_id = {meta["species_id"]: (name, text, meta) for name, text, meta in docs}
    name, text, meta = by_id["Haliaeetus leucocephalus"]
    assert name == "BALD_EAGLE.md" and meta["kb"] == "species" and meta["chinese_name"] == "白头海雕"
    assert text == catalog.card_text("Haliaeetus leucocephalus", "zh")


def test_eval_set_covers_every_species_and_matches_the_generator(catalog):
    with open(DATA_DIR / "eval_questions.jsonl", encoding="utf-8") as fh:
        bundled = [json.loads(line) for line in fh]
    assert bundled == build_questions(catalog), "eval set is stale: run python -m birdsdao.tools.build_species_eval"
    per_species: dict[str, list[dict]] = {}
    for q in bundled:
        per_species.setdefault(q["species_id"], []).append(q)
    assert set(per_species) == {s.id for s in catalog.all()}
    for species_id, questions in per_species.items():
        assert {q["lang"] for q in questions} == {"zh", "en"}
        assert {q["doc_name"] for q in questions} == {doc_name(catalog.record(species_id))}
    seed = [q for q in per_species["Haliaeetus leucocephalus"] if q["kind"] == "about"]
    assert seed[0]["question"] == "请告诉我些关于白头海雕的知识吧？"


def test_descriptions_name_their_species_so_chunks_stand_alone(catalog):
    for species in catalog.all():
        text = catalog.card(species.id)["description"]["zh"]
        assert species.chinese_name in text, species.id
        assert "@" not in text and "{" not in text, species.id
