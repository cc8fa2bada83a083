"""Answer backends and the "llm" service behind POST /get_response (modules and behaviour: README.md)."""
from __future__ import annotations

from .answer import Answer, AnswerRequest, AnswerService

__all__ = ["Answer", "AnswerRequest", "AnswerService", "build"]


def build(config, services) -> AnswerService:
    return AnswerService(config, services)
