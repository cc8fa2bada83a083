"""Any OpenAI-compatible chat server (llama.cpp server, vLLM, Ollama, a hosted API) by base URL, model
name and key from configuration; replies are streamed over server-sent events."""
from __future__ import annotations

import json
from typing import Iterator

import httpx

from ..config import DEFAULTS
from ..errors import APIError
from .base import Backend, Limits, Prompt


class OpenAIBackend(Backend):
    kind = "generative"
    generative = True
    local = False  # the remote server queues for itself; we only bound our own concurrency

    def __init__(self, name: str, base_url: str, model: str | None, api_key: str | None = None,
                 context_window: int = DEFAULTS["OPENAI_CONTEXT"], timeout_s: float = DEFAULTS["LLM_TIMEOUT_S"],
                 temperature: float = DEFAULTS["LLM_TEMPERATURE"]):
        super().__init__(name, context_window=context_window)
        self.base_url = base_url.rstrip("/")
        self.model = model or "default"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Connect fast (a dead server is a quick 503); read as long as a generation may take.
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(timeout_s, connect=5.0))
        self.temperature = temperature

    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        body = {"model": self.model, "messages": prompt.messages, "max_tokens": limits.max_new_tokens,
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
        return {"model": self.model, "base_url": self.base_url}


def create(name: str, config, services) -> OpenAIBackend:
    return OpenAIBackend(name, config["OPENAI_BASE_URL"], config["OPENAI_MODEL"], config["OPENAI_API_KEY"],
                         context_window=int(config["OPENAI_CONTEXT"]),
                         timeout_s=float(config["LLM_TIMEOUT_S"]),
                         temperature=float(config["LLM_TEMPERATURE"]))
