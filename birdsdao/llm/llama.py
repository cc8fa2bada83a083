"""Any chat GGUF through llama-cpp-python (Qwen, Llama, SmolLM2, ChatGLM/GLM-4 conversions...), using the
chat template stored in the GGUF, with the model's own tokenizer for context-window accounting."""
from __future__ import annotations

import os
from typing import Iterator

from ..config import DEFAULTS
from .base import Backend, Limits, Prompt


class LlamaBackend(Backend):
    kind = "generative"
    generative = True
    local = True

    def __init__(self, name: str, model_path: str, n_ctx: int = DEFAULTS["LLAMA_CONTEXT"], n_threads: int | None = None,
                 temperature: float = DEFAULTS["LLM_TEMPERATURE"], seed: int = 0):
        from llama_cpp import Llama  # imported here: the server runs without llama-cpp-python

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"GGUF file not found: {model_path}")
        self.model_path = model_path
        threads = int(n_threads) if n_threads else None
        # One thread count for both phases: on a busy 2-core box, a 2-thread prompt phase that spins against
        # other processes was measured 10x slower than 1 thread (see bench/bench_llm.py).
        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=seed,
                         verbose=False)
        train_ctx = int(self.llm.metadata.get(f"{self.llm.metadata.get('general.architecture', '')}.context_length",
                                              n_ctx) or n_ctx)
        super().__init__(name, context_window=min(self.llm.n_ctx(), train_ctx))
        self.temperature = temperature
        # Warm-up: llama.cpp's first multi-token batch is several times slower than later ones; pay it at
        # start-up, not on the first user's question.
        self.llm.create_chat_completion(messages=[{"role": "user", "content": "Hello, bird!"}], max_tokens=1)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        chunks = self.llm.create_chat_completion(messages=prompt.messages, max_tokens=limits.max_new_tokens,
                                                 temperature=self.temperature, stream=True)
        try:
            for chunk in chunks:
                delta = chunk["choices"][0].get("delta", {}).get("content")
                if delta:
                    yield delta
                if limits.expired():
                    return
        finally:
            chunks.close()  # stops llama.cpp decoding: the next token is never asked for

    def describe(self) -> dict:
        return {"model": os.path.basename(self.model_path), "architecture": self.llm.metadata.get("general.architecture")}


def create(name: str, config, services, path: str | None = None) -> LlamaBackend:
    """The ``llama`` backend (LLAMA_MODEL), or any other GGUF ``path`` served the same way."""
    return LlamaBackend(name, path or config["LLAMA_MODEL"], n_ctx=int(config["LLAMA_CONTEXT"]),
                        n_threads=config["LLAMA_THREADS"], temperature=float(config["LLM_TEMPERATURE"]))
