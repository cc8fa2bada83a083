"""Putting the photo a question is about into a vision-capable backend's chat messages: the one place that knows
the content-list shapes (OpenAI's ``image_url`` parts, also read by llama-cpp-python's multimodal handlers, and
transformers processors' ``image`` parts)."""
from __future__ import annotations

import base64
import io


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def openai_image_part(jpeg: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_uri(jpeg)}}


def as_parts(content) -> list[dict]:
    """A message's content as a list of parts (plain strings become one text part)."""
    return list(content) if isinstance(content, list) else [{"type": "text", "text": str(content)}]


def with_image(messages: list[dict], image_part: dict, all_parts: bool = False) -> list[dict]:
    """A copy of ``messages`` whose last user message leads with ``image_part`` before its text (the order
    LLaVA-style and Qwen-VL prompts are trained on). ``all_parts``: every message's content becomes a part list
    too (processor chat templates that only read lists). The input list is not changed."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("no user message to attach the image to")
    out = []
    for i, m in enumerate(messages):
        if i == last_user:
            out.append({**m, "content": [image_part, *as_parts(m["content"])]})
        elif all_parts:
            out.append({**m, "content": as_parts(m["content"])})
        else:
            out.append(dict(m))
    return out


def decode_rgb(jpeg: bytes):
    """The photo as an RGB PIL image (the bytes come from the server's own upload handling, already bounded)."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return im.convert("RGB")
