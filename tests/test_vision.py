"""Vision parts without the HTTP layer: image decoding, the two LiteRT models, the ONNX detector against
Ultralytics' own predictor, and the CJK annotation font."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from birdsdao.config import DEFAULTS
from birdsdao.errors import APIError
from birdsdao.vision import annotate
from birdsdao.vision.backbone import ImageNetModel, INatBackbone, imagenet_bird_indices, make_interpreter
from birdsdao.vision.detector import OnnxBirdDetector, TorchBirdDetector, export_onnx
from birdsdao.vision.imaging import decode_image

from .conftest import BIRDS525, NATURAL, YOLO_WEIGHTS

MAX_PIXELS = DEFAULTS["MAX_IMAGE_PIXELS"]
ROBIN = next((NATURAL / "American_Robin").iterdir())
EAGLE = BIRDS525 / "BALD EAGLE" / "1.jpg"


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


# -- decoding -------------------------------------------------------------------------------------------
def test_exif_orientation_is_applied_and_reported_size_is_upright():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 99, 99), fill=(0, 0, 255))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held sideways: rotate 90° clockwise to view
    decoded, scale = decode_image(encode(image, "JPEG", exif=exif), max_pixels=MAX_PIXELS)
    assert decoded.size == (100, 200) and scale == 1.0
    top = np.asarray(decoded)[10, 50]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


@pytest.mark.parametrize("mode", ["L", "I;16", "CMYK", "P", "RGBA", "1"])
def test_every_pixel_mode_becomes_rgb(mode):
    base = Image.open(EAGLE)
    image = base.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257))
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    decoded, _ = decode_image(encode(image, fmt), max_pixels=MAX_PIXELS)
    assert decoded.mode == "RGB" and decoded.size == base.size
    assert np.asarray(decoded).std() > 10  # 16-bit was stretched, not clipped to white


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    decoded, _ = decode_image(encode(image, "PNG"), max_pixels=MAX_PIXELS)
    assert np.asarray(decoded).min() == 255


def test_animated_gif_is_refused_and_animated_webp_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(APIError) as err:  # GIF is not in the contract's list
        decode_image(buf.getvalue(), max_pixels=MAX_PIXELS)
    assert err.value.status == 415
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    decoded, _ = decode_image(buf.getvalue(), max_pixels=MAX_PIXELS)
    assert tuple(np.asarray(decoded)[20, 20]) [0] > 200  # red, the first frame


def test_large_photo_is_downscaled_once_and_scale_maps_back():
    image = Image.new("RGB", (4000, 3000), (10, 120, 30))
    decoded, scale = decode_image(encode(image, "JPEG"), max_pixels=MAX_PIXELS, max_side=1600)
    assert max(decoded.size) <= 1600
    assert round(decoded.size[0] / scale) == 4000 and round(decoded.size[1] / scale) == 3000


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "no_image"),
        (b"this is not an image at all", 400, "bad_image"),
        (ROBIN.read_bytes()[:5000], 400, "bad_image"),  # truncated JPEG
        (encode(Image.new("RGB", (8, 8)), "TIFF"), 415, "unsupported_type"),
    ],
    ids=["empty", "text", "truncated", "tiff"],
)
def test_bad_uploads_raise_the_contract_error(data, status, code):
    with pytest.raises(APIError) as err:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert (err.value.status, err.value.code) == (status, code)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 Mpx of zeros: ~70 kB on the wire
    assert len(bomb) < 200_000
    with pytest.raises(APIError) as err:
        decode_image(bomb, max_pixels=40_000_000)
    assert (err.value.status, err.value.code) == (400, "bad_image")


# -- the LiteRT models ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inat():
    return INatBackbone(DEFAULTS["INAT_MODEL"], DEFAULTS["LITERT_THREADS"])


def _crop(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.uint8)


def test_imagenet_bird_indices_are_exactly_the_bird_labels():
    labels = Path(DEFAULTS["IMAGENET_LABELS"]).read_text(encoding="utf-8").splitlines()
    birds = [labels[i] for i in imagenet_bird_indices()]
    assert birds[0].startswith("cock") and "great grey owl" in birds[17]
    assert "black swan" in birds[-21] and birds[-1].startswith("albatross")
    for i in (7, 26, 80, 102, 127, 148):  # neighbours outside the ranges are not birds
        assert i not in imagenet_bird_indices(), labels[i]


def test_float_logits_match_the_models_own_logits_tensor(inat):
    interp = make_interpreter(DEFAULTS["INAT_MODEL"], None, preserve=True)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], _crop(EAGLE)[None])
    interp.invoke()
    detail = next(d for d in interp.get_tensor_details() if d["name"] == "Logits/MatMul;Logits/BiasAdd")
    scale, zero = detail["quantization"]
    theirs = (interp.get_tensor(detail["index"])[0].astype(np.float32) - zero) * scale
    ours = inat.features(_crop(EAGLE)[None]).logits[0]
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99 and ours.argmax() == theirs.argmax()
    labels = Path(DEFAULTS["INAT_LABELS"]).read_text(encoding="utf-8").splitlines()
    assert "Bald Eagle" in labels[int(ours.argmax())]


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_zero_the_scores(inat, threads):
    """The shared README saw all-zero iNat scores with num_threads=2 on one build; check this build."""
    crops = np.stack([_crop(EAGLE), _crop(ROBIN)])
    other = INatBackbone(DEFAULTS["INAT_MODEL"], threads)
    ours, theirs = inat.features(crops), other.features(crops)
    assert np.abs(theirs.embeddings).sum() > 0
    np.testing.assert_allclose(theirs.logits, ours.logits, atol=1e-3)


def test_batched_call_equals_one_by_one(inat):
    crops = np.stack([_crop(EAGLE), _crop(ROBIN), _crop(BIRDS525 / "AMERICAN ROBIN" / "2.jpg")])
    batched = inat.embed(crops)
    single = np.concatenate([inat.embed(c[None]) for c in crops])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_imagenet_model_separates_a_bird_from_a_cat():
    from .test_detect import SKIMAGE_DATA

    model = ImageNetModel(DEFAULTS["IMAGENET_MODEL"])
    cat = np.asarray(Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB").resize((224, 224)))
    _, bird = model.run(np.stack([_crop(EAGLE), cat]))
    assert bird[0] > 0.5 and bird[1] < 0.05


# -- detector -------------------------------------------------------------------------------------------
def test_onnx_detector_finds_the_same_birds_as_ultralytics(tmp_path):
    image = Image.open(next((NATURAL / "Black-crowned_Night-Heron").iterdir())).convert("RGB")
    onnx = OnnxBirdDetector(export_onnx(str(YOLO_WEIGHTS), 320, tmp_path), 320, 0.25, 0.45)
    torch = TorchBirdDetector(str(YOLO_WEIGHTS), 320, 0.25, 0.45)
    # Confident boxes must agree; weak ones may differ (square letterbox + PIL resampling vs Ultralytics'
    # rectangular letterbox + OpenCV).
    a = [x for x in onnx(image) if x.confidence >= 0.5]
    b = [x for x in torch(image) if x.confidence >= 0.5]
    assert len(a) == len(b) >= 1
    for x, y in zip(a, b):
        assert np.allclose(x.xyxy, y.xyxy, atol=8.0) and abs(x.confidence - y.confidence) < 0.05
    mtime = Path(onnx.path).stat().st_mtime_ns
    again = export_onnx(str(YOLO_WEIGHTS), 320, tmp_path)  # cached, not exported again
    assert str(again) == onnx.path and again.stat().st_mtime_ns == mtime


# -- annotation font ------------------------------------------------------------------------------------
def test_cjk_font_is_found_and_draws_real_glyphs():
    path = annotate.find_font(None)
    assert path is not None, "install fonts-wqy-microhei (Debian) for Chinese captions"
    font = ImageFont.truetype(path, 32)

    def ink(text):
        canvas = Image.new("L", (200, 60), 0)
        ImageDraw.Draw(canvas).text((5, 5), text, font=font, fill=255)
        return np.asarray(canvas)

    glyphs = [ink(ch) for ch in "白头海雕"]
    tofu = ink("\U000f0000")  # a private-use code point: the font's .notdef box
    for g in glyphs:
        assert g.sum() > 0 and not np.array_equal(g, tofu)
    assert not np.array_equal(glyphs[0], glyphs[1])  # distinct shapes, not one fallback box


_DECODE_PEAK = """
import resource, sys, threading
from birdsdao.vision.imaging import decode_image
data = open(sys.argv[1], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
threads = [threading.Thread(target=decode_image, args=(data,), kwargs={"max_pixels": 40_000_000}) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_concurrent_large_png_decodes_share_one_memory_budget(tmp_path):
    """Four 5000x5000 RGBA PNGs (100 MB of pixels each, under the pixel limit) decoded by four threads at once,
    in a fresh process whose peak RSS is the measure: it used to grow by ~1.7 GB (every thread held several
    full-size copies); now one large decode runs at a time and is scaled down before any copy."""
    import subprocess
    import sys

    g = Image.linear_gradient("L").resize((5000, 5000))
    r = Image.radial_gradient("L").resize((5000, 5000))
    Image.merge("RGBA", (g, r, g, r)).save(tmp_path / "big.png", compress_level=1)
    out = subprocess.run([sys.executable, "-c", _DECODE_PEAK, str(tmp_path / "big.png")], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < 3 * 5000 * 5000 * 4, f"peak RSS grew by {grown / 2**20:.0f} MB"
