"""The model registry: every heavy object is built once per process in ``init_services`` and reached
through ``get_service(name)``. A service that fails to build is recorded with its reason (``/healthz``
and the routes that need it answer 503) instead of crashing the server.
"""
from __future__ import annotations

import logging
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from .errors import APIError

log = logging.getLogger(__name__)

# name -> "module:function". Each builder takes (config: dict, services: Services) and returns the service;
# the order here is the build order (later services may use earlier ones). Adding a service is one line.
BUILDERS: dict[str, str] = {
    "species": "birdsdao.species:build",
    "vision": "birdsdao.vision:build",
    "embedder": "birdsdao.kb.embeddings:build",
    "kb": "birdsdao.kb:build",
    "llm": "birdsdao.llm:build",
}


@dataclass
class Slot:
    name: str
    obj: Any = None
    error: str | None = None
    load_ms: float = 0.0

    def to_dict(self) -> dict:
        info: dict = {"loaded": self.obj is not None, "load_ms": round(self.load_ms, 1)}
        if self.error:
            info["error"] = self.error
        describe = getattr(self.obj, "describe", None)
        if callable(describe):
            info.update(describe())
        return info


@dataclass
class Services:
    slots: dict[str, Slot] = field(default_factory=dict)

    def get(self, name: str):
        slot = self.slots.get(name)
        if slot is None:
            raise APIError(503, "model_unavailable", f"service '{name}' is not configured in this server")
        if slot.obj is None:
            raise APIError(503, "model_unavailable", f"service '{name}' failed to load: {slot.error}")
        return slot.obj

    def optional(self, name: str):
        """The service, or None when it is not configured or failed (for soft dependencies)."""
        slot = self.slots.get(name)
        return slot.obj if slot else None

    @property
    def healthy(self) -> bool:
        if not all(slot.obj is not None for slot in self.slots.values()):
            return False
        return all(getattr(slot.obj, "healthy", True) for slot in self.slots.values())

    def to_dict(self) -> dict:
        return {name: slot.to_dict() for name, slot in self.slots.items()}


def init_services(app) -> Services:
    """Build each configured service once; record failures instead of raising."""
    services = Services()
    config = app.config
    if config["BLAS_THREADS"] is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(config["BLAS_THREADS"]), user_api="blas")  # process-wide (config.py says why)
    for name in config["SERVICES"]:
        if name not in BUILDERS:
            raise ValueError(f"unknown service {name!r} in SERVICES; known: {sorted(BUILDERS)}")
    for name, target in BUILDERS.items():
        if name not in config["SERVICES"]:
            continue
        slot = Slot(name)
        start = time.perf_counter()
        try:
            slot.obj = pkgutil.resolve_name(target)(config, services)
        except Exception as exc:  # a broken model must not take the server down
            log.exception("service %s failed to load", name)
            slot.error = f"{type(exc).__name__}: {exc}"
        slot.load_ms = (time.perf_counter() - start) * 1000
        services.slots[name] = slot
    app.extensions["birdsdao"] = services
    return services


def services() -> Services:
    return current_app.extensions["birdsdao"]


def get_service(name: str):
    """The one way views reach a model: 503 ``model_unavailable`` when it is missing or broken."""
    return services().get(name)
