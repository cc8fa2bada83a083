"""Draw boxes and species names on the photo, with a font that has CJK glyphs (Chinese names must never
come out as tofu boxes), and return it as a JPEG data URL."""
from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Debian fonts-wqy-microhei first (what CI installs), then other common CJK fonts.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def find_font(configured: str | None) -> str | None:
    for candidate in ((configured,) if configured else ()) + FONT_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@lru_cache(maxsize=16)
def load_font(path: str | None, size: int):
    if path is None:
        return ImageFont.load_default(size)  # Latin only; /healthz reports the missing CJK font
    return ImageFont.truetype(path, size)


def caption(names: dict, confidence: float) -> str:
    name = names.get("chinese_name") or names.get("english_name") or names.get("label") or "?"
    english = names.get("english_name")
    if english and english != name:
        name = f"{name} {english}"
    return f"{name} {confidence:.0%}"


def draw(image: Image.Image, items: list[tuple[tuple[float, float, float, float], str]], font_path: str | None,
         quality: int = 85) -> str:
    """items: (box in this image's pixels, caption). → ``data:image/jpeg;base64,...``"""
    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    size = max(14, round(max(canvas.size) / 40))
    font = load_font(font_path, size)
    width = max(2, round(max(canvas.size) / 300))
    for i, (box, text) in enumerate(items):
        colour = COLOURS[i % len(COLOURS)]
        pen.rectangle(box, outline=colour, width=width)
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        x = max(0, min(box[0], canvas.size[0] - tw - 8))
        y = box[1] - th - 8 if box[1] - th - 8 >= 0 else box[1]
        pen.rectangle((x, y, x + tw + 8, y + th + 8), fill=colour)
        pen.text((x + 4 - left, y + 4 - top), text, fill=(255, 255, 255), font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
