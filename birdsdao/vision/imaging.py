"""Every uploaded picture goes through ``decode_image``: bytes → one upright 8-bit RGB ``PIL.Image``, or an
``APIError`` with the contract's 4xx code. Also the crop/resize helpers the models share."""
from __future__ import annotations

import ctypes
import io
import logging
import sys
import threading
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import APIError

# What /detect accepts (API.md); anything else Pillow could open (TIFF, PSD, ...) is refused with 415.
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}  # MPO: multi-picture JPEG from phone cameras
DEFAULT_MAX_SIDE = 1600  # downscale once on arrival: the detector works at <= 640 px and crops at 224 px

log = logging.getLogger(__name__)


def _pillow_open():
    """Pillow's own ``Image.open``. Ultralytics replaces it on import with an opener that, on bytes Pillow
    cannot identify, tries to install pi-heif and then raises ModuleNotFoundError; uploads must not go there.
    Looked up per call because ultralytics may be imported after this module. (birdsdao/environment.py also
    switches Ultralytics' auto-install off; this keeps the 400's message about the image either way.)"""
    opener = Image.open
    if opener.__module__ != Image.__name__:  # patched: the patch keeps the original beside it
        opener = getattr(sys.modules.get(opener.__module__), "_image_open", opener)
    return opener


def decode_image(data: bytes, *, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[Image.Image, float]:
    """Decode an upload. Returns (RGB image, scale) where scale = decoded size / original size (<= 1),
    so boxes found on the image map back to the uploaded image's pixels by dividing by it."""
    if not data:
        raise APIError(400, "no_image", "the uploaded image is empty")
    image, size = _open(data, max_pixels, max_side)
    pixels = image.size[0] * image.size[1]  # after a JPEG draft: what will really be decoded
    with _DECODING.hold(pixels, max_pixels):
        try:
            result = _decode(image, size, max_side)
        finally:
            del image  # the full-size pixels go before the memory is handed back
            if pixels > _TRIM_ABOVE_PIXELS:
                _give_memory_back()
    return result


def _open(data: bytes, max_pixels: int, max_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """The opened (not yet decoded) image and its size, after the format and pixel checks."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2x the limit raises) on decompression bombs; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _pillow_open()(io.BytesIO(data))
            fmt = image.format
            if fmt not in ACCEPTED_FORMATS:
                raise APIError(415, "unsupported_type", f"images must be JPEG, PNG, WebP or BMP (got {fmt})")
            width, height = image.size
            if width * height > max_pixels:
                raise APIError(400, "bad_image", f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
            image.seek(0)  # animated GIF/WebP/PNG: the first frame
            if fmt == "JPEG" and max(width, height) > 2 * max_side:
                # JPEG can decode at 1/2, 1/4, 1/8 scale directly: far less memory and time for phone photos.
                image.draft("RGB", (max_side, max_side))
    except APIError:
        raise
    except Exception as exc:
        _refuse(exc)
    return image, (width, height)


def _decode(image: Image.Image, size: tuple[int, int], max_side: int) -> tuple[Image.Image, float]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:
        _refuse(exc)
    orig_w, orig_h = _oriented_size(image, *size)
    if max(image.size) > max_side and image.mode in _RESIZABLE_MODES:
        # Scaled down before any rotation or conversion, each of which would copy the full-size pixels
        # (a 6000x6000 PNG is 108 MB per copy). Scaling commutes with the EXIF rotation.
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image, image.size[0] / orig_w


def _refuse(exc: Exception):
    """A failure to open or decode an upload, as the contract's 400."""
    if isinstance(exc, Image.DecompressionBombError):
        raise APIError(400, "bad_image", "image dimensions are too large (decompression bomb)") from None
    if isinstance(exc, UnidentifiedImageError):
        raise APIError(400, "bad_image", "the upload is not a readable image") from None
    # Truncated / corrupt data, or a plugin's failure: any failure here is the upload's. The exception stays
    # in the log: naming it to the client tells nothing useful and leaks internals.
    log.info("upload not decoded: %r", exc)
    raise APIError(400, "bad_image", "the image could not be decoded") from None


# Modes Pillow resizes as they are (RGBA and LA with premultiplied alpha); others are converted first.
_RESIZABLE_MODES = {"RGB", "RGBA", "L", "LA"}
# After decoding more pixels than this, freed memory is handed back to the OS at once.
_TRIM_ABOVE_PIXELS = 8_000_000


class _PixelBudget:
    """At most ``limit`` pixels being decoded at once, over all request threads; a single image larger than
    that decodes alone. Eight 6000x6000 PNGs at a time used to hold eight full-size copies (the worker went
    from 1.2 to 3.3 GB, bench/bench_large_png.py); with MAX_IMAGE_PIXELS as the budget it is one at a time,
    while small photos go on decoding beside it."""

    def __init__(self):
        self._busy = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, limit: int):
        with self._changed:
            while self._busy and self._busy + pixels > limit:
                self._changed.wait()
            self._busy += pixels
        try:
            yield
        finally:
            with self._changed:
                self._busy -= pixels
                self._changed.notify_all()


_DECODING = _PixelBudget()
_libc = None


def _give_memory_back() -> None:
    """Return freed heap pages to the OS (glibc keeps large freed blocks in its arenas otherwise: the worker
    stayed at 3.0 GB after the large-PNG load ended)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 - only glibc has it
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def _oriented_size(image: Image.Image, width: int, height: int) -> tuple[int, int]:
    """The uploaded image's size as the user sees it (after EXIF rotation), before any draft downscale."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make an otherwise fine photo unreadable
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (1, L, LA, P with transparency, RGBA, CMYK, I;16, I, F) → 8-bit RGB, alpha over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit greyscale: stretch to the image's own range instead of clipping at 255.
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def crop_with_margin(image: Image.Image, box, margin: float) -> Image.Image:
    """The box grown by ``margin`` of its size on each side (birds' tails and bills stay in), clipped."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    w, h = image.size
    return image.crop((max(0, int(x1 - dx)), max(0, int(y1 - dy)), min(w, int(x2 + dx + 0.5)), min(h, int(y2 + dy + 0.5))))


def to_model_input(image: Image.Image, size: int = 224) -> np.ndarray:
    """Square-resize for the MobileNets (trained on squashed, not letterboxed, crops)."""
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
