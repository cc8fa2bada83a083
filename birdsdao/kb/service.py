"""``KnowledgeBaseService``: the "kb" service other code calls (API and errors: see README.md)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULTS
from ..errors import APIError
from ..fileio import exclusive_lock
from .ingest import ChineseSentenceSplitter, IngestError, load_sections, make_chunks
from .jobs import ThreadJobs, make_jobs
from .names import sanitize_filename, validate_doc_name, validate_kb_name
from .search import MODES
from .store import Hit, KnowledgeBase, StoreError, folder_lock, read_current_manifest

__all__ = ["Hit", "KnowledgeBaseService", "build"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Upload limits; the numbers live in ``config.DEFAULTS`` (``KB_MAX_*``), one place, overridable."""

    max_file_bytes: int
    max_files: int
    max_chunks_per_doc: int
    max_unzipped_bytes: int
    max_zip_ratio: int
    max_zip_entries: int
    max_pdf_pages: int
    max_kbs: int

    @classmethod
    def from_config(cls, config=DEFAULTS) -> "Limits":
        keys = {f: f"KB_{f.upper()}" for f in cls.__dataclass_fields__}
        return cls(**{f: int(config[key]) for f, key in keys.items()})


class KnowledgeBaseService:
    def __init__(self, root: Path, embedders, *, limits: Limits | None = None,
                 chunk_size: int = DEFAULTS["KB_CHUNK_SIZE"], chunk_overlap: int = DEFAULTS["KB_CHUNK_OVERLAP"],
                 search_mode: str = DEFAULTS["KB_SEARCH_MODE"], bm25_weight: float = DEFAULTS["KB_BM25_WEIGHT"],
                 lang_balance: float = DEFAULTS["KB_LANG_BALANCE"],
                 default_kb: str = DEFAULTS["KB_DEFAULT"],
                 retry_after_s: int = DEFAULTS["KB_RETRY_AFTER_S"]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._setup(embedders, limits=limits, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                    search_mode=search_mode, bm25_weight=bm25_weight, lang_balance=lang_balance,
                    default_kb=default_kb, retry_after_s=retry_after_s)
        self._folders_lock = threading.Lock()  # serialises create/delete: the set of KB folders

    def _setup(self, embedders, *, limits: Limits | None = None, chunk_size: int = DEFAULTS["KB_CHUNK_SIZE"],
               chunk_overlap: int = DEFAULTS["KB_CHUNK_OVERLAP"], search_mode: str = DEFAULTS["KB_SEARCH_MODE"],
               bm25_weight: float = DEFAULTS["KB_BM25_WEIGHT"], lang_balance: float = DEFAULTS["KB_LANG_BALANCE"],
               default_kb: str = DEFAULTS["KB_DEFAULT"], retry_after_s: int = DEFAULTS["KB_RETRY_AFTER_S"]):
        """What both stores' services hold: embedders, limits, the splitter, search settings, build state, jobs."""
        self.embedders = embedders
        self.limits = limits or Limits.from_config()
        self.splitter = ChineseSentenceSplitter(chunk_size, chunk_overlap)
        if search_mode not in MODES:
            raise ValueError(f"KB_SEARCH_MODE must be one of {MODES}")
        self.search_mode = search_mode
        self.bm25_weight = float(bm25_weight)
        self.lang_balance = float(lang_balance)
        self.default_kb = default_kb
        self.retry_after_s = retry_after_s  # Retry-After of a 503 kb_building
        self._open: dict[str, KnowledgeBase] = {}
        self._opening: dict[str, Future] = {}  # KBs being opened: concurrent gets wait for that one open
        self.building: set[str] = set()   # KBs a background job is building (503 until ready)
        self.status: dict[str, dict] = {}  # what the last build of a bundled KB did
        # Guards _open and _opening only, never held while a KB opens: opening one loads its FAISS index, chunks
        # and BM25 matrix and maybe its embedding model (seconds for a sentence-transformers one), and requests
        # to other KBs must not wait behind that.
        self._lock = threading.Lock()
        # Uploads run in the background (upload_job): threads here unless build() was given a database.
        self.jobs = ThreadJobs(self.run_upload_job)

    # --- the folder of one KB: the only place a name becomes a path ---------------------------------------

    def _folder(self, kb_name: str) -> Path:
        folder = (self.root / validate_kb_name(kb_name)).resolve()
        if folder.parent != self.root:  # belt and braces: the name rule already forbids separators
            raise APIError(400, "bad_name", "kb_name")
        return folder

    def exists(self, kb_name: str) -> bool:
        return self._folder(kb_name).is_dir()

    def get(self, kb_name: str) -> KnowledgeBase:
        """The open KB (opened on first use); 404 ``unknown_kb``, 503 ``kb_building`` / ``kb_unavailable``.

        Each KB opens under its own Future, outside the service lock: concurrent first gets of one KB wait for
        that one open and share its KB or its error; a failed open is not remembered (the next get retries)."""
        folder = self._folder(kb_name)
        with self._lock:
            kb = self._open.get(kb_name)
            # replaced(): another worker deleted this KB and created a new one of the same name; the object open
            # here would answer 409 kb_changed to every request, so the new folder is opened instead.
            if kb is not None and folder.is_dir() and not kb.replaced():
                return kb
            self._open.pop(kb_name, None)
            opening = self._opening.get(kb_name)
            opener = opening is None
            if opener:
                # Checked in the same locked step that registers the open: a delete renames the folder, then
                # cancels any open registered before, so no open of a deleted folder survives (_finish_open).
                if not folder.is_dir():
                    if kb_name in self.building:
                        raise self._building_error(kb_name)
                    raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}")
                opening = self._opening[kb_name] = Future()
        if not opener:
            return opening.result()  # the open already under way: its KB, or its error
        try:
            kb, error = self._open_folder(folder, kb_name), None
        except StoreError as exc:
            kb, error = None, APIError(503, "kb_unavailable", str(exc))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter, then raised
            kb, error = None, exc
        kb, error = self._finish_open(kb_name, folder, opening, kb, error)
        if error is not None:
            opening.set_exception(error)
            raise error
        opening.set_result(kb)
        return kb

    def _finish_open(self, kb_name: str, folder: Path, opening: Future, kb, error):
        """Record what an open gave, unless a create or delete of this name came in meanwhile (it cancelled
        ``opening``, or the folder is gone): then what was read may belong to a folder that no longer exists,
        so the get is answered as one arriving now would be (404, or the KB a create put in place)."""
        with self._lock:
            current = self._opening.get(kb_name) is opening
            if current:
                del self._opening[kb_name]  # succeeded or failed, never remembered as "opening"
            current = current and folder.is_dir()
            if current and kb is not None:
                self._open[kb_name] = kb
        if current:
            return kb, error
        try:
            return self.get(kb_name), None
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the cancelled open
            return None, exc

    def _replace_open(self, kb_name: str, kb: KnowledgeBase | None) -> None:
        """After create/delete changed the folder of ``kb_name``: its open KB (or none), and any open of the
        old folder still under way cancelled, so it is neither kept nor handed out."""
        with self._lock:
            self._opening.pop(kb_name, None)
            if kb is None:
                self._open.pop(kb_name, None)
            else:
                self._open[kb_name] = kb

    def _open_folder(self, folder: Path, kb_name: str) -> KnowledgeBase:
        """Open a KB with the embedding model the manifest of the version it loaded names (the store may have
        fallen back to an older intact version); a model that no longer loads: 503. Loading embeds nothing."""
        kb = KnowledgeBase(folder, None, kb_name)
        kb.embedder = self._embedder(kb.snapshot.manifest.get("embed_model"), from_request=False)
        return kb

    def _embedder(self, name: str | None, *, from_request: bool):
        """``from_request``: named by /kb/create (KB_EMBED_MODELS applies; failure is the client's 400), else
        by an existing KB's manifest (written by this server; failure is a 503)."""
        try:
            if from_request and not self.embedders.allows(name):
                raise ValueError("not listed in KB_EMBED_MODELS")
            return self.embedders.get(name)
        except Exception as exc:  # noqa: BLE001 - any load failure becomes a clear JSON error
            # The detail stays in the log: echoing the name or the loader's text ("Path ... not found" vs
            # "Unrecognized model in ...") would tell a client which paths exist on the server.
            log.warning("embedding model %r cannot be used: %s", name, exc)
            if from_request:
                raise APIError(400, "bad_field", "'embed_model' is not an embedding model this server offers "
                                                 "(see KB_EMBED_MODELS)") from None
            raise APIError(503, "kb_unavailable", "this knowledge base's embedding model cannot be loaded") from None

    # --- knowledge bases -----------------------------------------------------------------------------

    def list(self) -> list[dict]:
        """Every KB's summary from its manifest alone: /kb/list, the page's first request, opens no index
        (what loading them costs: bench/bench_kb_list.py)."""
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                try:
                    out.append(self.info(entry.name))
                except APIError:
                    continue  # a foreign or broken folder is not listed
        return out

    def info(self, kb_name: str) -> dict:
        m = self._current_manifest(kb_name)
        # Each document's chunk count is in the manifest, written in the same commit as its chunks.
        return {"kb_name": kb_name, "description": m.get("description", ""), "docs": len(m["docs"]),
                "chunks": sum(d["chunks"] for d in m["docs"].values()), "embed_model": m.get("embed_model"),
                "updated_at": m.get("updated_at")}

    def _current_manifest(self, kb_name: str) -> dict:
        """The open KB's current manifest, else the one its CURRENT pointer names; only when that cannot be
        read is the KB opened (which falls back to an older intact version, or raises 404/503)."""
        folder = self._folder(kb_name)
        with self._lock:
            kb = self._open.get(kb_name)
        try:
            if kb is not None and folder.is_dir():
                return kb.current_manifest()
            return read_current_manifest(folder)
        except (OSError, ValueError):  # JSON and decoding errors are ValueErrors
            return self.get(kb_name).current().manifest

    def create(self, kb_name: str, description: str = "", embed_model: str | None = None, *, extra: dict | None = None) -> dict:
        folder = self._folder(kb_name)
        embedder = self._embedder(embed_model, from_request=True)
        with self._folders_lock:
            if folder.exists():
                raise APIError(409, "exists", f"a knowledge base named {kb_name!r} exists")
            if sum(1 for e in self.root.iterdir() if e.is_dir() and not e.name.startswith(".")) >= self.limits.max_kbs:
                raise APIError(400, "too_many", f"at most {self.limits.max_kbs} knowledge bases")
            kb = KnowledgeBase.create(folder, kb_name, embedder, description, embed_model or embedder.name, extra)
            # A get between the rename into place and here may have started opening the new folder too: it is
            # cancelled and answered with this KB, so one KB object per folder.
            self._replace_open(kb_name, kb)
        return self.info(kb_name)

    def delete(self, kb_name: str) -> None:
        folder = self._folder(kb_name)
        with self._folders_lock:
            if not folder.is_dir():
                raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}")
            # One rename makes it vanish atomically; the slow removal happens after. Rename first, then forget:
            # an open registered before the rename is cancelled here, one registered after it saw no folder.
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            try:
                # Under the folder's write lock: a commit under way (any worker) finishes first, and every later
                # one finds the folder gone or replaced and answers 409 kb_changed (store._writing).
                with folder_lock(folder):
                    os.rename(folder, trash)
            except FileNotFoundError:  # another worker deleted it first
                raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}") from None
            self._replace_open(kb_name, None)
        shutil.rmtree(trash, ignore_errors=True)

    def build_lock(self, kb_name: str):
        """Held while a bundled KB is built: across every worker process of this store (here, a flock)."""
        return exclusive_lock(self.root / f".{kb_name}-build.lock")

    # --- documents -----------------------------------------------------------------------------------

    def prepare(self, filename: str, data: bytes):
        """One upload → (doc_name, chunks, info) or a rejection message."""
        doc_name = sanitize_filename(filename, fallback_ext="txt")
        if len(data) > self.limits.max_file_bytes:
            return doc_name, None, f"file larger than {self.limits.max_file_bytes} bytes"
        try:
            sections = load_sections(doc_name, data, self.limits)
        except IngestError as exc:
            return doc_name, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a hostile file must give "rejected", never a 500
            log.warning("loader failed on %s: %r", doc_name, exc)
            return doc_name, None, f"unreadable file ({type(exc).__name__})"
        chunks = make_chunks(doc_name, sections, self.splitter)
        if not chunks:
            return doc_name, None, "no text found in the file"
        if len(chunks) > self.limits.max_chunks_per_doc:
            return doc_name, None, f"more than {self.limits.max_chunks_per_doc} chunks"
        info = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return doc_name, chunks, info

    def upload(self, kb_name: str, files: list[tuple[str, bytes]], replace: bool = False, *,
               bundled: bool = False, progress=None) -> list[dict]:
        """``bundled``: files the server itself ships (species cards), exempt from the per-upload count.
        ``progress(done, total)``: called between embedding batches; raising there abandons the upload."""
        kb = self.get(kb_name)
        if len(files) > self.limits.max_files and not bundled:
            raise APIError(400, "bad_field", f"at most {self.limits.max_files} files per upload")
        current = kb.current().docs
        results: list[dict | None] = []  # None: decided by the store under its lock
        ready, seen = [], set()
        for filename, data in files:
            doc_name, chunks, info = self.prepare(filename, data)
            if chunks is None:
                results.append({"doc_name": doc_name, "chunks": 0, "status": "rejected", "error": info})
            elif doc_name in seen:
                results.append({"doc_name": doc_name, "chunks": 0, "status": "rejected",
                                "error": "the same name twice in one upload"})
            elif doc_name in current and not replace:
                results.append({"doc_name": doc_name, "chunks": current[doc_name]["chunks"], "status": "skipped",
                                "error": "a document with this name exists (send replace=1 to replace it)"})
            else:
                seen.add(doc_name)
                results.append(None)
                ready.append((doc_name, chunks, info))
        # Embedding is the slow part: one batched pass for the whole upload, outside the KB's write lock.
        vectors = kb.embed_documents([(name, chunks) for name, chunks, _ in ready], progress)
        ready = [(name, chunks, v, info) for (name, chunks, info), v in zip(ready, vectors)]
        committed = iter(kb.add_documents(ready, replace) if ready else [])
        return [r if r is not None else next(committed) for r in results]

    def upload_job(self, kb_name: str, files: list[tuple[str, bytes]], replace: bool = False) -> dict:
        """``upload`` as a background job (404 for an unknown KB at once); the job's state (jobs.py)."""
        self.get(kb_name)
        return self.jobs.submit(kb_name, files, replace)

    def run_upload_job(self, kb_name: str, files: list[tuple[str, bytes]], replace: bool, progress) -> dict:
        """What a job runs, in this process's thread or in a ``birdsdao.worker``: the synchronous upload's answer."""
        return {"kb_name": kb_name, "files": self.upload(kb_name, files, replace, progress=progress)}

    def docs(self, kb_name: str) -> list[dict]:
        snap = self.get(kb_name).current()
        return [{"doc_name": name, "chunks": d["chunks"], "bytes": d.get("bytes", 0), "added_at": d["added_at"]}
                for name, d in sorted(snap.docs.items())]

    def delete_doc(self, kb_name: str, doc_name: str) -> None:
        kb = self.get(kb_name)
        validate_doc_name(doc_name)
        if not kb.delete_document(doc_name):
            raise APIError(404, "unknown_doc", f"no document named {doc_name!r} in {kb_name!r}")

    # --- search --------------------------------------------------------------------------------------

    def search(self, kb_name: str, query: str, top_k: int = 5, mode: str | None = None,
               bm25_weight: float | None = None, lang_balance: float | None = None) -> list[Hit]:
        kb = self.get(kb_name)
        if kb_name in self.building:  # half-built: an answer from a few cards would mislead
            raise self._building_error(kb_name)
        return kb.search(query, top_k, mode or self.search_mode,
                         self.bm25_weight if bm25_weight is None else bm25_weight,
                         self.lang_balance if lang_balance is None else lang_balance)

    def _building_error(self, kb_name: str) -> APIError:
        return APIError(503, "kb_building", f"knowledge base {kb_name!r} is being built; try again soon",
                        headers={"Retry-After": str(self.retry_after_s)})

    def describe(self) -> dict:
        with self._lock:
            opening = sorted(self._opening)
        return {"search_mode": self.search_mode, "bm25_weight": self.bm25_weight, "lang_balance": self.lang_balance, "default_kb": self.default_kb, "building": sorted(self.building),
                "opening": opening, "bundled": self.status,
                "kbs": sum(1 for e in self.root.iterdir() if e.is_dir() and not e.name.startswith(".")),
                "storage": "files"}


def build(config, services) -> KnowledgeBaseService:
    """The "kb" service: PostgreSQL when ``DATABASE_URL`` is set, else the folders under <instance>/kb (the one
    place the store is chosen; views and answers see the same interface either way)."""
    embedders = services.get("embedder")
    options = dict(limits=Limits.from_config(config), chunk_size=int(config["KB_CHUNK_SIZE"]),
                   chunk_overlap=int(config["KB_CHUNK_OVERLAP"]), search_mode=config["KB_SEARCH_MODE"],
                   bm25_weight=float(config["KB_BM25_WEIGHT"]), lang_balance=float(config["KB_LANG_BALANCE"]),
                   default_kb=config["KB_DEFAULT"], retry_after_s=int(config["KB_RETRY_AFTER_S"]))
    if config["DATABASE_URL"]:
        from .pg import PgKnowledgeBaseService

        service = PgKnowledgeBaseService(config["DATABASE_URL"], embedders,
                                         pool_size=int(config["DATABASE_POOL_SIZE"]),
                                         exact_below=int(config["KB_PG_EXACT_BELOW"]),
                                         ef_search=int(config["KB_PG_EF_SEARCH"]), **options)
    else:
        service = KnowledgeBaseService(Path(config["INSTANCE_PATH"]) / "kb", embedders, **options)
    service.jobs = make_jobs(config, service.run_upload_job)  # PostgreSQL's queue when DATABASE_URL is set
    from .species_kb import start_species_kb

    start_species_kb(service, services, config["KB_SPECIES_BUILD"])
    return service
