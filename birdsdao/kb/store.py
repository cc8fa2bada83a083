"""One knowledge base on disk and in memory: FAISS index, chunks and BM25 in versioned folders switched
atomically (crash safety, snapshots, locks and identity: see README.md)."""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from scipy import sparse

from ..errors import APIError
from ..fileio import exclusive_lock, fsync_dir, stat_key, write_atomic, write_synced  # shared by every store
from .embeddings import text_key
from .ingest import Chunk
from .search import (BM25, CANDIDATES, DEFAULT_BM25_WEIGHT, DEFAULT_LANG_BALANCE, DEFAULT_MODE, Vocabulary,
                     balance_languages, fuse, is_cjk_text, pad_columns, tokenize)

FORMAT = 1
POINTER = "CURRENT"
_VERSION_RE = re.compile(r"v(\d{6,})")
FILES = ("index.faiss", "chunks.jsonl", "bm25.npz", "vocab.json")



def _chunk_id(row: dict) -> str:
    """The public id of a stored chunk: its document and position."""
    return f"{row['doc']}#{row['pos']}"

class StoreError(RuntimeError):
    """A knowledge base folder with no loadable version."""


class KnowledgeBaseChanged(APIError):
    """The KB a request opened was deleted, or deleted and created again, before the request wrote or read."""

    def __init__(self, name: str):
        super().__init__(409, "kb_changed", f"the knowledge base {name!r} was deleted or replaced during this "
                                            "request; nothing was written")


def kb_identity(manifest: dict) -> str:
    """Which KB a manifest belongs to. KBs created before identities existed have no ``kb_id``: their creation
    time stands in, the same in every version of such a KB and never equal to a created KB's uuid."""
    return manifest.get("kb_id") or f"created-at:{manifest.get('created_at')!r}"


@dataclass(frozen=True)
class Hit:
    """One search result; ``to_dict`` is the JSON shape of /kb/search and of answer sources."""

    kb_name: str
    doc_name: str
    chunk_id: str
    score: float
    text: str
    heading: str = ""
    # What ``score`` is: the search mode that made it (rrf | vector | bm25 | weighted, see search.fuse), so a
    # reader is told "reciprocal-rank fusion, at most ≈0.033", not left to read 0.03 as 3 %.
    score_kind: str = ""

    def to_dict(self) -> dict:
        out = {"kb_name": self.kb_name, "doc_name": self.doc_name, "chunk_id": self.chunk_id,
               "score": round(self.score, 4), "text": self.text}
        if self.heading:
            out["heading"] = self.heading
        if self.score_kind:
            out["score_kind"] = self.score_kind
        return out


@dataclass
class Snapshot:
    """An immutable state of one knowledge base (never mutated after it is published)."""

    version: int
    manifest: dict
    chunks: list[dict]                 # row-aligned with ``ids`` and the BM25 matrix
    ids: np.ndarray                    # int64 FAISS ids
    index: faiss.Index
    counts: sparse.csr_matrix
    vocab: Vocabulary
    bm25: BM25 = field(init=False)
    row_of: dict = field(init=False)
    key_to_id: dict = field(init=False)

    def __post_init__(self):
        self.bm25 = BM25(self.counts, self.vocab)
        self.row_of = {int(i): r for r, i in enumerate(self.ids)}
        self.key_to_id = {c["key"]: int(i) for c, i in zip(self.chunks, self.ids)}

    @functools.cached_property
    def text_owner(self) -> dict:
        """Key of a chunk's shown text → a document carrying it (finds boilerplate shared across documents)."""
        return {text_key(c["text"]): c["doc"] for c in self.chunks}

    @property
    def docs(self) -> dict:
        return self.manifest["docs"]


def new_index(dim: int) -> faiss.Index:
    # fp16 codes: half the memory of float32 and ~4x faster brute force at 100k chunks, same ranking.
    return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingReuse:
    """How both stores embed new chunks (``KnowledgeBase`` here, ``kb.pg.PgKnowledgeBase``): the store answers
    two questions, which stored document carries a chunk text (``_text_owners``) and which embedded texts it
    already holds a vector for (``_stored_vectors``); both keyed by ``embeddings.text_key``."""

    def embed_documents(self, docs: list[tuple[str, list[Chunk]]], progress=None) -> list[np.ndarray]:
        """Vectors for the chunks of several new documents in one batched pass. Boilerplate (a chunk text
        that other documents also carry: headers, licences) is indexed by its bare text, not prefixed with
        this document's title, so it is embedded once for the whole knowledge base. ``progress``: see
        ``embeddings.embed_array`` (it may raise to stop; nothing is written then)."""
        owners: dict[str, set] = {}
        for doc_name, chunks in docs:
            for chunk in chunks:
                owners.setdefault(text_key(chunk.text), set()).add(doc_name)
        stored_owner = self._text_owners(set(owners))
        for doc_name, chunks in docs:
            for chunk in chunks:
                key = text_key(chunk.text)
                other_doc = stored_owner.get(key)
                if len(owners[key]) > 1 or (other_doc is not None and other_doc != doc_name):
                    chunk.index_text = chunk.text
        flat = [c for _, chunks in docs for c in chunks]
        vectors = self.embed_chunks(flat, progress)
        out, start = [], 0
        for _, chunks in docs:
            out.append(vectors[start:start + len(chunks)])
            start += len(chunks)
        return out

    def embed_chunks(self, chunks: list[Chunk], progress=None) -> np.ndarray:
        """Vectors for new chunks: texts already in the index (same embedded text) reuse their stored
        vector, duplicates within the batch are embedded once, the rest go to the model in batches."""
        keys = [text_key(c.index_text or c.text) for c in chunks]
        out = np.zeros((len(chunks), self.current().manifest["dim"]), np.float32)
        stored = self._stored_vectors(keys)
        todo: dict[str, list[int]] = {}
        for row, key in enumerate(keys):
            if key in stored:
                out[row] = stored[key]
            else:
                todo.setdefault(key, []).append(row)
        if todo:
            firsts = [rows[0] for rows in todo.values()]
            vectors = self.embedder.embed_array([chunks[r].index_text or chunks[r].text for r in firsts],
                                                progress=progress)
            for vector, rows in zip(vectors, todo.values()):
                out[rows] = vector
        return out


class KnowledgeBase(EmbeddingReuse):
    def __init__(self, folder: Path, embedder, name: str):
        self.folder = folder
        self.name = name
        self.embedder = embedder
        self._lock = threading.Lock()
        self._pointer_stat = None
        self.kb_id: str | None = None  # the identity this object opened; set by the first load
        self.snapshot: Snapshot = self._load()
        self.kb_id = kb_identity(self.snapshot.manifest)

    # --- creation and loading ------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, name: str, embedder, description: str = "", embed_model: str = "",
               extra: dict | None = None) -> "KnowledgeBase":
        """Write version 1 (empty) into a temporary folder and rename it into place (the caller checked
        that ``folder`` does not exist)."""
        tmp = folder.parent / f".tmp-create-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            manifest = {"format": FORMAT, "kb_name": name, "description": description,
                        "embed_model": embed_model or embedder.name, "dim": embedder.dim,
                        "docs": {}, "next_id": 0, "created_at": time.time(), "updated_at": time.time()}
            manifest.update(extra or {})
            manifest["kb_id"] = uuid.uuid4().hex  # after ``extra``: the identity is never the caller's
            empty = Snapshot(1, manifest, [], np.zeros(0, np.int64), new_index(embedder.dim),
                             sparse.csr_matrix((0, 1), dtype=np.float32), Vocabulary())
            (tmp / "v000001").mkdir()
            _write_version(tmp / "v000001", empty)
            _switch_pointer(tmp, 1)
            os.rename(tmp, folder)  # the KB appears complete or not at all
            fsync_dir(folder.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(folder, embedder, name)

    def _load(self) -> Snapshot:
        """The version CURRENT names; when it is missing or damaged, the newest intact one."""
        key = self._pointer_key()  # before reading it: a switch in between reloads again next time
        try:
            named = (self.folder / POINTER).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            named = ""
        try:
            entries = list(self.folder.iterdir())
        except FileNotFoundError:  # deleted by another worker since the pointer was checked
            if self.kb_id is not None:
                raise KnowledgeBaseChanged(self.name) from None
            raise StoreError(f"knowledge base {self.name!r} no longer exists") from None
        candidates = sorted((p.name for p in entries if _VERSION_RE.fullmatch(p.name)), reverse=True)
        if _VERSION_RE.fullmatch(named) and named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
        errors = []
        for candidate in candidates:
            try:
                snap = _read_version(self.folder / candidate)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                errors.append(f"{candidate}: {exc}")
                continue
            if self.kb_id is not None and kb_identity(snap.manifest) != self.kb_id:
                raise KnowledgeBaseChanged(self.name)  # another KB now lives at this path: never read it as ours
            self._pointer_stat = key
            return snap
        raise StoreError(f"knowledge base {self.name!r} has no loadable version ({'; '.join(errors) or 'empty'})")

    def current_manifest(self) -> dict:
        """The manifest of the latest committed version, without loading it: the snapshot's own while no
        process has switched CURRENT since it loaded (so a KB that fell back to an older version reports that
        one), else the small manifest file the pointer names."""
        if self._pointer_key() == self._pointer_stat:
            return self.snapshot.manifest
        return read_current_manifest(self.folder)

    def current(self) -> Snapshot:
        """The latest committed snapshot, reloading when another process switched CURRENT."""
        if self._pointer_key() not in (None, self._pointer_stat):
            with self._lock:
                self._refresh_locked()
        return self.snapshot

    def replaced(self) -> bool:
        """Whether the folder now holds another KB (deleted and created again, maybe by another worker). Costs
        one stat while CURRENT has not moved since this object loaded, else a read of the small manifest."""
        if self._pointer_key() in (None, self._pointer_stat):
            return False
        try:
            return kb_identity(read_current_manifest(self.folder)) != self.kb_id
        except (OSError, ValueError):
            return False  # gone or damaged: the caller's folder check, or current()'s fallback, handles it

    def _pointer_key(self):
        """stat_key of CURRENT: it changes exactly when some process switched the pointer."""
        return stat_key(self.folder / POINTER)

    # --- writes ----------------------------------------------------------------------------------------

    @contextmanager
    def _writing(self):
        with self._lock, ExitStack() as stack:
            try:
                stack.enter_context(folder_lock(self.folder))
            except FileNotFoundError:  # deleted since it was opened (only the taking of the lock is meant here)
                raise KnowledgeBaseChanged(self.name) from None
            # A delete renames the folder under this same lock, so once this passes the folder stays ours until
            # the lock is let go; a damaged pointer or manifest is left to the reload's fallback (_load checks
            # the identity of the version it falls back to).
            if self.replaced():
                raise KnowledgeBaseChanged(self.name)
            self._refresh_locked()
            yield self.snapshot

    def _refresh_locked(self):
        if self._pointer_key() not in (None, self._pointer_stat):
            self.snapshot = self._load()

    def _text_owners(self, keys: set[str]) -> dict[str, str]:
        snap = self.current()
        return {k: snap.text_owner[k] for k in keys if k in snap.text_owner}

    def _stored_vectors(self, keys: list[str]) -> dict[str, np.ndarray]:
        snap = self.current()
        known = [(k, snap.key_to_id[k]) for k in dict.fromkeys(keys) if k in snap.key_to_id]
        if not known:
            return {}
        vectors = snap.index.reconstruct_batch(np.asarray([i for _, i in known], np.int64))
        return {k: v for (k, _), v in zip(known, vectors)}

    def add_documents(self, docs: list[tuple[str, list[Chunk], np.ndarray, dict]], replace: bool) -> list[dict]:
        """Commit several documents in one new version: (doc_name, chunks, vectors, info). Returns one
        result per document: added / replaced / skipped (exists and replace is off)."""
        with self._writing() as snap:
            results, adds, removes = [], [], []
            for doc_name, chunks, vectors, info in docs:
                if doc_name in snap.docs and not replace:
                    results.append({"doc_name": doc_name, "chunks": snap.docs[doc_name]["chunks"], "status": "skipped",
                                    "error": "a document with this name exists (send replace=1 to replace it)"})
                    continue
                status = "replaced" if doc_name in snap.docs else "added"
                if status == "replaced":
                    removes.append(doc_name)
                adds.append((doc_name, chunks, vectors, info))
                results.append({"doc_name": doc_name, "chunks": len(chunks), "status": status})
            if adds:
                self._commit(snap, removes, adds)
            return results

    def delete_document(self, doc_name: str) -> bool:
        with self._writing() as snap:
            if doc_name not in snap.docs:
                return False
            self._commit(snap, [doc_name], [])
            return True

    def update_manifest(self, **fields) -> None:
        if "kb_id" in fields:
            raise ValueError("a knowledge base's identity never changes")
        with self._writing() as snap:
            self._commit(snap, [], [], fields)

    def _commit(self, snap: Snapshot, removes: list[str], adds: list, manifest_fields: dict | None = None) -> None:
        """Copy-on-write: build the next snapshot from ``snap``, persist it, then publish it."""
        manifest = json.loads(json.dumps(snap.manifest))
        remove_set = set(removes) | {name for name, *_ in adds}
        keep = np.asarray([c["doc"] not in remove_set for c in snap.chunks], dtype=bool)
        index = faiss.clone_index(snap.index)
        dropped = snap.ids[~keep]
        if dropped.size:
            index.remove_ids(dropped)  # the vectors leave the index, not only the list
        chunks = [c for c, k in zip(snap.chunks, keep) if k]
        ids = snap.ids[keep]
        counts = snap.counts[keep] if snap.counts.shape[0] else snap.counts
        for name in removes:
            manifest["docs"].pop(name, None)
        vocab = snap.vocab.copy()
        new_rows, new_ids, new_vectors, token_lists = [], [], [], []
        next_id = manifest["next_id"]
        for doc_name, doc_chunks, vectors, info in adds:
            manifest["docs"][doc_name] = {"chunks": len(doc_chunks), "added_at": time.time(), **info}
            for chunk, vector in zip(doc_chunks, vectors):
                row = {"doc": doc_name, "pos": chunk.position, "heading": chunk.heading, "text": chunk.text,
                       "key": text_key(chunk.index_text or chunk.text)}
                if chunk.index_text and chunk.index_text != chunk.text:
                    row["index_text"] = chunk.index_text
                new_rows.append(row)
                new_ids.append(next_id)
                next_id += 1
                new_vectors.append(vector)
                token_lists.append(tokenize(chunk.index_text or chunk.text))
        if new_rows:
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # bulk adds do use every core
            index.add_with_ids(np.asarray(new_vectors, np.float32), np.asarray(new_ids, np.int64))
            new_counts = vocab.counts(token_lists)
            width = max(len(vocab.terms), 1)
            counts = sparse.vstack([pad_columns(counts.tocsr(), width), new_counts], format="csr")
            chunks = chunks + new_rows
            ids = np.concatenate([ids, np.asarray(new_ids, np.int64)])
        manifest["next_id"] = next_id
        manifest["updated_at"] = time.time()
        manifest.update(manifest_fields or {})
        nxt = Snapshot(snap.version + 1, manifest, chunks, ids, index, counts.tocsr(), vocab)
        self._persist(nxt)
        self.snapshot = nxt

    def _persist(self, snap: Snapshot) -> None:
        final = self.folder / f"v{snap.version:06d}"
        tmp = self.folder / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _write_version(tmp, snap)
            if final.exists():  # a leftover of a crash between rename and pointer switch: never current
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _switch_pointer(self.folder, snap.version)
        self._pointer_stat = self._pointer_key()
        self._collect_garbage(keep={final.name, f"v{snap.version - 1:06d}"})

    def _collect_garbage(self, keep: set[str]) -> None:
        """Old versions beyond the previous one, and temp folders of crashed writers (we hold the lock)."""
        for entry in self.folder.iterdir():
            if (entry.name.startswith(".tmp-") or _VERSION_RE.fullmatch(entry.name)) and entry.name not in keep:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:  # a pointer write cut short
                    entry.unlink(missing_ok=True)

    # --- reads -----------------------------------------------------------------------------------------

    def search(self, query: str, top_k: int = 5, mode: str = DEFAULT_MODE,
               bm25_weight: float = DEFAULT_BM25_WEIGHT, lang_balance: float = DEFAULT_LANG_BALANCE) -> list[Hit]:
        snap = self.current()
        if not snap.chunks:
            return []
        vector_hits, bm25_hits = [], []
        if mode != "bm25":
            q = self.embedder.embed_array([query], is_query=True)
            # One query: FAISS's OpenMP threads cost more than they save and far more under contention
            # (measured at 100k chunks on the loaded 2-core box: 16 ms on 1 thread, 51-65 ms on 2).
            # OpenMP keeps the setting per OS thread, so this request thread alone is affected.
            faiss.omp_set_num_threads(1)
            scores, ids = snap.index.search(q, min(CANDIDATES, len(snap.chunks)))
            vector_hits = [(snap.row_of[int(i)], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            vector_hits = balance_languages(vector_hits, [is_cjk_text(snap.chunks[r]["text"]) for r, _ in vector_hits],
                                            lang_balance)
        if mode != "vector":
            bm25_hits = snap.bm25.top(query, CANDIDATES)
        hits = []
        for row, score in fuse(mode, vector_hits, bm25_hits, top_k, bm25_weight):
            c = snap.chunks[row]
            hits.append(Hit(self.name, c["doc"], _chunk_id(c), score, c["text"], c.get("heading", ""), mode))
        return hits

    def as_langchain(self):
        """The current snapshot as a LangChain ``FAISS`` vector store (docstore rebuilt from our JSON,
        sharing the index), for LangChain chains that want one."""
        import warnings

        from langchain_core.documents import Document

        with warnings.catch_warnings():  # langchain-community announces its sunset on import
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_community.docstore.in_memory import InMemoryDocstore
            from langchain_community.vectorstores import FAISS
            from langchain_community.vectorstores.utils import DistanceStrategy

        snap = self.current()
        docstore = InMemoryDocstore({str(i): Document(page_content=c["text"], metadata={
            "kb_name": self.name, "doc_name": c["doc"], "chunk_id": _chunk_id(c), "heading": c.get("heading", "")})
            for c, i in zip(snap.chunks, snap.ids)})
        return FAISS(self.embedder, snap.index, docstore, {int(i): str(i) for i in snap.ids},
                     distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)


@contextmanager
def folder_lock(folder: Path):
    """The exclusive file lock of a KB folder (threads and gunicorn workers alike), held by every commit and by
    a delete while it renames the folder away. Raises ``FileNotFoundError`` when the folder is gone, and makes
    sure the lock held is the one of the folder now at ``folder``: one renamed away meanwhile is reported gone
    (a folder created since under that name holds another KB, which the caller's identity check refuses)."""
    path = folder / ".lock"
    with exclusive_lock(path) as lockfile:
        if os.stat(path).st_ino != os.fstat(lockfile.fileno()).st_ino:
            raise FileNotFoundError(2, "the knowledge base folder was renamed away", str(folder))
        yield


def _write_index(index, path: Path) -> None:
    """``faiss.write_index``; a disk that refuses the write is reported as the OSError it is (FAISS raises a
    RuntimeError carrying the C library's message), so the server answers 507/503, not 500."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        refused = [code for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
                   if f"({os.strerror(code)})" in str(exc)]
        if refused:
            raise OSError(refused[0], os.strerror(refused[0]), str(path)) from exc
        raise


def _write_version(folder: Path, snap: Snapshot) -> None:
    """All files of one version, each fsynced; the manifest (with every file's hash) last."""
    _write_index(snap.index, folder / "index.faiss")
    with open(folder / "index.faiss", "rb+") as f:
        os.fsync(f.fileno())
    lines = []
    for chunk, i in zip(snap.chunks, snap.ids):
        lines.append(json.dumps({"id": int(i), **chunk}, ensure_ascii=False))
    write_synced(folder / "chunks.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    counts = snap.counts.tocsr()
    with open(folder / "bm25.npz", "wb") as f:
        np.savez(f, data=counts.data.astype(np.float32), indices=counts.indices.astype(np.int64),
                 indptr=counts.indptr.astype(np.int64), shape=np.asarray(counts.shape, np.int64))
        f.flush()
        os.fsync(f.fileno())
    write_synced(folder / "vocab.json", json.dumps(snap.vocab.terms, ensure_ascii=False).encode("utf-8"))
    manifest = dict(snap.manifest, version=snap.version, files={name: _sha256(folder / name) for name in FILES})
    write_synced(folder / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))
    fsync_dir(folder)


def _switch_pointer(folder: Path, version: int) -> None:
    write_atomic(folder / POINTER, lambda fh: fh.write(f"v{version:06d}\n".encode("ascii")), mode=0o644)


def read_current_manifest(folder: Path) -> dict:
    """The manifest of the version ``CURRENT`` names, read alone: no index, chunks or BM25 are loaded and the
    file hashes are not checked (a damaged version is found, and skipped, when the KB is opened)."""
    named = (folder / POINTER).read_text("ascii").strip()
    if not _VERSION_RE.fullmatch(named):
        raise ValueError(f"{POINTER} names no version: {named[:20]!r}")
    manifest = json.loads((folder / named / "manifest.json").read_text("utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError("not a manifest of this format")
    docs = manifest.get("docs")
    if not isinstance(docs, dict) or not all(isinstance(d, dict) and isinstance(d.get("chunks"), int)
                                             for d in docs.values()):
        raise ValueError("manifest without per-document chunk counts")
    return manifest


def _read_version(folder: Path) -> Snapshot:
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"unknown format {manifest.get('format')!r}")
    for name in FILES:
        if _sha256(folder / name) != manifest["files"][name]:
            raise ValueError(f"{name} does not match the manifest")
    index = faiss.read_index(str(folder / "index.faiss"))
    chunks, ids = [], []
    with open(folder / "chunks.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ids.append(row.pop("id"))
            chunks.append(row)
    with np.load(folder / "bm25.npz", allow_pickle=False) as z:
        counts = sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    vocab = Vocabulary(json.loads((folder / "vocab.json").read_text("utf-8")))
    ids_arr = np.asarray(ids, np.int64)
    if index.ntotal != len(chunks) or counts.shape[0] != len(chunks):
        raise ValueError("index, chunks and BM25 rows disagree")
    version = int(_VERSION_RE.fullmatch(folder.name).group(1))
    return Snapshot(version, manifest, chunks, ids_arr, index, counts, vocab)
