"""Answer backends and the "llm" service behind POST /get_response.

base.py (the backend interface, limits, queue gate) · registry.py (model_type -> backend, loaded once) ·
extractive.py / llama.py / transformers_chat.py / openai_api.py (one module per backend) · prompts.py
(templates, document fencing, context fitting, JSON repair) · entities.py (bird-entity recogniser) ·
answer.py (retrieval + prompt + backend -> Answer).
"""
from __future__ import annotations

from .answer import Answer, AnswerRequest, AnswerService

__all__ = ["Answer", "AnswerRequest", "AnswerService", "build"]


def build(config, services) -> AnswerService:
    return AnswerService(config, services)
