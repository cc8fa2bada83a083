"""Conversations with the default retrieval-only backend over the real catalogue, the bundled species KB and a
real KB of written documents (issue #18): follow-ups (它/它们/its/they) take the last turn's or the photo's
bird, comparisons answer from both cards and the look-alike line, a question the sources do not answer says so
in its own language, and a question in one language finds a passage in the other."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from birdsdao.llm import AnswerRequest
from birdsdao.llm.extractive import intents_of

DOCS = Path(__file__).resolve().parent.parent / "bench" / "crosslang" / "docs"


@pytest.fixture(scope="module")
def app(make_module_app):
    return make_module_app(services=["species", "embedder", "kb", "llm"], KB_SPECIES_BUILD="startup")


@pytest.fixture(scope="module")
def client(app):
    c = app.test_client()
    assert c.post("/kb/create", data={"kb_name": "manuals"}).status_code == 201
    files = [(io.BytesIO((DOCS / name).read_bytes()), name) for name in ("serial_port_access.html", "救助雏鸟.txt")]
    r = c.post("/kb/upload", data={"kb_name": "manuals", "files": files}, content_type="multipart/form-data")
    assert r.status_code == 200 and all(f["status"] == "added" for f in r.json["files"]), r.json
    return c


def ask(client, question, history=(), **form):
    r = client.post("/get_response", data={"user_input": question, "history": json.dumps(list(history)), **form})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def cards(body) -> set[str]:
    return {s["doc_name"] for s in body["sources"]}


def cited_docs(body) -> set[str]:
    by_n = {s["n"]: s["doc_name"] for s in body["sources"]}
    return {by_n[int(n)] for n in re.findall(r"\[(\d+)\]", body["response"])}


def test_red_crowned_crane_is_said_to_be_missing_not_answered_as_the_grey_crowned_crane(client):
    for question, missing in (("丹顶鹤吃什么？", "目录里没有丹顶鹤"),
                              ("Tell me about the Red-crowned Crane", "Red-crowned Crane is not in this server")):
        body = ask(client, question)
        assert missing in body["response"] and body["species"] is None
        assert body["name_resolution"]["status"] in ("missing", "suggestions")
        assert "关于灰冕鹤" not in body["response"] and "About the Grey Crowned Crane" not in body["response"]


def test_magpie_lifespan_says_in_chinese_that_it_is_missing_and_quotes_no_magpie_sentence(client):
    body = ask(client, "喜鹊能活多久")
    assert "资料中没有关于寿命的记载" in body["response"]
    assert not re.search(r"\[\d+\]", body["response"])  # no nearby sentence passed off as the answer
    english = ask(client, "How long does the Bald Eagle live?")
    assert "The sources say nothing about its lifespan" in english["response"] and "[" not in english["response"]


def test_what_about_its_nest_after_a_bald_eagle_turn_quotes_the_bald_eagle_nest(client):
    body = ask(client, "What about its nest?", [["Tell me about the Bald Eagle", "The Bald Eagle is ..."]])
    assert cards(body) == {"BALD_EAGLE.md"} and body["species"]["english_name"] == "Bald Eagle"
    assert "枝巢" in body["response"] and cited_docs(body) == {"BALD_EAGLE.md"}
    assert "Swallow" not in body["response"]


def test_carrion_crow_vs_common_raven_answers_from_both_cards_and_the_lookalike_line(client):
    body = ask(client, "Carrion Crow vs Common Raven")
    assert {"CARRION_CROW.md", "NORTHERN_RAVEN.md", "lookalikes.csv"} <= cards(body)
    assert cited_docs(body) == {"CARRION_CROW.md", "NORTHERN_RAVEN.md", "lookalikes.csv"}
    assert "wedge-shaped tail" in body["response"] and "do not mention" not in body["response"]


def test_chinese_comparison_then_a_they_follow_up_keeps_both_birds(client):
    first = ask(client, "小嘴乌鸦和渡鸦怎么区分？")
    assert "楔形尾" in first["response"] and first["response"].startswith("小嘴乌鸦与渡鸦的区别")
    follow = ask(client, "它们吃什么？", [["小嘴乌鸦和渡鸦怎么区分？", first["response"]]])
    assert cards(follow) == {"CARRION_CROW.md", "NORTHERN_RAVEN.md"}
    assert "杂食" in follow["response"]


def test_comparison_with_its_takes_the_last_turns_bird_as_the_other_side(client):
    body = ask(client, "它和疣鼻天鹅怎么区分？", [["大天鹅在哪里越冬？", "..."]])
    assert {"WHOOPER_SWAN.md", "MUTE_SWAN.md"} <= cards(body)


def test_the_photo_species_is_the_subject_of_a_follow_up_even_after_another_bird_was_discussed(client):
    body = ask(client, "它吃什么？", [["渡鸦吃什么？", "..."]], species_label="BALD EAGLE")
    assert body["species"]["english_name"] == "Bald Eagle" and "鱼" in body["response"]


def test_photo_species_from_a_chat_photo_plug_into_the_one_focus_function(app):
    """The hook photo chat uses: detected species passed to _focus_species become the subject."""
    service = app.extensions["birdsdao"].get("llm")
    catalog = app.extensions["birdsdao"].get("species")
    raven = catalog.resolve("渡鸦")
    focus, photo, resolution = service._focus_species(AnswerRequest(user_input="它吃什么？"), "它吃什么？",
                                                      [("白头海雕吃什么？", "...")], [], photo_species=[raven])
    assert [sp.id for sp in focus] == [raven.id] and photo is raven and resolution is None


def test_a_question_that_names_no_bird_is_no_follow_up_and_says_nothing_was_found(client):
    body = ask(client, "哪个用户组可以完全访问串口？", [["白头海雕吃什么？", "..."]])
    assert body["species"] is None
    assert body["response"] == "资料中没有找到与这个问题相关的内容。"
    other = ask(client, "还有其他鸟也吃鱼吗？", [["白头海雕吃什么？", "..."]])  # 其他 is no pronoun
    assert other["species"] is None and "BALD_EAGLE.md" not in cards(other)


def test_a_single_fact_question_quotes_that_fact_once_without_padding(client):
    body = ask(client, "白头海雕吃什么？")
    quoted = re.findall(r"([^：。]+。)\[\d+\]", body["response"])
    assert len(quoted) == 1 and "以鱼类为食" in quoted[0]
    for sentence in quoted:
        assert body["response"].count(sentence) == 1


def test_chinese_question_finds_the_english_passage_that_answers_it(client):
    body = ask(client, "哪个用户组可以完全访问串口？", mode="kb", kb_name="manuals")
    assert any(s["doc_name"] == "serial_port_access.html" and "dialout" in s["text"] for s in body["sources"][:5])
    # the retrieval-only answer cannot quote across languages, but points at the English passage
    pointed = int(re.search(r"另有英文资料可能相关.*见\[(\d+)\]", body["response"]).group(1))
    assert body["sources"][pointed - 1]["doc_name"] == "serial_port_access.html"


def test_english_question_finds_the_chinese_passage_that_answers_it(client):
    hits = client.post("/kb/search", data={"kb_name": "manuals", "query": "Can I give a baby bird water or milk?",
                                           "top_k": 5})
    assert hits.status_code == 200, hits.get_json()
    texts = [h["text"] for h in hits.get_json()["hits"]]
    assert any("牛奶" in t for t in texts)


@pytest.mark.parametrize("question, kinds", [
    ("它的寿命有多长？", ["lifespan"]), ("它在哪里筑巢？", ["nest"]), ("它的蛋有多大？", ["size", "breeding"]),
    ("What about its nest?", ["nest"]), ("Carrion Crow vs Common Raven", ["compare"]), ("介绍一下灰鹤", []),
])
def test_question_kinds_keep_the_specific_one(question, kinds):
    assert sorted(i.name for i in intents_of(question)) == sorted(kinds)
