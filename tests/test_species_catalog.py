"""The species catalogue: the generated data covers both recognizers' vocabularies, every species has
names, and name resolution / mention finding work for Chinese and English spellings (typos included)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from birdsdao.config import DEFAULTS
from birdsdao.species import SpeciesCatalog, build
from birdsdao.species.catalog import DATA_FILE, normalize
from birdsdao.tools.build_species_data import DEFAULT_SHARED_DATA, IOC_REF, build_records

# Same place conftest looks for ../shared (imported by value: tests may or may not be a package).
SHARED_DATA = Path(os.environ.get("BIRDSDAO_SHARED", DEFAULT_SHARED_DATA.parent)) / "data"
BALD_EAGLE = "Haliaeetus leucocephalus"


@pytest.fixture(scope="module")
def catalog() -> SpeciesCatalog:
    return SpeciesCatalog.load()


def _table(name: str) -> list[dict]:
    with open(SHARED_DATA / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_bundled_data_file_is_what_the_generator_makes_from_the_shared_tables():
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data not present")
    with open(DATA_FILE, encoding="utf-8") as fh:
        bundled = [json.loads(line) for line in fh]
    assert build_records(SHARED_DATA) == bundled, "species.jsonl is stale: run python -m birdsdao.tools.build_species_data"


def test_catalogue_merges_both_tables_into_about_1270_species(catalog):
    assert 1250 <= len(catalog) <= 1280
    ids = [s.id for s in catalog.all()]
    assert len(ids) == len(set(ids))
    labels = [s.label for s in catalog.all()]
    assert len(labels) == len(set(labels))


def test_every_species_has_names(catalog):
    for s in catalog.all():
        assert s.id and s.label and s.scientific_name and s.english_name, s
        names = s.names()
        assert set(names) == {"label", "scientific_name", "english_name", "chinese_name", "chinese_name_source"}
        assert (s.chinese_name is None) == (s.chinese_name_source is None)
        assert s.to_dict()["id"] == s.id


def test_every_birds525_label_and_inat_output_maps_to_a_species(catalog):
    for row in _table("birds525_species_reference.csv"):
        s = catalog.by_label(row["label"])
        assert s is not None, row["label"]
    for row in _table("inat_bird_species_reference.csv"):
        s = catalog.by_inat_index(int(row["index"]))
        if row["label"] == "background":
            assert s is None
        else:
            assert s is not None and int(row["index"]) in s.inat_indices, row["label"]


def test_renamed_species_keep_old_names_as_aliases(catalog):
    raven = catalog.resolve("Common Raven")  # iNat 2017 name; current english_name is Northern Raven
    assert raven is not None and raven.id == "Corvus corax" and raven.english_name == "Northern Raven"
    assert catalog.resolve("European Starling").id == "Sturnus vulgaris"
    # the link from the iNat row to the BIRDS-525 label survives a genus change
    cormorant = catalog.resolve("Phalacrocorax auritus")
    assert cormorant is catalog.by_label("DOUBLE BRESTED CORMARANT")
    assert cormorant is catalog.by_inat_index(435)


def test_two_outputs_naming_one_species_share_it(catalog):
    caracara = catalog.get("Caracara plancus")
    assert set(caracara.inat_indices) == {337, 515}
    assert catalog.by_label("JACOBIN PIGEON") is catalog.by_label("ROCK DOVE") is catalog.get("Columba livia")


def test_subspecies_keep_their_trinomial_and_inherit_parent_taxonomy(catalog):
    swallow = catalog.get("Hirundo rustica erythrogaster")
    assert swallow is not None and swallow is not catalog.get("Hirundo rustica")
    assert swallow.family == catalog.get("Hirundo rustica").family == "Hirundinidae"


@pytest.mark.parametrize("text", ["白头海雕", "秃鹰", "bald eagle", "BALD EAGLE", "Bald Eagle",
                                  "Haliaeetus leucocephalus", "bald-eagle", "BALD_EAGLE", "ＢＡＬＤ　ＥＡＧＬＥ",
                                  "  Bald   Eagle ", "Bald Eagel", "bald egle"])
def test_resolve_finds_bald_eagle_from_any_spelling(catalog, text):
    s = catalog.resolve(text)
    assert s is not None and s.id == BALD_EAGLE, text


def test_resolve_handles_apostrophes_and_typos(catalog):
    assert catalog.resolve("Cassins Finch").id == "Haemorhous cassinii"
    assert catalog.resolve("cassin’s finch").id == "Haemorhous cassinii"
    assert catalog.resolve("American Robn").id == "Turdus migratorius"
    assert catalog.resolve("Northern Cardnal").id == "Cardinalis cardinalis"


@pytest.mark.parametrize("text", ["白头海雕", "秃鹰", "bald-eagle", "BALD_EAGLE", "  Bald   Eagle ",
                                  "Haliaeetus leucocephalus"])
def test_lookup_finds_exact_names_labels_and_aliases(catalog, text):
    assert catalog.lookup(text).id == BALD_EAGLE, text


@pytest.mark.parametrize("text", ["Bald Eagel", "白头海雕测试", "灰喜鹊", "鸳鸯测试", "American Robn", "", "  "])
def test_lookup_makes_no_containment_or_typo_guesses(catalog, text):
    assert catalog.lookup(text) is None, text
    if text.strip():
        assert catalog.resolve(text) is not None  # what resolve would have guessed, for contrast


def test_resolve_refuses_what_it_cannot_tell(catalog):
    assert catalog.resolve("") is None
    assert catalog.resolve("   ") is None
    assert catalog.resolve("海雕") is None          # several sea eagles: do not guess
    assert catalog.resolve("toaster oven") is None
    assert catalog.resolve("egle") is None           # too short for typo matching


def test_resolve_chinese_name_inside_a_phrase(catalog):
    assert catalog.resolve("一只白头海雕").id == BALD_EAGLE


def test_find_mentions_in_a_chinese_sentence(catalog):
    text = "我在湖边看到一只白头海雕和两只秃鹰，还有几只绿头鸭。"
    found = catalog.find_mentions(text)
    assert [(s.id, text[a:b]) for s, a, b in found] == [
        (BALD_EAGLE, "白头海雕"), (BALD_EAGLE, "秃鹰"), ("Anas platyrhynchos", "绿头鸭")]


def test_find_mentions_english_respects_word_boundaries_and_prefers_longest(catalog):
    text = "An American Robin, a BLUE JAY and a Mallard; don't steal my teal-coloured bag."
    found = [(s.id, text[a:b]) for s, a, b in catalog.find_mentions(text)]
    assert ("Turdus migratorius", "American Robin") in found
    assert ("Cyanocitta cristata", "BLUE JAY") in found
    assert ("Anas platyrhynchos", "Mallard") in found
    assert not any("steal" in span.lower() for _, span in found)


def test_normalize_folds_width_case_and_separators():
    assert normalize("Ｃａｓｓｉｎ’s  Finch") == "cassins finch"
    assert normalize("White-bellied Sea-Eagle") == "white bellied sea eagle"


def test_service_builder_loads_the_bundled_catalogue(make_app):
    app = make_app(services=["species"])
    services = app.extensions["birdsdao"]
    catalog = services.get("species")
    assert isinstance(catalog, SpeciesCatalog) and len(catalog) > 1000
    assert catalog.describe()["species"] == len(catalog)
    assert build(DEFAULTS, None).get(BALD_EAGLE) is not None


def test_published_inline_alternatives_and_project_aliases_resolve(catalog):
    sparrow = catalog.resolve("麻雀")
    assert sparrow is not None and sparrow.id == "Passer montanus"
    assert catalog.resolve("树麻雀") is sparrow
    assert catalog.resolve("麻雀 (树麻雀)") is sparrow
    assert catalog.resolve("走鹃").id == "Geococcyx californianus"
    assert catalog.resolve("大走鹃").id == "Geococcyx californianus"


def test_find_mentions_latin_and_label_spellings(catalog):
    text = "Photo of Haliaeetus leucocephalus (BALD_EAGLE) next to a cardinal."
    found = [(s.id, text[a:b]) for s, a, b in catalog.find_mentions(text)]
    assert found[:2] == [(BALD_EAGLE, "Haliaeetus leucocephalus"), (BALD_EAGLE, "BALD_EAGLE")]


def test_resolve_long_garbage_is_fast_and_none(catalog):
    import time

    text = "x" * 20000 + " bald eagel"
    start = time.perf_counter()
    assert catalog.resolve(text) is None
    assert time.perf_counter() - start < 0.5


def test_every_natural_dev_folder_name_resolves():
    """The field photos are named by English name with underscores (apostrophes dropped)."""
    natural = SHARED_DATA.parent / "datasets" / "natural-dev"
    if not natural.exists():
        pytest.skip("../shared/datasets/natural-dev not present")
    catalog = SpeciesCatalog.load()
    folders = sorted(p.name for p in natural.iterdir() if p.is_dir())
    assert folders
    unresolved = [f for f in folders if catalog.resolve(f.replace("_", " ")) is None]
    assert not unresolved


def test_one_character_names_match_only_when_they_are_a_main_name(catalog):
    osprey = catalog.find_mentions("鹗吃什么？")
    assert [(s.id, a, b) for s, a, b in osprey] == [("Pandion haliaetus", 0, 1)]
    assert catalog.find_mentions("早餐吃鸡蛋和鹅肝") == []       # 鸡 / 鹅 are aliases only
    assert catalog.resolve("鸡").id == "Gallus gallus domesticus"


def test_names_with_brackets_and_hybrid_sign_are_found_in_text(catalog):
    text = "Where does the Northern Harrier (American) live?"
    assert [s.id for s, _, _ in catalog.find_mentions(text)] == ["Circus cyaneus hudsonius"]
    text = "What does the Pacific Black Duck × Mallard hybrid eat?"
    assert [s.id for s, _, _ in catalog.find_mentions(text)] == ["Anas superciliosa × platyrhynchos"]


def test_generic_classes_are_genus_or_family_with_their_vocabulary_members(catalog):
    classes = {s.id: s for s in catalog.all() if s.is_class}
    # every one-word scientific name is a BIRDS-525 coarse class: a genus, or a family (-idae)
    assert set(classes) == {s.id for s in catalog.all() if len(s.id.split()) == 1}
    assert catalog.rank("Corvus") == "genus" and catalog.rank("Diomedeidae") == "family"
    assert catalog.rank("Paradisaeidae") == "family" and catalog.get("Paradisaeidae").family == "Paradisaeidae"
    crows = {s.id for s in catalog.members("Corvus")}
    assert {"Corvus brachyrhynchos", "Corvus corax", "Corvus ossifragus", "Corvus corone"} <= crows
    assert all(s.rank == "species" and s.genus == "Corvus" for s in catalog.members("Corvus"))
    tits = catalog.members("Paridae")
    assert "Poecile atricapillus" in {s.id for s in tits} and all(s.family == "Paridae" for s in tits)
    assert {s.id for s in catalog.members("Haematopus")} >= {"Haematopus palliatus", "Haematopus ostralegus"}
    assert catalog.members("Corvus brachyrhynchos") == [] and catalog.members("Nonexistent bird") == []


def test_species_know_the_classes_that_contain_them(catalog):
    assert [s.id for s in catalog.classes_of("Corvus brachyrhynchos")] == ["Corvus"]
    assert [s.id for s in catalog.classes_of("Poecile atricapillus")] == ["Paridae"]
    assert catalog.classes_of("Haliaeetus leucocephalus") == []
    assert catalog.genus_of("Corvus corax") == "Corvus" and catalog.genus_of("Corvus") == "Corvus"
    assert catalog.genus_of("Paridae") is None and catalog.genus_of("Nonexistent bird") is None


def test_subspecies_and_domestic_forms_point_to_their_parent_species(catalog):
    swallow = catalog.get("Hirundo rustica erythrogaster")
    assert swallow.rank == "subspecies" and catalog.parent(swallow.id) is catalog.get("Hirundo rustica")
    assert catalog.parent("Columba livia domestica").id == "Columba livia"
    assert catalog.rank("Gallus gallus domesticus") == "subspecies"
    assert catalog.parent("Serinus canaria domestica") is None  # wild canary is not in the vocabulary
    assert catalog.parent("Hirundo rustica") is None
    assert [s.id for s in catalog.classes_of("Hirundo rustica erythrogaster")] == []
    for s in catalog.all():
        if s.parent:
            assert s.rank == "subspecies" and catalog.get(s.parent).rank == "species", s.id


def test_hybrids_and_non_taxa_are_not_species(catalog):
    olympic = catalog.get("Larus glaucescens × occidentalis")
    assert olympic.rank == "hybrid" and olympic.hybrid_of == ("Larus glaucescens", "Larus occidentalis")
    assert catalog.rank("Lunaticus americonis") == "not_a_taxon"
    assert {s.rank for s in catalog.all()} == {"species", "subspecies", "hybrid", "genus", "family", "not_a_taxon"}
    assert catalog.get("Corvus").to_dict()["members"] == [s.id for s in catalog.members("Corvus")]


def test_no_plant_names_left_in_the_species_data():
    for path in DATA_FILE.parent.iterdir():
        if path.is_file():
            assert "strelitzia" not in path.read_text(encoding="utf-8").lower(), path


# --- Published Chinese names (IOC World Bird List) -------------------------------------------------

def _data_csv(name: str) -> list[dict]:
    with open(DATA_FILE.parent / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_bald_eagle_carries_the_ioc_name_as_published_not_the_projects(catalog):
    eagle = catalog.get(BALD_EAGLE)
    assert eagle.chinese_name == "白头海雕" and eagle.chinese_name_source == "published"
    assert catalog.card(BALD_EAGLE)["chinese_name_ref"] == IOC_REF
    text = catalog.card_text(BALD_EAGLE)
    assert f"中文名取自 {IOC_REF}" in text and "本项目译名" not in text
    assert f"({IOC_REF})" in catalog.card_text(BALD_EAGLE, "en")
    row = next(r for r in _data_csv("ioc_zh_names.csv") if r["species_id"] == BALD_EAGLE)
    assert row["chinese_name"] == "白头海雕" and row["match"] == "scientific name"


def test_a_name_the_ioc_list_changed_keeps_the_old_project_name_as_an_alias(catalog):
    quail = catalog.get("Callipepla squamata")
    assert quail.chinese_name == "鳞斑鹑" and catalog.card(quail.id)["chinese_name_ref"] == IOC_REF
    assert catalog.resolve("鳞斑翎鹑") is quail and "鳞斑翎鹑" in quail.aliases


def test_every_old_project_name_still_finds_its_species_unless_another_species_now_owns_it(catalog):
    mains = {s.chinese_name: s.id for s in catalog.all()}
    renamed = 0
    for row in _data_csv("project_zh_names.csv"):
        species = catalog.get(row["scientific_name"])
        if species.chinese_name == row["chinese_name"]:
            continue
        renamed += 1
        owner = mains.get(row["chinese_name"])
        expected = catalog.get(owner) if owner else species
        assert catalog.resolve(row["chinese_name"]) is expected, row
    assert renamed > 200  # the IOC list renamed hundreds of them: this checked something


def test_the_projects_translation_is_used_only_where_no_published_name_exists(catalog):
    ioc = {r["species_id"]: r for r in _data_csv("ioc_zh_names.csv")}
    table_names = {s.chinese_name for s in catalog.all()
                   if s.chinese_name_source == "published" and not catalog.card(s.id)["chinese_name_ref"]}
    own = [s for s in catalog.all() if s.chinese_name_source == "project"]
    assert 0 < len(own) < 100
    for s in own:
        # an IOC name for it exists only where that name is already another species' name in the tables
        assert s.id not in ioc or ioc[s.id]["chinese_name"] in table_names, s.id
    for sid, row in ioc.items():
        s = catalog.get(sid)
        assert s is not None and s.rank == "species", sid
        card = catalog.card(sid)
        if card["chinese_name_ref"] == IOC_REF:
            assert s.chinese_name == row["chinese_name"] and s.chinese_name_source == "published", sid
    assert len(ioc) == len(_data_csv("ioc_zh_names.csv"))  # one row per species


def test_data_readme_records_the_ioc_lists_source_version_and_licence():
    readme = (DATA_FILE.parent / "README.md").read_text(encoding="utf-8")
    for fact in ("IOC World Bird List", "v15.1", "CC BY 4.0", "ljk5403/eBirdExtraNames",
                 "9a427e520300158c272d8779911cdf3d639dfa96", "9f8f43df4fff437e8c05b74c131a22eba9528319",
                 "ioc_zh_names.csv", "build_ioc_names"):
        assert fact in readme, fact
    assert IOC_REF.split()[-1] in readme  # the version the records cite is the one documented


def test_ioc_matching_follows_genus_moves_and_respellings_but_not_splits():
    from birdsdao.tools.build_ioc_names import match
    en = {"Haliaeetus leucocephalus": "Bald Eagle", "Zapornia bicolor": "Black-tailed Crake",
          "Pseudeos fuscata": "Dusky Lory", "Milvago chimachima": "Yellow-headed Caracara",
          "Lophoceros fasciatus": "Congo Pied Hornbill", "Lophoceros semifasciatus": "West African Pied Hornbill"}
    zh = {sci: f"中文{i}" for i, sci in enumerate(en)}

    def sp(sid, english, aliases=(), rank="species"):
        return {"id": sid, "english_name": english, "aliases": list(aliases), "rank": rank}

    rows, counts = match([sp(BALD_EAGLE, "Bald Eagle"),
                          sp("Daptrius chimachima", "Yellow-headed Caracara", ["Milvago chimachima"]),
                          sp("Chalcopsitta fuscata", "Dusky Lory"),
                          sp("Amaurornis bicolor", "Black Tail Crake"),
                          sp("Tockus fasciatus", "African Pied Hornbill"),   # split: the name changed
                          sp("Haliaeetus leucocephalus washingtoniensis", "x", rank="subspecies")], zh, en)
    got = {r["species_id"]: (r["ioc_name"], r["match"]) for r in rows}
    assert got == {BALD_EAGLE: (BALD_EAGLE, "scientific name"),
                   "Daptrius chimachima": ("Milvago chimachima", "latin alias"),
                   "Chalcopsitta fuscata": ("Pseudeos fuscata", "english name"),
                   "Amaurornis bicolor": ("Zapornia bicolor", "near english name in genus or epithet")}
    assert all(r["chinese_name"] == zh[r["ioc_name"]] for r in rows)
    assert counts["not matched (split, lump or not in the list)"] == 1 and counts["not matched (subspecies)"] == 1


def test_ioc_name_map_reader_refuses_a_file_of_another_form(tmp_path):
    from birdsdao.tools.build_ioc_names import read_name_map
    good = tmp_path / "zh.txt"
    good.write_text('"Haliaeetus leucocephalus": "白头海雕",\n"Struthio camelus": "nan",\n', encoding="utf-8")
    assert read_name_map(good) == [(BALD_EAGLE, "白头海雕")]  # an empty sheet cell (nan) is no name
    bad = tmp_path / "bad.txt"
    bad.write_text("scientific_name,chinese_name\nHaliaeetus leucocephalus,白头海雕\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_name_map(bad)
