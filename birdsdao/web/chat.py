"""Answers: POST /get_response (JSON or server-sent events) and GET /models (the answer backends)."""
from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify

from ..llm import AnswerRequest
from ..llm.answer import MODES
from ..llm.prompts import PROMPT_TYPES
from ..services import get_service
from .forms import bool_field, choice_field, int_field, json_field, text_field

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
    if bool_field("stream", False):
        return Response(_SSE(llm.stream(request)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return jsonify(llm.answer(request).to_dict())


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
