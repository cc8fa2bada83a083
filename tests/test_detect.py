"""POST /detect end to end with the real detector, LiteRT models and species catalogue."""
from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from werkzeug.test import EnvironBuilder

from .conftest import BIRDS525, NATURAL


# scikit-image's bundled sample photos, found without importing the package (its import leaves a file open).
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"


def photo(species: str) -> bytes:
    return next((NATURAL / species).iterdir()).read_bytes()


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(make_module_app):
    return make_module_app(["species", "vision"]).test_client()


def post(client, data: bytes, name="photo.jpg", path="/detect", field="image", **fields):
    """Werkzeug's test client spools bodies > 500 kB to a temp file it never closes (a ResourceWarning, an
    error under our pytest.ini); building the request ourselves lets us close it."""
    headers = fields.pop("headers", None)
    files = [(io.BytesIO(d), name) for d in data] if isinstance(data, list) else (io.BytesIO(data), name)
    builder = EnvironBuilder(path=path, method="POST", data={field: files, **fields}, headers=headers)
    environ = builder.get_environ()
    try:
        return client.open(environ)
    finally:
        environ["wsgi.input"].close()
        builder.close()


def test_field_photo_is_boxed_and_named_in_three_languages(client):
    r = post(client, photo("American_Robin"), top_k="3")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    with Image.open(NATURAL / "American_Robin" / next((NATURAL / "American_Robin").iterdir()).name) as im:
        assert body["image"] == {"width": im.width, "height": im.height}
    assert body["is_bird"] is True and len(body["detections"]) == 1
    det = body["detections"][0]
    x1, y1, x2, y2 = det["box"]
    assert 0 <= x1 < x2 <= body["image"]["width"] and 0 <= y1 < y2 <= body["image"]["height"]
    assert det["box_confidence"] > 0.5
    assert len(det["species"]) == 3
    best = det["species"][0]
    assert best["scientific_name"] == "Turdus migratorius" and best["english_name"] == "American Robin"
    assert best["chinese_name"] == "旅鸫" and best["chinese_name_source"] == "published"
    assert best["label"] == "AMERICAN ROBIN"
    confs = [s["confidence"] for s in det["species"]]
    assert confs == sorted(confs, reverse=True) and 0.5 < confs[0] <= 1 and sum(confs) <= 1.0001
    assert body["annotated_image"].startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(body["annotated_image"].split(",", 1)[1]))) as drawn:
        # a preview of the upload: same aspect, longest side capped at 1024 px
        w, h = body["image"]["width"], body["image"]["height"]
        assert max(drawn.size) == min(1024, max(w, h))
        assert abs(drawn.size[0] / drawn.size[1] - w / h) < 0.02
    assert {"decode", "detect", "classify", "annotate", "total"} <= set(body["timings_ms"])


def test_two_birds_in_one_photo_give_two_named_detections(client):
    left = Image.open(io.BytesIO(photo("Killdeer"))).convert("RGB")
    right = Image.open(io.BytesIO(photo("Boat-tailed_Grackle"))).convert("RGB")
    h = 600
    left = left.resize((round(left.width * h / left.height), h))
    right = right.resize((round(right.width * h / right.height), h))
    collage = Image.new("RGB", (left.width + right.width, h))
    collage.paste(left, (0, 0))
    collage.paste(right, (left.width, 0))
    body = post(client, encode(collage, "JPEG"), annotate="0").get_json()
    names = {d["species"][0]["english_name"] for d in body["detections"] if d["box_confidence"] >= 0.5}
    assert {"Killdeer", "Boat-tailed Grackle"} <= names
    assert "annotated_image" not in body
    killdeer = next(d for d in body["detections"] if d["species"][0]["english_name"] == "Killdeer")
    assert killdeer["box"][2] <= left.width + 5  # the killdeer's box is on the left half


def test_no_bird_box_falls_back_to_the_whole_image(client):
    # A tight BIRDS-525 crop where yolov8n finds no box (the bird fills the frame).
    body = post(client, (BIRDS525 / "ALEXANDRINE PARAKEET" / "4.jpg").read_bytes()).get_json()
    assert body["is_bird"] is True and len(body["detections"]) == 1
    det = body["detections"][0]
    assert det["box_confidence"] is None and det["box"] == [0.0, 0.0, 224.0, 224.0]
    assert "ALEXANDRINE PARAKEET" in [s["label"] for s in det["species"][:3]]


@pytest.mark.parametrize("sample", ["chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"])
def test_cat_car_and_things_are_not_birds(client, sample):
    data = (SKIMAGE_DATA / sample).read_bytes()
    body = post(client, data, name=sample).get_json()
    assert body["is_bird"] is False and body["detections"] == []


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "P"])
def test_odd_pixel_formats_are_answered(client, mode):
    base = Image.open(io.BytesIO(photo("Great_Egret")))
    if mode == "I;16":
        image, fmt = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257), "PNG"
    else:
        image, fmt = base.convert(mode), ("JPEG" if mode != "P" else "PNG")
    body = post(client, encode(image, fmt), annotate="0").get_json()
    assert body["is_bird"] is True
    assert body["detections"][0]["box_confidence"] > 0.5


def test_animated_webp_uses_its_first_frame(client):
    bird = Image.open(io.BytesIO(photo("Great_Egret"))).convert("RGB")
    bird.thumbnail((640, 640))
    blank = Image.new("RGB", bird.size, (128, 128, 128))
    buf = io.BytesIO()
    bird.save(buf, format="WEBP", save_all=True, append_images=[blank], duration=200)
    body = post(client, buf.getvalue(), name="a.webp", annotate="0").get_json()
    assert body["is_bird"] is True and body["detections"][0]["species"][0]["english_name"] == "Great Egret"


@pytest.mark.parametrize(
    "make, status, code",
    [
        (lambda: b"", 400, "no_image"),
        (lambda: b"%PDF-1.4 not an image", 400, "bad_image"),
        (lambda: photo("American_Robin")[:4000], 400, "bad_image"),
        (lambda: encode(Image.new("L", (8000, 8000))), 400, "bad_image"),  # 64 Mpx bomb > 40 Mpx limit
        (lambda: encode(Image.new("RGB", (16, 16)), "TIFF"), 415, "unsupported_type"),
    ],
    ids=["empty", "not-image", "truncated", "bomb", "tiff"],
)
def test_bad_uploads_get_the_contract_4xx(client, make, status, code):
    r = post(client, make())
    assert r.status_code == status and r.get_json()["code"] == code


def test_missing_image_and_bad_fields(client):
    r = client.post("/detect", data={"top_k": "3"})
    assert r.status_code == 400 and r.get_json()["code"] == "no_image"
    r = post(client, photo("American_Robin"), top_k="zero")
    assert r.status_code == 400 and r.get_json()["code"] == "bad_field"
    r = post(client, photo("American_Robin"), annotate="maybe")
    assert r.status_code == 400 and r.get_json()["code"] == "bad_field"


def test_junk_upload_is_a_400_that_never_reaches_ultralytics_auto_install(client, monkeypatch):
    """Ultralytics patches PIL.Image.open to pip-install pi-heif on bytes Pillow cannot identify; uploads must
    not go through it, and ultralytics in this process must have auto-install off."""
    import ultralytics.utils
    from ultralytics.utils import checks

    calls = []
    monkeypatch.setattr(checks, "check_requirements", lambda *a, **kw: calls.append(a) or False)
    r = post(client, b"hello")
    assert (r.status_code, r.get_json()["code"]) == (400, "bad_image")
    assert "ModuleNotFoundError" not in r.get_json()["error"] and calls == []
    r = post(client, [b"hello"] * 3, path="/species/teach", field="images", label="JUNK BIRD")
    assert (r.status_code, r.get_json()["code"]) == (400, "bad_image")
    r = post(client, photo("American_Robin")[:4000])  # truncated: fails inside Pillow's decoder instead
    assert (r.status_code, r.get_json()["code"]) == (400, "bad_image")
    assert "Error" not in r.get_json()["error"] and "could not be decoded" in r.get_json()["error"]
    assert calls == []
    assert checks.AUTOINSTALL is False and ultralytics.utils.ONLINE is False
