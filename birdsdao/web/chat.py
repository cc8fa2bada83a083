"""Answers: POST /get_response (JSON or server-sent events) and GET /models (the answer backends)."""
from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify

from ..llm import AnswerRequest
from ..llm.answer import MODES
from ..llm.prompts import PROMPT_TYPES
from ..services import get_service
from ..errors import APIError
from .forms import bool_field, choice_field, files_field, int_field, json_field, read_upload, text_field
from .photos import detect_and_keep, stored_photo

bp = Blueprint("chat", __name__)


@bp.post("/get_response")
def get_response():
    llm = get_service("llm")
    request = AnswerRequest(
        user_input=text_field("user_input", required=True, max_len=llm.max_input_chars),
        prompt_type=choice_field("prompt_type", PROMPT_TYPES, "chat"),
        model_type=text_field("model_type", max_len=64),
        mode=choice_field("mode", MODES, "plain"),
        kb_name=text_field("kb_name", max_len=64),
        history=json_field("history", default=[]),
        species_label=text_field("species_label", max_len=200),
        max_new_tokens=int_field("max_new_tokens", llm.max_new_tokens, lo=1, hi=llm.max_new_tokens),
    )
    llm.registry.get(request.model_type)  # an unknown or unavailable backend is refused before any photo is kept
    _attach_photo(request)
    if bool_field("stream", False):
        return Response(_SSE(llm.stream(request)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return jsonify(llm.answer(request).to_dict())


def _attach_photo(request: AnswerRequest) -> None:
    """``photo_id`` (a photo /detect kept) or an ``image`` upload (detected and kept now) → the request's
    photo record and JPEG; both at once is a 400, an unknown id 404, an expired one 410."""
    photo_id = text_field("photo_id", max_len=64)
    uploads = files_field("image", required=False, max_count=1)
    if photo_id is not None and uploads:
        raise APIError(400, "bad_field", "send either 'photo_id' or an 'image', not both")
    if uploads:
        # answered from the photo even when the store could not keep it (the response then has no photo_id)
        _result, photo, _warning = detect_and_keep(read_upload(uploads[0]), with_jpeg=True)
    elif photo_id is not None:
        photo = stored_photo(photo_id)
    else:
        return  # prompt_type=caption without a photo is refused by the answer service (400 photo_required)
    request.photo_id, request.photo, request.image = photo.photo_id, photo.record, photo.jpeg


class _SSE:
    """Server-sent events. Werkzeug calls ``close()`` when the response ends or the client goes away,
    even before the first event: that cancels the generation and frees the model."""

    def __init__(self, events):
        self.events = events

    def __iter__(self):
        for event in self.events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    def close(self) -> None:
        self.events.close()


@bp.get("/models")
def models():
    return jsonify(get_service("llm").models())
