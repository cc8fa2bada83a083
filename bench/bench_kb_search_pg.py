"""KB search on PostgreSQL (pgvector HNSW + jieba full-text search) against the file store (FAISS + BM25) in the
same run, on the same synthetic KB: random unit vectors of the embedder's width and random jieba-cut sentences
over the species names and bird vocabulary (bench_kb_search.py's corpus). Queries go through ``search`` (the
call /kb/search makes), query embedding included; its cost alone is printed so the stores' part shows.
Also: ingest time, whether PostgreSQL's plan uses the HNSW index, HNSW recall@10 against exact search, and how
many of the file store's BM25 top 10 the full-text ranking shares. PostgreSQL is a pgserver one (PG 16 +
pgvector) in a temporary folder; its default settings.

    nice -n 10 .venv/bin/python bench/bench_kb_search_pg.py [--chunks 100000] [--queries 100]
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kb_corpus  # noqa: E402
from bench_kb_search import sentences  # noqa: E402
from birdsdao.kb import KnowledgeBaseService  # noqa: E402
from birdsdao.kb.embeddings import EmbedderRegistry  # noqa: E402
from birdsdao.kb.ingest import Chunk  # noqa: E402
from birdsdao.kb.pg import PgKnowledgeBaseService, _vector_text, hnsw_index_sql  # noqa: E402

BATCH = 10_000  # chunks per document, one commit each


def percentiles(fn, queries) -> tuple[float, float]:
    fn(queries[0])  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.95)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    folder = tempfile.mkdtemp(prefix="bench-pg-")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        run(args, server.get_uri())
    finally:
        from birdsdao import db

        db.close_pools()
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def run(args, url: str):
    rng = random.Random(3)
    rows = kb_corpus.species_rows()
    registry = EmbedderRegistry()
    embedder = registry.get()
    queries = [q["question"] for q in random.Random(5).sample(kb_corpus.questions(rows, args.queries), args.queries)]
    files = KnowledgeBaseService(Path(tempfile.mkdtemp()) / "kb", registry)
    pg = PgKnowledgeBaseService(url, registry)
    for service in (files, pg):
        service.create("lat")
    kbs = {"file": files.get("lat"), "pg": pg.get("lat")}
    ingest = {"file": 0.0, "pg": 0.0}
    have, vec_rng = 0, np.random.default_rng(11)
    dim = embedder.dim
    while have < args.chunks:
        if have == BATCH:
            # The first batch went through the app's path with the HNSW index kept up to date on insert; the
            # rest is a bulk load: index dropped, rows added, index built once (as an operator would load).
            incremental = ingest["pg"] / BATCH * 1000
            with pg.pool.connection() as conn:
                conn.execute(f"DROP INDEX chunks_hnsw_{dim}")
        n = min(BATCH, args.chunks - have)
        texts = sentences(rows, n, rng)
        vectors = vec_rng.normal(size=(n, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for name, kb in kbs.items():
            chunks = [Chunk(f"doc{have}.txt", i, t, "", t) for i, t in enumerate(texts)]
            t = time.perf_counter()
            kb.add_documents([(f"doc{have}.txt", chunks, vectors, {"bytes": 0})], replace=False)
            ingest[name] += time.perf_counter() - t
        have += n
    build = 0.0
    with pg.pool.connection() as conn:
        if have > BATCH:
            t = time.perf_counter()
            conn.execute(hnsw_index_sql(dim))
            build = time.perf_counter() - t
        conn.execute("ANALYZE chunks")
    print(f"{have} chunks of width {dim}; ingest (one commit per {BATCH}): file {ingest['file']:.1f} s, "
          f"PostgreSQL {ingest['pg']:.1f} s + HNSW build {build:.1f} s")
    if have > BATCH:
        print(f"  (PostgreSQL with the HNSW index updated on insert, first {BATCH}: {incremental:.2f} ms per chunk)")
    with pg.pool.connection() as conn:
        q = _vector_text(embedder.embed_array([queries[0]], is_query=True)[0])
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN SELECT id FROM chunks WHERE dim = {dim} AND kb_id = %s ORDER BY embedding::vector({dim}) <#> "
            f"%s::vector({dim}) LIMIT 50", (kbs["pg"].kb_id, q)))
    print(f"PostgreSQL plan of the vector query uses the HNSW index: {f'chunks_hnsw_{dim}' in plan}")

    embed_p50, embed_p95 = percentiles(lambda q: embedder.embed_array([q], is_query=True), queries)
    print(f"query embedding alone: p50 {embed_p50:.1f} ms  p95 {embed_p95:.1f} ms")
    exact = PgKnowledgeBaseService(url, registry, exact_below=10 ** 9)
    results = {}
    for mode in ("rrf", "vector", "bm25"):
        line = []
        for name, service in (("file", files), ("pg", pg), ("pg-exact", exact)):
            if name == "pg-exact" and mode == "bm25":
                continue
            p50, p95 = percentiles(lambda q: service.search("lat", q, 10, mode), queries)
            results[(name, mode)] = p50
            line.append(f"{name} p50 {p50:6.1f} ms p95 {p95:6.1f}")
        ratio = results[("pg", mode)] / results[("file", mode)]
        print(f"{mode:6s}  " + " | ".join(line) + f"  | PG/file p50 {ratio:.2f}x")
    # Quality: HNSW (ef_search as configured) against exact inner product; full-text rank against BM25.
    recall, overlap = [], []
    for q in queries:
        truth = {h.chunk_id for h in exact.search("lat", q, 10, "vector")}
        got = {h.chunk_id for h in pg.search("lat", q, 10, "vector")}
        recall.append(len(truth & got) / max(len(truth), 1))
        bm25 = {h.chunk_id for h in files.search("lat", q, 10, "bm25")}
        fts = {h.chunk_id for h in pg.search("lat", q, 10, "bm25")}
        if bm25:
            overlap.append(len(bm25 & fts) / len(bm25))
    print(f"HNSW recall@10 against exact search (ef_search {pg.ef_search}): {np.mean(recall):.3f}")
    print(f"full-text top 10 shares {np.mean(overlap):.3f} of the file store's BM25 top 10 (ts_rank has no IDF)")


if __name__ == "__main__":
    main()
