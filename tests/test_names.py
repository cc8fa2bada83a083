"""Names in questions (issue #18): a typo above the threshold resolves, a guess below it becomes "did you mean",
everyday group names list their catalogue species, and a bird the catalogue lacks is said to be missing and
answered at genus/family level, never as a look-alike. Real catalogue, real extractive backend."""
from __future__ import annotations

import json
import re

import pytest

from birdsdao.species import SpeciesCatalog
from birdsdao.species.names import CONFIDENT, NameResolver, read_groups

APP = {"services": ["species", "llm"]}
GREY_CROWNED = "Balearica regulorum"


@pytest.fixture(scope="module")
def names() -> NameResolver:
    return NameResolver(SpeciesCatalog.load())


def ask(client, **form):
    r = client.post("/get_response", data=form)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def cited_docs(body) -> set[str]:
    docs = {s["n"]: s["doc_name"] for s in body["sources"]}
    return {docs[int(n)] for n in re.findall(r"\[(\d+)\]", body["response"])}


# --- the resolver --------------------------------------------------------------------------------------
def test_a_typo_resolves_with_its_confidence(names):
    r = names.resolve("Bald Egle")
    assert r.status == "fuzzy" and r.species.english_name == "Bald Eagle" and r.confidence >= CONFIDENT


def test_a_different_real_word_is_a_suggestion_not_a_typo(names):
    # "Red" and "Grey" are both words of catalogue names: two edits apart, but another bird.
    r = names.resolve("Red-crowned Crane")
    assert r.status == "suggestions" and r.species is None and r.confidence < CONFIDENT
    assert r.suggestions[0].id == GREY_CROWNED
    assert r.taxon.rank == "family" and r.taxon.name == "Gruidae"


def test_a_missing_chinese_name_gets_its_family_from_its_head_character(names):
    r = names.resolve("丹顶鹤")
    assert r.status == "missing" and r.species is None
    assert r.taxon.name == "Gruidae" and r.taxon.name_zh == "鹤科"
    assert {"Grus grus", GREY_CROWNED} <= {s.id for s in r.taxon.members}


def test_a_latin_binomial_of_a_missing_species_is_answered_at_its_genus(names):
    r = names.resolve("Grus japonensis")
    assert r.status == "missing" and r.taxon.rank == "genus" and r.taxon.name == "Grus"
    assert all(s.genus == "Grus" for s in r.taxon.members) and len(r.taxon.members) >= 2


def test_exact_names_stay_exact(names):
    for name in ("白头海雕", "Bald Eagle", "haliaeetus leucocephalus", "秃鹰"):
        r = names.resolve(name)
        assert r.status == "exact" and r.species.id == "Haliaeetus leucocephalus" and r.confidence == 1.0


def test_group_members_are_computed_from_the_catalogue(names):
    corvus = {s.id for s in names.catalog.all() if s.genus == "Corvus" and s.rank == "species"}
    assert {s.id for s in names.resolve("乌鸦").group.members} == corvus and len(corvus) >= 5
    assert {s.genus for s in names.resolve("喜鹊").group.members} == {"Pica"}
    assert {s.family for s in names.resolve("老鹰").group.members} == {"Accipitridae"}
    assert names.resolve("知更鸟").group.members[0].id == "Erithacus rubecula"
    # A group name that is also one species' name lists that species first (its card is quoted first).
    assert names.resolve("白鹭").group.members[0].english_name == "Little Egret"
    assert names.resolve("麻雀").group.members[0].english_name == "Eurasian Tree Sparrow"


def test_every_group_row_has_members_and_a_meaning(names):
    rows = read_groups()
    assert 20 <= len(rows) <= 40
    for row in rows:
        assert row["zh"] and row["en"], row
        assert names.resolve(row["name"]).status == "group", row["name"]


def test_a_group_inside_a_species_name_is_not_a_group(names):
    # 冠小嘴乌鸦 is a species; 乌鸦 inside it is not the everyday group.
    assert names.find_groups("冠小嘴乌鸦吃什么") == []
    assert [g.name for g, _a, _b in names.find_groups("乌鸦和老鹰谁厉害")] == ["乌鸦", "老鹰"]


# --- answers -------------------------------------------------------------------------------------------
def test_robin_question_is_about_the_robin_not_a_toucan(client):
    body = ask(client, user_input="知更鸟吃什么")
    assert body["name_resolution"]["status"] == "group"
    assert body["response"].startswith("“知更鸟”通常指欧亚鸲")
    assert cited_docs(body) == {"EUROPEAN_ROBIN.md"}
    assert "巨嘴鸟" not in body["response"] and "信天翁" not in body["response"]


def test_red_crowned_crane_is_missing_not_grey_crowned_crane(client):
    for question, missing in (("丹顶鹤能活多久", "目录里没有丹顶鹤"),
                              ("What does the Red-crowned Crane eat?",
                               "Red-crowned Crane is not in this server's species list")):
        body = ask(client, user_input=question)
        assert body["response"].startswith(missing), body["response"]
        assert body["species"] is None  # no card speaks for 丹顶鹤
        nr = body["name_resolution"]
        assert nr["status"] in ("missing", "suggestions") and nr["species"] is None
        assert nr["taxon"]["name"] == "Gruidae"
        # Any Grey Crowned Crane sentence comes after the answer said these are other birds.
        said_other = body["response"].find("不是丹顶鹤本身" if "丹顶鹤" in question else "not Red-crowned Crane itself")
        assert said_other > 0
        grey = [m.start() for m in re.finditer("灰冕鹤|Grey Crowned Crane", body["response"])]
        assert all(pos < said_other for pos in grey[:1]) or not grey
        assert "关于灰冕鹤" not in body["response"] and "About the Grey Crowned Crane" not in body["response"]


def test_red_crowned_crane_offers_did_you_mean(client):
    body = ask(client, user_input="What does the Red-crowned Crane eat?")
    assert "Did you mean: Grey Crowned Crane" in body["response"]
    assert body["name_resolution"]["suggestions"][0]["scientific_name"] == GREY_CROWNED


def test_magpie_lifespan_says_the_answer_is_missing_and_lists_the_magpies(client):
    body = ask(client, user_input="喜鹊能活多久")
    nr = body["name_resolution"]
    assert nr["status"] == "group" and {m["scientific_name"] for m in nr["group"]["members"]} == {
        "Pica hudsonia", "Pica nuttalli", "Pica pica"}
    for member in nr["group"]["members"]:  # each by its catalogue name (IOC's: 北美喜鹊 for Pica hudsonia)
        assert member["chinese_name"] in body["response"], member
    assert "资料中没有关于寿命的记载" in body["response"] and "[" not in body["response"]  # nothing nearby quoted
    assert body["species"] is None


def test_a_typo_in_a_question_still_answers_for_the_bird(client):
    body = ask(client, user_input="What does a Bald Egle eat?")
    assert body["species"]["english_name"] == "Bald Eagle"
    assert body["name_resolution"]["status"] == "fuzzy"
    assert "fish" in body["response"] and cited_docs(body) == {"BALD_EAGLE.md"}


def test_crows_list_the_corvus_species_and_quote_their_cards(client):
    body = ask(client, user_input="乌鸦聪明吗")
    for name in ("短嘴鸦", "渡鸦", "小嘴乌鸦", "秃鼻乌鸦", "家鸦"):
        assert name in body["response"]
    assert body["name_resolution"]["group"]["name"] == "乌鸦"
    assert cited_docs(body) and all(s["doc_name"].endswith(("CROW.md", "RAVEN.md", "ROOK.md"))
                                    for s in body["sources"])


def test_a_missing_bird_with_no_known_family_gets_no_borrowed_answer(client):
    body = ask(client, user_input="渡渡鸟吃什么")
    assert body["response"].startswith("目录里没有渡渡鸟")
    assert body["species"] is None and body["sources"] == []


def test_an_exact_name_is_reported_as_exact_and_the_stream_carries_it(client):
    r = client.post("/get_response", data={"user_input": "白头海雕属于哪个科？", "stream": "1"})
    events = [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines() if line.startswith("data: ")]
    done = events[-1]
    assert done["done"] and done["name_resolution"]["status"] == "exact"
    assert done["name_resolution"]["species"]["english_name"] == "Bald Eagle"


def test_words_for_kinds_of_bird_are_not_missing_names(client):
    for question in ("这只鸟吃什么", "小鸟吃什么", "猛禽有哪些", "What does a big bird eat?"):
        body = ask(client, user_input=question)
        nr = body["name_resolution"]
        assert nr is None or nr["status"] not in ("missing", "suggestions"), (question, nr)
        assert not body["response"].startswith(("目录里没有", "big bird")), body["response"]
