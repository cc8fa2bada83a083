"""Knowledge bases in PostgreSQL (``DATABASE_URL`` set): ``PgKnowledgeBase`` and ``PgKnowledgeBaseService``,
the same interface as store.KnowledgeBase and service.KnowledgeBaseService over the tables of
birdsdao/migrations (kbs, documents, chunks). Vectors: pgvector, a partial HNSW index per embedding width,
scored by inner product as the file store's FAISS index is; keywords: PostgreSQL full-text search over a
tsvector of the same jieba tokens BM25 uses (search.tokenize). Every write is one transaction (see README.md)."""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import db
from ..config import DEFAULTS
from ..errors import APIError
from .embeddings import text_key
from .search import (CANDIDATES, DEFAULT_BM25_WEIGHT, DEFAULT_LANG_BALANCE, DEFAULT_MODE, balance_languages, fuse,
                     is_cjk_text, tokenize)
from .service import KnowledgeBaseService, Limits
from .names import validate_kb_name
from .store import EmbeddingReuse, Hit, KnowledgeBaseChanged

_MAX_LEXEME_BYTES = 2046  # PostgreSQL refuses longer lexemes
_MAX_POSITION = 16383     # and clamps positions beyond this


@dataclass(frozen=True)
class PgSnapshot:
    """What a PG KB's readers need of one committed version: its manifest (``docs`` included, the file store's
    shape) and the version number it was read at."""

    version: int
    manifest: dict

    @property
    def docs(self) -> dict:
        return self.manifest["docs"]


def tsvector_literal(text: str) -> str:
    """The tsvector of ``text``'s jieba tokens, with positions, as PostgreSQL's input syntax: built here, not by
    ``to_tsvector``, so Chinese is cut by jieba and no server-side parser or locale drops or changes a token."""
    positions: dict[str, list[int]] = {}
    for pos, token in enumerate(tokenize(text), start=1):
        if len(token.encode("utf-8")) <= _MAX_LEXEME_BYTES:
            positions.setdefault(token, []).append(min(pos, _MAX_POSITION))
    return " ".join(f"{_quote(t)}:{','.join(map(str, ps[:256]))}" for t, ps in positions.items())


def tsquery_literal(query: str) -> str:
    """Any of the query's tokens (OR, as BM25 scores a chunk that has any of them); '' when it has none."""
    tokens = [t for t in dict.fromkeys(tokenize(query)) if len(t.encode("utf-8")) <= _MAX_LEXEME_BYTES]
    return " | ".join(_quote(t) for t in tokens)


def hnsw_index_sql(dim: int) -> str:
    """The HNSW index of one embedding width (inner product: the vectors are unit length, as in FAISS)."""
    dim = int(dim)
    return (f"CREATE INDEX IF NOT EXISTS chunks_hnsw_{dim} ON chunks USING hnsw "
            f"((embedding::vector({dim})) vector_ip_ops) WHERE dim = {dim}")


def _quote(token: str) -> str:
    return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(map(repr, np.asarray(vector, np.float32).tolist())) + "]"


class PgKnowledgeBase(EmbeddingReuse):
    def __init__(self, pool, kb_id: str, name: str, embedder=None, *, exact_below: int, ef_search: int):
        self.pool = pool
        self.kb_id = kb_id
        self.name = name
        self.embedder = embedder
        self.exact_below = exact_below
        self.ef_search = ef_search
        self._lock = threading.Lock()
        self.snapshot: PgSnapshot = self._load()

    # --- reads of the committed state ---------------------------------------------------------------------

    def _load(self, conn=None) -> PgSnapshot:
        if conn is None:
            with self.pool.connection() as conn:
                return self._load(conn)
        row = conn.execute("SELECT version, manifest, dim FROM kbs WHERE kb_id = %s", (self.kb_id,)).fetchone()
        if row is None:
            raise KnowledgeBaseChanged(self.name)
        version, manifest, dim = row
        docs = {name: {"chunks": chunks, "added_at": added_at, **info} for name, chunks, added_at, info in
                conn.execute("SELECT name, chunks, added_at, info FROM documents WHERE kb_id = %s ORDER BY name",
                             (self.kb_id,))}
        return PgSnapshot(version, dict(manifest, kb_id=self.kb_id, kb_name=self.name, dim=dim, docs=docs))

    def _version(self) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT version FROM kbs WHERE kb_id = %s", (self.kb_id,)).fetchone()
        return None if row is None else row[0]

    def current(self) -> PgSnapshot:
        """The latest committed state: one indexed read while nothing changed, the manifest again when it did."""
        version = self._version()
        if version is None:
            raise KnowledgeBaseChanged(self.name)
        if version != self.snapshot.version:
            with self._lock:
                if version != self.snapshot.version:
                    self.snapshot = self._load()
        return self.snapshot

    def current_manifest(self) -> dict:
        return self.current().manifest

    def replaced(self) -> bool:
        return self._version() is None

    def _text_owners(self, keys: set[str]) -> dict[str, str]:
        if not keys:
            return {}
        with self.pool.connection() as conn:
            return dict(conn.execute("SELECT DISTINCT ON (text_key) text_key, doc_name FROM chunks "
                                     "WHERE kb_id = %s AND text_key = ANY(%s)", (self.kb_id, list(keys))))

    def _stored_vectors(self, keys: list[str]) -> dict[str, np.ndarray]:
        if not keys:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT DISTINCT ON (key) key, embedding FROM chunks WHERE kb_id = %s AND key = ANY(%s)",
                                (self.kb_id, list(dict.fromkeys(keys)))).fetchall()
        return {k: v.to_numpy().astype(np.float32) for k, v in rows}

    # --- writes: each one transaction, under the KB row's lock ---------------------------------------------

    @contextmanager
    def _writing(self):
        """A transaction holding the KB's row lock (every process's writes to this KB queue here); a KB deleted
        meanwhile is 409 kb_changed and nothing is written."""
        with self.pool.connection() as conn, conn.transaction():
            if conn.execute("SELECT 1 FROM kbs WHERE kb_id = %s FOR UPDATE", (self.kb_id,)).fetchone() is None:
                raise KnowledgeBaseChanged(self.name)
            yield conn

    def _bump(self, conn) -> None:
        """Part of every write that changed something: the version other processes compare, and updated_at."""
        conn.execute("UPDATE kbs SET version = version + 1, manifest = manifest || jsonb_build_object("
                     "'updated_at', %s::float8) WHERE kb_id = %s", (time.time(), self.kb_id))

    def add_documents(self, docs: list[tuple[str, list, np.ndarray, dict]], replace: bool) -> list[dict]:
        """All chunks of every document, or none: one transaction. Same results as the file store's."""
        from psycopg.types.json import Jsonb

        with self._writing() as conn:
            names = [d[0] for d in docs]
            existing = dict(conn.execute("SELECT name, chunks FROM documents WHERE kb_id = %s AND name = ANY(%s)",
                                         (self.kb_id, names)))
            results, adds = [], []
            for doc_name, chunks, vectors, info in docs:
                if doc_name in existing and not replace:
                    results.append({"doc_name": doc_name, "chunks": existing[doc_name], "status": "skipped",
                                    "error": "a document with this name exists (send replace=1 to replace it)"})
                    continue
                adds.append((doc_name, chunks, vectors, info))
                results.append({"doc_name": doc_name, "chunks": len(chunks),
                                "status": "replaced" if doc_name in existing else "added"})
            if not adds:
                return results
            conn.execute("DELETE FROM documents WHERE kb_id = %s AND name = ANY(%s)",
                         (self.kb_id, [a[0] for a in adds]))  # their chunks go by the cascade
            now = time.time()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO documents (kb_id, name, chunks, added_at, info) VALUES (%s, %s, %s, %s, %s)",
                                [(self.kb_id, name, len(chunks), now, Jsonb(info)) for name, chunks, _, info in adds])
                dim = self.snapshot.manifest["dim"]
                with cur.copy("COPY chunks (kb_id, doc_name, pos, heading, text, index_text, key, text_key, dim, "
                              "embedding, tsv) FROM STDIN") as copy:
                    for doc_name, chunks, vectors, _ in adds:
                        for chunk, vector in zip(chunks, vectors):
                            indexed = chunk.index_text or chunk.text
                            copy.write_row((self.kb_id, doc_name, chunk.position, chunk.heading or "", chunk.text,
                                            chunk.index_text if chunk.index_text and chunk.index_text != chunk.text
                                            else None, text_key(indexed), text_key(chunk.text), dim,
                                            _vector_text(vector), tsvector_literal(indexed)))
            self._bump(conn)
            return results

    def delete_document(self, doc_name: str) -> bool:
        with self._writing() as conn:
            if not conn.execute("DELETE FROM documents WHERE kb_id = %s AND name = %s", (self.kb_id, doc_name)).rowcount:
                return False
            self._bump(conn)
            return True

    def update_manifest(self, **fields) -> None:
        from psycopg.types.json import Jsonb

        if "kb_id" in fields:
            raise ValueError("a knowledge base's identity never changes")
        with self._writing() as conn:
            conn.execute("UPDATE kbs SET manifest = manifest || %s WHERE kb_id = %s", (Jsonb(fields), self.kb_id))
            self._bump(conn)

    # --- search -----------------------------------------------------------------------------------------

    def search(self, query: str, top_k: int = 5, mode: str = DEFAULT_MODE,
               bm25_weight: float = DEFAULT_BM25_WEIGHT, lang_balance: float = DEFAULT_LANG_BALANCE) -> list[Hit]:
        """As the file store's ``KnowledgeBase.search``: the same language balance and fusion weights."""
        snap = self.current()
        total = sum(d["chunks"] for d in snap.docs.values())
        if not total:
            return []
        vector_hits, text_hits = [], []
        # Embedded before a connection is taken: the pool's connections are not held through model time.
        q = self.embedder.embed_array([query], is_query=True)[0] if mode != "bm25" else None
        with self.pool.connection() as conn:
            if q is not None:
                vector_hits = self._vector_top(conn, q, snap.manifest["dim"], min(CANDIDATES, total), total)
                if vector_hits and lang_balance:
                    texts = dict(conn.execute("SELECT id, text FROM chunks WHERE id = ANY(%s)",
                                              ([i for i, _ in vector_hits],)).fetchall())
                    vector_hits = balance_languages(vector_hits, [is_cjk_text(texts.get(i, "")) for i, _ in vector_hits],
                                                    lang_balance)
            if mode != "vector":
                text_hits = self._text_top(conn, query)
            ranked = fuse(mode, vector_hits, text_hits, top_k, bm25_weight)
            rows = {r[0]: r[1:] for r in conn.execute(
                "SELECT id, doc_name, pos, heading, text FROM chunks WHERE id = ANY(%s)", ([i for i, _ in ranked],))}
        return [Hit(self.name, rows[i][0], f"{rows[i][0]}#{rows[i][1]}", score, rows[i][3], rows[i][2], mode)
                for i, score in ranked if i in rows]

    def _vector_top(self, conn, q: np.ndarray, dim: int, k: int, total: int) -> list[tuple[int, float]]:
        """(chunk id, inner product) of the k nearest chunks. A KB under ``exact_below`` chunks is scanned
        exactly (its rows by the kb_id index); a larger one asks the HNSW index of its width, and falls back to
        the exact scan if the index, shared with other KBs of that width, returned fewer than k of this one's."""
        dim = int(dim)  # a literal in the SQL: the partial index's predicate must be provable at plan time
        target = f"embedding::vector({dim})"
        params = {"q": _vector_text(q), "kb": self.kb_id, "k": k}
        if total >= self.exact_below:
            with conn.transaction():
                conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(self.ef_search, k)),))
                rows = conn.execute(f"SELECT id, -({target} <#> %(q)s::vector({dim})) FROM chunks "
                                    f"WHERE dim = {dim} AND kb_id = %(kb)s "
                                    f"ORDER BY {target} <#> %(q)s::vector({dim}) LIMIT %(k)s", params).fetchall()
            if len(rows) >= k:
                return [(int(i), float(s)) for i, s in rows]
        # "+ 0" keeps the planner off the HNSW index: an exact scan of this KB's rows.
        rows = conn.execute(f"SELECT id, s FROM (SELECT id, -({target} <#> %(q)s::vector({dim})) AS s FROM chunks "
                            f"WHERE dim = {dim} AND kb_id = %(kb)s) t ORDER BY s + 0 DESC LIMIT %(k)s",
                            params).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def _text_top(self, conn, query: str) -> list[tuple[int, float]]:
        tsquery = tsquery_literal(query)
        if not tsquery:
            return []
        # ts_rank with normalisation 1 (divided by 1 + log length): term frequency and length, no IDF
        # (bench/bench_kb_search_pg.py measures its agreement with the file store's BM25).
        rows = conn.execute("SELECT id, ts_rank(tsv, q, 1) AS r FROM chunks, CAST(%s AS tsquery) q "
                            "WHERE kb_id = %s AND tsv @@ q ORDER BY r DESC, id LIMIT %s",
                            (tsquery, self.kb_id, CANDIDATES)).fetchall()
        return [(int(i), float(r)) for i, r in rows]


class PgKnowledgeBaseService(KnowledgeBaseService):
    """The "kb" service over PostgreSQL: KBs are rows, not folders; a KB object is a cheap handle (no index is
    loaded into the process), so opening needs none of the file service's open-once machinery."""

    def __init__(self, url: str, embedders, *, pool_size: int = DEFAULTS["DATABASE_POOL_SIZE"],
                 exact_below: int = DEFAULTS["KB_PG_EXACT_BELOW"], ef_search: int = DEFAULTS["KB_PG_EF_SEARCH"],
                 **options):
        self._setup(embedders, **options)
        self.url = url
        self.pool = db.pool(url, max_size=pool_size)
        self.exact_below = exact_below
        self.ef_search = ef_search

    def _row(self, kb_name: str):
        validate_kb_name(kb_name)
        with self.pool.connection() as conn:
            return conn.execute("SELECT kb_id FROM kbs WHERE name = %s", (kb_name,)).fetchone()

    def exists(self, kb_name: str) -> bool:
        return self._row(kb_name) is not None

    def get(self, kb_name: str) -> PgKnowledgeBase:
        row = self._row(kb_name)
        if row is None:
            if kb_name in self.building:
                raise self._building_error(kb_name)
            raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}")
        with self._lock:
            kb = self._open.get(kb_name)
        if kb is not None and kb.kb_id == row[0]:
            return kb
        try:
            kb = PgKnowledgeBase(self.pool, row[0], kb_name, exact_below=self.exact_below, ef_search=self.ef_search)
        except KnowledgeBaseChanged:  # deleted between the two reads
            raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}") from None
        kb.embedder = self._embedder(kb.snapshot.manifest.get("embed_model"), from_request=False)
        with self._lock:
            self._open[kb_name] = kb
        return kb

    def list(self) -> list[dict]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT k.name, k.manifest, count(d.name), coalesce(sum(d.chunks), 0) FROM kbs k "
                                "LEFT JOIN documents d USING (kb_id) GROUP BY k.kb_id ORDER BY k.name").fetchall()
        return [self._info(name, m, docs, chunks) for name, m, docs, chunks in rows]

    def info(self, kb_name: str) -> dict:
        validate_kb_name(kb_name)
        with self.pool.connection() as conn:
            row = conn.execute("SELECT k.name, k.manifest, count(d.name), coalesce(sum(d.chunks), 0) FROM kbs k "
                               "LEFT JOIN documents d USING (kb_id) WHERE k.name = %s GROUP BY k.kb_id",
                               (kb_name,)).fetchone()
        if row is None:
            raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}")
        return self._info(*row)

    @staticmethod
    def _info(name, m, docs, chunks) -> dict:
        return {"kb_name": name, "description": m.get("description", ""), "docs": int(docs), "chunks": int(chunks),
                "embed_model": m.get("embed_model"), "updated_at": m.get("updated_at")}

    def create(self, kb_name: str, description: str = "", embed_model: str | None = None, *,
               extra: dict | None = None) -> dict:
        from psycopg import errors
        from psycopg.types.json import Jsonb

        validate_kb_name(kb_name)
        embedder = self._embedder(embed_model, from_request=True)
        dim = int(embedder.dim)
        now = time.time()
        manifest = {"format": 1, "description": description, "embed_model": embed_model or embedder.name,
                    "created_at": now, "updated_at": now, **(extra or {})}
        for key in ("kb_id", "kb_name", "dim", "docs"):  # columns and tables, never the caller's
            manifest.pop(key, None)
        try:
            with self.pool.connection() as conn, conn.transaction():
                # One creator at a time across every process: the KB count limit and the index of a new width.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.KB_CREATE_LOCK,))
                if conn.execute("SELECT count(*) FROM kbs").fetchone()[0] >= self.limits.max_kbs:
                    raise APIError(400, "too_many", f"at most {self.limits.max_kbs} knowledge bases")
                conn.execute(hnsw_index_sql(dim))
                conn.execute("INSERT INTO kbs (kb_id, name, dim, manifest) VALUES (%s, %s, %s, %s)",
                             (uuid.uuid4().hex, kb_name, dim, Jsonb(manifest)))
        except errors.UniqueViolation:
            raise APIError(409, "exists", f"a knowledge base named {kb_name!r} exists") from None
        with self._lock:
            self._open.pop(kb_name, None)
        return self.info(kb_name)

    def delete(self, kb_name: str) -> None:
        validate_kb_name(kb_name)
        # The row lock a commit holds makes this wait for it; later commits find the row gone (409 kb_changed).
        with self.pool.connection() as conn, conn.transaction():
            gone = conn.execute("DELETE FROM kbs WHERE name = %s", (kb_name,)).rowcount
        with self._lock:
            self._open.pop(kb_name, None)
        if not gone:
            raise APIError(404, "unknown_kb", f"no knowledge base named {kb_name!r}")

    def build_lock(self, kb_name: str):
        return db.advisory_lock(self.url, db.SPECIES_BUILD_LOCK)

    def describe(self) -> dict:
        with self.pool.connection() as conn:
            count = conn.execute("SELECT count(*) FROM kbs").fetchone()[0]
        return {"search_mode": self.search_mode, "default_kb": self.default_kb, "building": sorted(self.building),
                "opening": [], "bundled": self.status, "kbs": count, "storage": "postgresql"}
