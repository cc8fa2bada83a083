"""POST /species/teach and /species/forget: teach from photos, name it in /detect, survive a restart,
forget; refusals for bad input and a missing token."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

from birdsdao import create_app

from .conftest import BIRDS525, NATURAL, YOLO_WEIGHTS
from .test_detect import post

SPECIES = BIRDS525 / "ALEXANDRINE PARAKEET"
TOKEN = "s3cret-token"


def views_of_one_bird() -> tuple[list[bytes], bytes]:
    """Three teaching views (whole, mirrored, tighter) of a field photo of a bird no prototype covers, and a
    fourth, differently framed view to recognise."""
    image = Image.open(next((NATURAL / "Hermit_Thrush").iterdir())).convert("RGB")
    w, h = image.size

    def jpeg(im):
        buf = io.BytesIO()
        im.save(buf, format="JPEG")
        return buf.getvalue()

    teach = [jpeg(image), jpeg(ImageOps.mirror(image)), jpeg(image.crop((w // 10, h // 10, w - w // 10, h - h // 10)))]
    return teach, jpeg(image.crop((w // 20, 0, w, h - h // 20)))


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    return tmp_path_factory.mktemp("teach-instance")


def make(instance, tmp_path_factory):
    return create_app({
        "TESTING": True, "INSTANCE_PATH": str(instance), "API_TOKEN": TOKEN,
        "DETECTOR_CACHE": str(tmp_path_factory.getbasetemp() / "onnx-cache"),
        "YOLO_WEIGHTS": str(YOLO_WEIGHTS), "SERVICES": ["species", "vision"],
    }).test_client()


@pytest.fixture(scope="module")
def client(instance, tmp_path_factory):
    return make(instance, tmp_path_factory)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGES = [(SPECIES / f"{i}.jpg").read_bytes() for i in (1, 2, 3)]
HELD_OUT = (SPECIES / "4.jpg").read_bytes()


def teach(client, images, headers=AUTH, **fields):
    return post(client, images, path="/species/teach", field="images", headers=headers, **fields)


def labels_for(client, data):
    return [s["label"] for s in post(client, data, annotate="0", top_k="5").get_json()["detections"][0]["species"]]


def test_teach_without_token_is_refused_and_nothing_changes(client, instance):
    r = teach(client, IMAGES, headers={}, label="Garden Parrot")
    assert r.status_code == 401 and r.get_json()["code"] == "unauthorized"
    assert not (instance / "taught" / "index.json").exists()


@pytest.mark.parametrize("label, images, code", [
    ("../etc/passwd", IMAGES, "bad_field"),
    ("Garden Parrot", IMAGES[:2], "too_few_images"),
    ("Garden Parrot", IMAGES[:2] + [b"not an image"], "bad_image"),
    ("", IMAGES, "missing_field"),
])
def test_bad_teach_requests_are_refused(client, instance, label, images, code):
    r = teach(client, images, label=label)
    assert r.status_code == 400 and r.get_json()["code"] == code
    assert client.get("/species/taught").get_json()["species"] == []


def test_taught_species_is_named_then_survives_restart_then_is_forgotten(client, instance, tmp_path_factory):
    images, query = views_of_one_bird()
    assert "GARDEN PARROT" not in labels_for(client, query)
    before = teach(client, images, label="garden  parrot", chinese_name="花园鹦鹉", english_name="Garden Parrot")
    assert before.status_code == 200, before.get_json()
    body = before.get_json()
    assert body["label"] == "GARDEN PARROT" and body["images_used"] == 3 and body["new_species"] is True
    count = body["species_count"]
    assert count > 1200
    det = post(client, query, annotate="1", top_k="3").get_json()["detections"][0]
    taught = next(s for s in det["species"] if s["label"] == "GARDEN PARROT")
    assert taught["chinese_name"] == "花园鹦鹉" and taught["chinese_name_source"] == "user"
    assert taught["confidence"] > 0.1
    assert (instance / "taught" / "index.json").exists()
    assert not list((instance / "taught").glob("*.pkl")) and not list((instance / "taught").glob(".tmp-*"))

    restarted = make(instance, tmp_path_factory)  # a second app on the same instance folder
    assert "GARDEN PARROT" in labels_for(restarted, query)[:3]
    assert [s["label"] for s in restarted.get("/species/taught").get_json()["species"]] == ["GARDEN PARROT"]

    r = post(client, [], path="/species/forget", field="images", headers=AUTH, label="Garden Parrot")
    assert r.status_code == 200 and r.get_json()["species_count"] == count - 1
    assert "GARDEN PARROT" not in labels_for(client, query)
    r = post(client, [], path="/species/forget", field="images", headers=AUTH, label="Garden Parrot")
    assert r.status_code == 404 and r.get_json()["code"] == "unknown_species"


def test_teaching_a_known_species_improves_it_without_a_new_entry(client):
    r = teach(client, IMAGES, label="ALEXANDRINE PARAKEET")
    body = r.get_json()
    assert r.status_code == 200 and body["new_species"] is False
    assert body["species"]["scientific_name"] == "Psittacula eupatria"
    assert labels_for(client, HELD_OUT)[0] == "ALEXANDRINE PARAKEET"
    r = post(client, [], path="/species/forget", field="images", headers=AUTH, label="alexandrine parakeet")
    assert r.status_code == 200
