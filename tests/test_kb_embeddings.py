"""The embedder registry under concurrency: a slow first load of one model holds up neither /healthz
(``describe``) nor requests for models already loaded, and concurrent first requests load a model once."""
from __future__ import annotations

import threading

import pytest

from birdsdao.kb.embeddings import DEFAULT_MODEL, EmbedderRegistry
from tests.threads import WAIT, hold, run_in_thread, waiting_on


class HeldLoadRegistry(EmbedderRegistry):
    """The real registry and the real e5 model; a load of any other name is held open until ``release`` is
    set (a fake only in that it stands for a slow sentence-transformers load), then yields the e5 model."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.loads: list[str] = []
        self.fail_with: Exception | None = None

    def _load(self, name):
        if name == DEFAULT_MODEL:
            return super()._load(name)
        self.loads.append(name)
        hold(self.entered, self.release, "load")
        if self.fail_with is not None:
            raise self.fail_with
        return self.get(DEFAULT_MODEL)


@pytest.fixture
def registry():
    registry = HeldLoadRegistry()
    registry.get()  # as build() does: the default model is loaded before the server answers
    yield registry
    registry.release.set()  # never leave a held thread behind, whatever failed


def test_a_held_first_load_blocks_neither_describe_nor_loaded_models_and_loads_once_with_fake_slow_loader(registry):
    default = registry.get()
    first = run_in_thread(registry.get, "slow-st-model")
    assert registry.entered.wait(WAIT)
    waiting = waiting_on(registry._loading["slow-st-model"])
    second = run_in_thread(registry.get, "slow-st-model")  # arrives while the first load is still held open
    assert waiting.wait(WAIT)  # ...and waits for that load rather than starting its own

    described = run_in_thread(registry.describe)
    loaded = run_in_thread(registry.get, DEFAULT_MODEL)
    assert described["done"].wait(WAIT) and loaded["done"].wait(WAIT), "waited behind another model's load"
    assert described["value"]["loaded_models"] == [DEFAULT_MODEL]
    assert described["value"]["loading_models"] == ["slow-st-model"]
    assert loaded["value"] is default
    assert not first["done"].is_set() and not second["done"].is_set()  # both still wait for the one load

    registry.release.set()
    assert first["done"].wait(WAIT) and second["done"].wait(WAIT)
    assert first["value"] is second["value"] is registry.get("slow-st-model")
    assert registry.loads == ["slow-st-model"]  # two concurrent first gets, one load
    assert registry.describe()["loaded_models"] == sorted([DEFAULT_MODEL, "slow-st-model"])
    assert registry.describe()["loading_models"] == []


def test_a_failed_load_reaches_every_waiter_and_is_retried_later_with_fake_failing_loader(registry):
    registry.fail_with = OSError("no such model folder")
    first = run_in_thread(registry.get, "broken-model")
    assert registry.entered.wait(WAIT)
    waiting = waiting_on(registry._loading["broken-model"])
    second = run_in_thread(registry.get, "broken-model")
    assert waiting.wait(WAIT)
    registry.release.set()
    assert first["done"].wait(WAIT) and second["done"].wait(WAIT)
    assert isinstance(first["error"], OSError) and isinstance(second["error"], OSError)
    assert registry.loads == ["broken-model"]
    assert registry.describe()["loading_models"] == [] and "broken-model" not in registry.describe()["loaded_models"]

    registry.fail_with = None  # the model is there now (e.g. copied in): the next request loads it
    assert registry.get("broken-model") is registry.get()
    assert registry.loads == ["broken-model", "broken-model"]


def test_the_allowed_list_names_what_a_request_may_ask_for():
    registry = EmbedderRegistry(allowed=["BAAI/bge-small-zh"])
    assert registry.allows("BAAI/bge-small-zh") and registry.allows(None) and registry.allows("e5-small")
    assert not registry.allows("/some/other/model")
    assert EmbedderRegistry(allowed=None).allows("/some/other/model")
