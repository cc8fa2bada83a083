"""KE1/KE2/KE3 from the text itself (birdsdao/llm/extraction.py) on the real species catalogue and real jieba:
the issue's examples unit-level and end to end through POST /get_response, subjects carried by pronouns, the
one schema and validator that rule-based and model answers share, and card facts kept apart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from birdsdao.llm.extraction import Extractor, validate
from birdsdao.llm.prompts import extraction_from_json
from birdsdao.species.catalog import SpeciesCatalog
from birdsdao.species.names import NameResolver

APP = {"services": ["species", "llm"]}
LABELLED = Path(__file__).resolve().parent.parent / "bench" / "extraction_labelled.jsonl"
EAGLE = "白头海雕体长约80厘米，翼展2米，主要以鱼为食，常在河边筑巢。"
ZHANG = "张三在北京大学观察到一只白头海雕"


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    catalog = SpeciesCatalog.load()
    return Extractor(catalog, NameResolver(catalog))


def ask(client, **form):
    r = client.post("/get_response", data=form)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_the_issue_sentence_gives_its_own_facts_as_written(extractor):
    out = extractor.extract(EAGLE, "zh")
    assert out["triples"] == [["白头海雕", "体长", "约80厘米"], ["白头海雕", "翼展", "2米"], ["白头海雕", "食物", "鱼"],
                              ["白头海雕", "筑巢地点", "河边"]]
    assert out["attributes"] == {"体长": "约80厘米", "翼展": "2米", "食性": "鱼", "筑巢地点": "河边"}
    assert {(e["text"], e["type"]) for e in out["entities"]} == {("白头海雕", "species"), ("80厘米", "quantity"),
                                                                 ("2米", "quantity")}
    for item in out["attribute_items"]:
        assert EAGLE[item["start"]:item["end"]] == item["value"] and item["subject"] == "白头海雕"


def test_people_places_organisations_and_dates_are_entities(extractor):
    found = {(e["text"], e["type"]) for e in extractor.extract(ZHANG, "zh")["entities"]}
    assert found == {("张三", "person"), ("北京大学", "organization"), ("白头海雕", "species")}
    text = "2019年10月，王芳和刘伟在鄱阳湖国家级自然保护区数到了4000多只白鹤。"
    found = {(e["text"], e["type"]) for e in extractor.extract(text, "zh")["entities"]}
    assert found == {("2019年10月", "date"), ("王芳", "person"), ("刘伟", "person"),
                     ("鄱阳湖国家级自然保护区", "place"), ("4000多只", "quantity"), ("白鹤", "species")}
    # 白鹤 is not in the catalogue: a bird by its name's ending, with no species_id to pretend otherwise.
    assert next(e for e in extractor.extract(text, "zh")["entities"] if e["text"] == "白鹤")["species_id"] is None


def test_a_pronoun_or_a_missing_subject_means_the_last_bird_named(extractor):
    out = extractor.extract("白鹭体长约60厘米，它栖息于稻田、河滩和沼泽。", "zh")
    assert ["白鹭", "栖息地", "稻田、河滩和沼泽"] in out["triples"]
    out = extractor.extract("The Emperor Penguin can weigh up to 40 kg. It breeds on the Antarctic sea ice.", "en")
    assert out["triples"] == [["Emperor Penguin", "weight", "up to 40 kg"],
                              ["Emperor Penguin", "breeding area", "the Antarctic sea ice"]]
    # An alias named in a clause is that clause's value, not the subject of the next one.
    out = extractor.extract("戴胜又名鸡冠鸟，以昆虫和蠕虫为食。", "zh")
    assert out["triples"] == [["戴胜", "别名", "鸡冠鸟"], ["戴胜", "食物", "昆虫和蠕虫"]]
    # No bird named at all: attributes still, triples none (no subject is invented).
    out = extractor.extract("这种鸟体长约35厘米，以植物种子为食。", "zh")
    assert out["attributes"] == {"体长": "约35厘米", "食性": "植物种子"} and out["triples"] == []


def test_negated_statements_give_no_value_and_a_compared_bird_is_not_the_subject(extractor):
    assert extractor.extract("白头海雕不以鱼为食，也从不在地面筑巢。", "zh")["attributes"] == {}
    assert extractor.extract("The Bald Eagle does not feed on insects.", "en")["attributes"] == {}
    assert extractor.extract("白头海雕比灰鹤大，体长约80厘米。", "zh")["triples"] == [["白头海雕", "体长", "约80厘米"]]
    # Birds joined by 和/与 share the statement.
    assert extractor.extract("灰鹤和白鹤都在鄱阳湖越冬。", "zh")["triples"] == [["灰鹤", "越冬地", "鄱阳湖"],
                                                                          ["白鹤", "越冬地", "鄱阳湖"]]


def test_english_text_gets_english_attribute_names_and_chinese_keys_on_request(extractor):
    text = "The Great Crested Grebe lays 3-5 eggs, and incubation lasts about 28 days."
    assert extractor.extract(text, "en")["attributes"] == {"clutch size": "3-5 eggs", "incubation period": "about 28 days"}
    assert extractor.extract(text, "zh")["attributes"] == {"窝卵数": "3-5 eggs", "孵化期": "about 28 days"}


def test_rule_output_already_passes_the_validator_models_answer_through(extractor):
    """One schema: on every labelled sentence the rules' output is unchanged by ``validate`` (shape, known
    types, every span/value written in the text)."""
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 150 and sum(r["lang"] == "zh" for r in rows) >= 120
    for row in rows:
        out = extractor.extract(row["text"], row["lang"])
        for kind, key in (("KE1", "triples"), ("KE2", "entities"), ("KE3", "attributes")):
            assert validate(kind, out[key], row["text"]) == (out[key], 0), (row["text"], kind)


def test_a_models_json_keeps_only_what_the_text_states():
    text = "白头海雕体长约80厘米，张三在北京看到过它。"
    reply = ('```json\n{"triples": [["白头海雕", "体长", "约80厘米"], ["白头海雕", "学名", "Haliaeetus leucocephalus"], '
             '["白头海雕", "体长"]]}\n```')
    extracted, warnings = extraction_from_json("KE1", reply, text)
    assert extracted == {"triples": [["白头海雕", "体长", "约80厘米"]]}
    assert any("dropped 2" in w for w in warnings)
    reply = '{"entities": [{"text": "张三", "type": "人名"}, {"text": "北京", "type": "地点"}, {"text": "鹰科", "type": "科"}]}'
    extracted, warnings = extraction_from_json("KE2", reply, text)
    assert extracted["entities"] == [{"text": "张三", "type": "person", "start": 12, "end": 14},
                                     {"text": "北京", "type": "place", "start": 15, "end": 17}]
    extracted, warnings = extraction_from_json("KE3", "{'attributes': {'体长': '约80厘米', '科': '鹰科'}}", text)
    assert extracted == {"attributes": {"体长": "约80厘米"}} and any("dropped 1" in w for w in warnings)
    # Nothing the text supports: an empty answer that says why.
    extracted, warnings = extraction_from_json("KE3", '{"attributes": {"科": "鹰科"}}', text)
    assert extracted == {"attributes": {}} and any("no usable attributes" in w for w in warnings)


def test_text_without_anything_to_extract_gives_empty_lists(extractor):
    for text in ("。。。！？", "hello", "<script>alert(1)</script>", "一" * 2000):
        out = extractor.extract(text, "zh")
        assert out["triples"] == [] and out["attributes"] == {}


def test_issue_examples_end_to_end(client):
    ke1 = ask(client, user_input=EAGLE, prompt_type="KE1")
    assert ke1["triples"] == [["白头海雕", "体长", "约80厘米"], ["白头海雕", "翼展", "2米"], ["白头海雕", "食物", "鱼"],
                              ["白头海雕", "筑巢地点", "河边"]]
    assert all("Haliaeetus" not in cell for t in ke1["triples"] for cell in t)
    assert ["白头海雕", "学名", "Haliaeetus leucocephalus"] in ke1["from_cards"]["triples"]
    ke3 = ask(client, user_input=EAGLE, prompt_type="KE3")
    assert ke3["attributes"] == {"体长": "约80厘米", "翼展": "2米", "食性": "鱼", "筑巢地点": "河边"}
    assert "学名" not in ke3["attributes"] and ke3["from_cards"]["attributes"]["白头海雕"]["学名"]
    assert "体长: 约80厘米" in ke3["response"]
    ke2 = ask(client, user_input=ZHANG, prompt_type="KE2")
    assert [(e["text"], e["type"]) for e in ke2["entities"]] == [("张三", "person"), ("北京大学", "organization"),
                                                                 ("白头海雕", "species")]
    assert all(ZHANG[e["start"]:e["end"]] == e["text"] for e in ke2["entities"])


def test_more_examples_end_to_end(client):
    text = "On 12 March 2022, Maria Garcia photographed a Common Hoopoe in Madrid."
    body = ask(client, user_input=text, prompt_type="KE2")
    assert {(e["text"], e["type"]) for e in body["entities"]} == {
        ("12 March 2022", "date"), ("Maria Garcia", "person"), ("Common Hoopoe", "species"), ("Madrid", "place")}
    body = ask(client, user_input=text, prompt_type="KE1")
    assert body["triples"] == [["Maria Garcia", "photographed", "Common Hoopoe"]]
    body = ask(client, user_input="黑脸琵鹭被世界自然保护联盟列为濒危物种，全球数量约6000只。", prompt_type="KE3")
    assert body["attributes"] == {"种群数量": "约6000只", "保护级别": "濒危"}
    # A follow-up about the photo's bird: the text names none, the card facts are the conversation's bird's.
    body = ask(client, user_input="它体长约58厘米。", prompt_type="KE3", species_label="MALLARD DUCK")
    assert body["attributes"] == {"体长": "约58厘米"}
    assert list(body["from_cards"]["attributes"]) == ["绿头鸭"]
    body = ask(client, user_input="今天天气不错。", prompt_type="KE1")
    assert body["triples"] == [] and "没有找到可抽取的三元组" in body["response"] and "from_cards" not in body
