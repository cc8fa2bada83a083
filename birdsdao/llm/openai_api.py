"""Any OpenAI-compatible chat server (llama.cpp server, vLLM, Ollama, a hosted API) by base URL, model
name and key from configuration; replies are streamed over server-sent events. A model declared vision-capable
(OPENAI_VISION) gets the question's photo as an ``image_url`` part with a data URI."""
from __future__ import annotations

import json
from typing import Iterator

import httpx

from ..config import DEFAULTS
from ..errors import APIError
from .base import Backend, Limits, Prompt
from .vision import openai_image_part, with_image


class OpenAIBackend(Backend):
    kind = "generative"
    generative = True
    local = False  # the remote server queues for itself; we only bound our own concurrency

    def __init__(self, name: str, base_url: str, model: str | None, api_key: str | None = None,
                 context_window: int = DEFAULTS["OPENAI_CONTEXT"], timeout_s: float = DEFAULTS["LLM_TIMEOUT_S"],
                 temperature: float = DEFAULTS["LLM_TEMPERATURE"], vision: bool = DEFAULTS["OPENAI_VISION"]):
        super().__init__(name, context_window=context_window)
        self.vision = bool(vision)
        self.base_url = base_url.rstrip("/")
        self.model = model or "default"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Connect fast (a dead server is a quick 503); read as long as a generation may take.
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(timeout_s, connect=5.0))
        self.temperature = temperature

    def messages(self, prompt: Prompt) -> list[dict]:
        """The chat messages sent: with the photo in the last user message when the model can see it (a
        text-only model has the server's description of the photo in the messages already)."""
        if self.vision and prompt.image:
            return with_image(prompt.messages, openai_image_part(prompt.image))
        return prompt.messages

    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        body = {"model": self.model, "messages": self.messages(prompt), "max_tokens": limits.max_new_tokens,
                "temperature": self.temperature, "stream": True}
        try:
            with self.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    detail = response.read().decode("utf-8", "replace")[:300]
                    raise APIError(503, "model_unavailable",
                                   f"backend '{self.name}': the server answered {response.status_code}: {detail}")
                for line in response.iter_lines():
                    if limits.expired():
                        return  # leaving the with-block closes the connection: the server stops
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    choices = json.loads(data).get("choices") or [{}]
                    delta = (choices[0].get("delta") or {}).get("content")
                    if delta:
                        yield delta
        except httpx.HTTPError as exc:
            raise APIError(503, "model_unavailable",
                           f"backend '{self.name}' cannot reach {self.base_url}: {type(exc).__name__}") from exc

    def describe(self) -> dict:
        return {"model": self.model, "base_url": self.base_url, "vision": self.vision}


def create(name: str, config, services) -> OpenAIBackend:
    return OpenAIBackend(name, config["OPENAI_BASE_URL"], config["OPENAI_MODEL"], config["OPENAI_API_KEY"],
                         context_window=int(config["OPENAI_CONTEXT"]),
                         timeout_s=float(config["LLM_TIMEOUT_S"]),
                         temperature=float(config["LLM_TEMPERATURE"]), vision=bool(config["OPENAI_VISION"]))
