"""How to tell look-alikes apart (birdsdao/species/data/lookalikes.csv): every line names species of the
vocabulary, once, in both languages, and SpeciesCatalog.how_to_tell finds it whichever way it is asked,
through a subspecies' parent species, or through a generic class's own line."""
from __future__ import annotations

import pytest

from birdsdao.species import SpeciesCatalog
from birdsdao.species.catalog import LOOKALIKES_FILE, read_lookalikes


@pytest.fixture(scope="module")
def catalog() -> SpeciesCatalog:
    return SpeciesCatalog.load()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_lookalikes(LOOKALIKES_FILE)


def test_every_id_in_the_file_is_in_the_catalogue(catalog, rows):
    assert len(rows) >= 50
    for row in rows:
        assert catalog.get(row["species_a"]) is not None, row["species_a"]
        if row["species_b"]:
            assert catalog.get(row["species_b"]) is not None, row["species_b"]
            assert row["species_a"] != row["species_b"]
        else:  # a line of its own only for a generic class: how to get from the class to a species
            assert catalog.get(row["species_a"]).is_class, row["species_a"]


def test_no_pair_is_written_twice(rows):
    keys = [frozenset((r["species_a"], r["species_b"])) for r in rows]
    assert len(keys) == len(set(keys))


def test_every_line_has_both_languages_and_uses_the_catalogue_chinese_names(catalog, rows):
    for row in rows:
        assert row["zh"] and row["en"], row
        assert "\n" not in row["zh"] + row["en"]
        for sid in (row["species_a"], row["species_b"]):
            if sid:
                assert catalog.get(sid).chinese_name in row["zh"], (sid, row["zh"])


def test_how_to_tell_is_order_insensitive(catalog, rows):
    for row in rows:
        a, b = row["species_a"], row["species_b"]
        if not b:
            continue
        one, other = catalog.how_to_tell(a, b), catalog.how_to_tell(b, a)
        assert one == other and one["via"] == "pair" and one["en"] == row["en"]


def test_the_brief_s_classic_confusions_are_covered(catalog):
    for a, b in [("Corvus brachyrhynchos", "Corvus ossifragus"), ("Corvus brachyrhynchos", "Corvus corax"),
                 ("Poecile atricapillus", "Poecile carolinensis"), ("Aythya marila", "Aythya affinis"),
                 ("Tringa melanoleuca", "Tringa flavipes"), ("Dryobates pubescens", "Leuconotopicus villosus"),
                 ("Astur cooperii", "Accipiter striatus"), ("Podiceps auritus", "Podiceps nigricollis"),
                 ("Larus smithsonianus", "Larus delawarensis"), ("Spatula discors", "Spatula cyanoptera"),
                 ("Haematopus palliatus", "Haematopus ostralegus"), ("Haemorhous mexicanus", "Haemorhous purpureus"),
                 ("Cygnus columbianus", "Cygnus buccinator"), ("Branta canadensis", "Branta hutchinsii")]:
        assert catalog.how_to_tell(a, b) is not None, (a, b)


def test_subspecies_fall_back_to_their_parent_species_line(catalog):
    # no line for California Red-shouldered Hawk itself: the Red-shouldered Hawk's line answers
    line = catalog.how_to_tell("Buteo lineatus elegans", "Buteo jamaicensis")
    assert line["via"] == "parent" and {line["species_a"], line["species_b"]} == {"Buteo lineatus", "Buteo jamaicensis"}
    # a line written for the subspecies pair itself wins over the parent
    assert catalog.how_to_tell("Anas crecca carolinensis", "Anas crecca")["via"] == "pair"
    # a subspecies and its own species with no line of their own: nothing to say
    assert catalog.how_to_tell("Buteo lineatus elegans", "Buteo lineatus") is None


def test_generic_class_falls_back_to_its_class_line(catalog):
    line = catalog.how_to_tell("Corvus", "Corvus frugilegus")
    assert line["via"] == "class" and line["species_a"] == "Corvus" and line["species_b"] is None
    assert "乌鸦类" in line["zh"] and "Corvus" in line["en"]
    assert catalog.how_to_tell("Poecile atricapillus", "Paridae")["via"] == "class"
    assert catalog.how_to_tell("Apteryx", "Casuarius") is None  # classes without a line of their own


def test_unknown_or_identical_ids_give_none(catalog):
    assert catalog.how_to_tell("Nonexistent bird", "Corvus corax") is None
    assert catalog.how_to_tell("Corvus corax", "Corvus corax") is None
    assert catalog.how_to_tell("Haliaeetus leucocephalus", "Pica pica") is None


def test_lookalikes_lists_every_line_naming_a_species(catalog):
    lines = catalog.lookalikes("Corvus brachyrhynchos")
    others = {l["species_a"] if l["species_b"] == "Corvus brachyrhynchos" else l["species_b"] for l in lines}
    assert {"Corvus ossifragus", "Corvus corax", "Corvus corone", "Corvus caurinus"} <= others
    assert any(l["species_b"] is None for l in catalog.lookalikes("Corvus"))


def test_a_catalogue_without_the_file_or_with_fewer_species_still_works(tmp_path):
    small = SpeciesCatalog([{"id": "Corvus corax", "label": "RAVEN", "scientific_name": "Corvus corax",
                             "english_name": "Northern Raven"}],
                           lookalikes=read_lookalikes(LOOKALIKES_FILE))
    assert small.how_to_tell("Corvus corax", "Corvus brachyrhynchos") is None
    assert read_lookalikes(tmp_path / "absent.csv") == []
