"""Search latency p50/p95 at 1k, 10k and 100k chunks, query embedding included, per mode, through
``KnowledgeBaseService.search`` (the same call /kb/search makes). The corpus is synthetic: chunk texts are
random sentences over the species names and bird vocabulary (so BM25 has realistic postings), vectors are
the e5 vectors of 2,000 real sentences plus small noise (so 100k chunks need not be embedded).
BM25 is compared with rank_bm25-style scoring (a Python loop over every chunk) when rank_bm25 is installed.

    nice -n 10 .venv/bin/python bench/bench_kb_search.py [--sizes 1000 10000 100000]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kb_corpus  # noqa: E402
from birdsdao.kb import KnowledgeBaseService  # noqa: E402
from birdsdao.kb.embeddings import EmbedderRegistry  # noqa: E402
from birdsdao.kb.ingest import Chunk  # noqa: E402

WORDS = "常见 留鸟 候鸟 繁殖 迁徙 湿地 森林 草原 昆虫 鱼类 种子 果实 鸣叫 羽毛 翅膀 巢穴 雏鸟 冬季 夏季 海岸 河流 " \
        "breeds migrates wetland forest insects fish seeds song feathers nest winter summer coast river".split()


def sentences(rows, n, rng):
    names = [r.get("chinese_name") or r["english_name"] for r in rows]
    return [f"{rng.choice(names)}{rng.choice(['在', '于', ' in '])}{rng.choice(WORDS)}" + "，".join(rng.sample(WORDS, 6)) + "。"
            for _ in range(n)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = random.Random(3)
    rows = kb_corpus.species_rows()
    registry = EmbedderRegistry()
    embedder = registry.get()
    base_texts = sentences(rows, 2000, rng)
    base = embedder.embed_array(base_texts)
    queries = [q["question"] for q in kb_corpus.questions(rows, args.queries)]
    service = KnowledgeBaseService(Path(tempfile.mkdtemp()) / "kb", registry)
    service.create("lat")
    kb = service.get("lat")
    have = 0
    for size in args.sizes:
        start = time.perf_counter()
        while have < size:  # documents of 1,000 chunks, vectors given directly (no embedding)
            n = min(1000, size - have)
            texts = sentences(rows, n, rng)
            picks = rng.choices(range(len(base)), k=n)
            vectors = base[picks] + np.random.default_rng(have).normal(0, 0.02, (n, base.shape[1])).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [Chunk(f"doc{have}.txt", i, t, "", t) for i, t in enumerate(texts)]
            kb.add_documents([(f"doc{have}.txt", chunks, vectors, {"bytes": 0})], replace=False)
            have += n
        print(f"{size} chunks ready ({time.perf_counter() - start:.1f} s to add)")
        for mode in ("vector", "bm25", "rrf"):
            service.search("lat", queries[0], 5, mode)  # warm-up
            times = []
            for q in queries:
                t = time.perf_counter()
                service.search("lat", q, 5, mode)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            print(f"  {mode:7s} p50 {times[len(times) // 2]:6.1f} ms  p95 {times[int(len(times) * 0.95)]:6.1f} ms")
        try:
            from rank_bm25 import BM25Okapi
        except ImportError:
            continue
        from birdsdao.kb.search import tokenize

        snap = kb.current()
        naive = BM25Okapi([tokenize(c["text"]) for c in snap.chunks])
        t = time.perf_counter()
        for q in queries[:20]:
            naive.get_scores(tokenize(q))
        print(f"  rank_bm25 (per-query Python loop) mean {(time.perf_counter() - t) / 20 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
