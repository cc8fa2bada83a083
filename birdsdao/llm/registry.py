"""Which answer backends exist and how each is built: model_type -> factory, enabled by one config key.
Each configured backend is loaded once; a load failure is recorded and answered as 503 with its reason."""
from __future__ import annotations

import logging
import pkgutil
import time
from dataclasses import dataclass

from ..errors import APIError
from .base import Backend, Gate

log = logging.getLogger(__name__)

# model_type -> (factory "module:function", config key that enables it; None = always on).
# Adding a backend is one line here plus its module.
FACTORIES: dict[str, tuple[str, str | None]] = {
    "extractive": ("birdsdao.llm.extractive:create", None),
    "llama": ("birdsdao.llm.llama:create", "LLAMA_MODEL"),
    "chatglm2": ("birdsdao.llm.transformers_chat:create_chatglm2", "CHATGLM2_PATH"),
    "transformers": ("birdsdao.llm.transformers_chat:create", "TRANSFORMERS_MODEL"),
    "openai": ("birdsdao.llm.openai_api:create", "OPENAI_BASE_URL"),
}
# The seed web service's form values (its page posted these), answered by the backend they meant.
ALIASES: dict[str, str] = {"Local-GLM": "chatglm2", "ChatGpt": "openai"}


@dataclass
class Entry:
    name: str
    backend: Backend | None = None
    error: str | None = None
    gate: Gate | None = None
    load_ms: float = 0.0

    def to_dict(self, default: str) -> dict:
        b = self.backend
        info = {"name": self.name, "default": self.name == default, "loaded": b is not None,
                "load_ms": round(self.load_ms, 1)}
        if b is not None:
            info.update({"generative": b.generative, "backend_kind": b.kind, "context_window": b.context_window,
                         "vision": b.vision, **b.describe()})
        else:
            info["error"] = self.error
        return info


class Registry:
    def __init__(self, config, services):
        self.default = config["DEFAULT_MODEL"]
        self.entries: dict[str, Entry] = {}
        queue = int(config["LLM_QUEUE_SIZE"])
        for name, (target, key) in FACTORIES.items():
            if key is not None and not config[key]:
                continue
            entry = Entry(name)
            start = time.perf_counter()
            try:
                entry.backend = pkgutil.resolve_name(target)(name, config, services)
                concurrency = 1 if entry.backend.local else int(config["LLM_REMOTE_CONCURRENCY"])
                entry.gate = Gate(name, concurrency=concurrency, queue_size=queue,
                                  retry_after_s=int(config["LLM_RETRY_AFTER_S"]))
            except Exception as exc:  # one broken model must not take the others down
                log.exception("answer backend %s failed to load", name)
                entry.error = f"{type(exc).__name__}: {exc}"
            entry.load_ms = (time.perf_counter() - start) * 1000
            self.entries[name] = entry

    def get(self, name: str | None) -> Entry:
        name = ALIASES.get(name, name) if name else self.default
        entry = self.entries.get(name)
        if entry is None:
            if name in FACTORIES:
                raise APIError(503, "model_unavailable",
                               f"backend '{name}' is not configured on this server (set BIRDSDAO_{FACTORIES[name][1]})")
            raise APIError(404, "unknown_model", f"unknown model_type '{name}'; configured: {', '.join(self.entries)}")
        if entry.backend is None:
            raise APIError(503, "model_unavailable", f"backend '{name}' failed to load: {entry.error}")
        return entry

    def to_dict(self) -> dict:
        return {"default": self.default,
                "models": [e.to_dict(self.default) for e in self.entries.values()],
                "not_configured": [n for n in FACTORIES if n not in self.entries], "aliases": dict(ALIASES)}
