"""Any chat GGUF through llama-cpp-python (Qwen, Llama, SmolLM2, ChatGLM/GLM-4 conversions...), using the
chat template stored in the GGUF, with the model's own tokenizer for context-window accounting. With a
projector file (LLAMA_MMPROJ) it is a vision model: llama-cpp-python's multimodal chat handler for the model
family reads the question's photo."""
from __future__ import annotations

import os
from typing import Iterator

from ..config import DEFAULTS
from .base import Backend, Limits, Prompt
from .vision import openai_image_part, with_image

# LLAMA_CHAT_HANDLER value -> llama-cpp-python's handler class (the Llava15ChatHandler family: each knows its
# model's prompt format and reads OpenAI-shaped image_url parts).
CHAT_HANDLERS = {
    "llava-1-5": "Llava15ChatHandler",
    "llava-1-6": "Llava16ChatHandler",
    "minicpm-v": "MiniCPMv26ChatHandler",
    "qwen2.5-vl": "Qwen25VLChatHandler",
    "moondream": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler",
    "llama-3-vision-alpha": "Llama3VisionAlphaChatHandler",
}


def handler_class(family: str):
    """The chat handler class for a model family (LLAMA_CHAT_HANDLER)."""
    from llama_cpp import llama_chat_format

    key = (family or "").strip().lower()
    if key not in CHAT_HANDLERS:
        raise ValueError(f"LLAMA_CHAT_HANDLER must name the vision model's family, one of: "
                         f"{', '.join(CHAT_HANDLERS)} (got {family!r})")
    return getattr(llama_chat_format, CHAT_HANDLERS[key])


def chat_handler(mmproj: str, family: str):
    """The multimodal chat handler for a projector file, checked before the (large) model loads: a missing file
    or one that is not GGUF fails here, by name; llama.cpp itself refuses a GGUF that is not a projector
    for this model at the warm-up."""
    cls = handler_class(family)
    if not os.path.isfile(mmproj):
        raise FileNotFoundError(f"LLAMA_MMPROJ: projector file not found: {mmproj}")
    with open(mmproj, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"LLAMA_MMPROJ: {mmproj} is not a GGUF file (a projector, e.g. mmproj-*.gguf, is expected)")
    return cls(clip_model_path=mmproj, verbose=False)


class LlamaBackend(Backend):
    kind = "generative"
    generative = True
    local = True

    def __init__(self, name: str, model_path: str, n_ctx: int = DEFAULTS["LLAMA_CONTEXT"], n_threads: int | None = None,
                 temperature: float = DEFAULTS["LLM_TEMPERATURE"], seed: int = 0, mmproj: str = "",
                 handler: str = ""):
        from llama_cpp import Llama  # imported here: the server runs without llama-cpp-python

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"GGUF file not found: {model_path}")
        self.model_path = model_path
        self.mmproj, self.handler = mmproj or "", handler or ""
        self.vision = bool(self.mmproj)
        extra = {"chat_handler": chat_handler(self.mmproj, self.handler)} if self.vision else {}
        threads = int(n_threads) if n_threads else None
        # One thread count for both phases: on a busy 2-core box, a 2-thread prompt phase that spins against
        # other processes was measured 10x slower than 1 thread (see bench/bench_llm.py).
        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=seed,
                         verbose=False, **extra)
        train_ctx = int(self.llm.metadata.get(f"{self.llm.metadata.get('general.architecture', '')}.context_length",
                                              n_ctx) or n_ctx)
        super().__init__(name, context_window=min(self.llm.n_ctx(), train_ctx))
        self.temperature = temperature
        # Warm-up: llama.cpp's first multi-token batch is several times slower than later ones; pay it at
        # start-up, not on the first user's question. With a projector this also loads it (mtmd): a projector
        # that does not fit the model fails here, at start-up.
        self.llm.create_chat_completion(messages=[{"role": "user", "content": "Hello, bird!"}], max_tokens=1)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        messages = prompt.messages
        if self.vision and prompt.image:
            messages = with_image(messages, openai_image_part(prompt.image))
        chunks = self.llm.create_chat_completion(messages=messages, max_tokens=limits.max_new_tokens,
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
        info = {"model": os.path.basename(self.model_path), "architecture": self.llm.metadata.get("general.architecture"),
                "vision": self.vision}
        if self.vision:
            info.update({"mmproj": os.path.basename(self.mmproj), "chat_handler": self.handler})
        return info


def create(name: str, config, services, path: str | None = None) -> LlamaBackend:
    """The ``llama`` backend (LLAMA_MODEL, with its projector LLAMA_MMPROJ if any), or any other GGUF ``path``
    served the same way (text only)."""
    vision = {} if path else {"mmproj": config["LLAMA_MMPROJ"], "handler": config["LLAMA_CHAT_HANDLER"]}
    return LlamaBackend(name, path or config["LLAMA_MODEL"], n_ctx=int(config["LLAMA_CONTEXT"]),
                        n_threads=config["LLAMA_THREADS"], temperature=float(config["LLM_TEMPERATURE"]), **vision)
