"""/kb/list on a cold worker: reading each KB's manifest (what ``KnowledgeBaseService.list`` does) against
opening every KB fully to count its documents and chunks (what it did before: FAISS index, chunks, BM25,
hash checks). The KBs hold synthetic chunks with random unit vectors (no embedding needed to build them).

    nice -n 10 .venv/bin/python bench/bench_kb_list.py [--kbs 4] [--chunks 10000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from birdsdao.kb import KnowledgeBaseService  # noqa: E402
from birdsdao.kb.embeddings import EmbedderRegistry  # noqa: E402
from birdsdao.kb.ingest import Chunk  # noqa: E402

WORDS = "白头海雕 苍鹭 黑水鸡 小䴙䴘 湿地 森林 昆虫 鱼类 种子 鸣叫 羽毛 巢穴 迁徙 breeds nest river coast".split()


def fill(service, name, n, rng):
    service.create(name)
    kb = service.get(name)
    dim = kb.current().manifest["dim"]
    per_doc = 1000
    for start in range(0, n, per_doc):
        texts = ["，".join(rng.sample(WORDS, 6)) + f"。第{start + i}段。" for i in range(min(per_doc, n - start))]
        vectors = np.random.default_rng(start).normal(size=(len(texts), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = [Chunk(f"doc{start}.txt", i, t) for i, t in enumerate(texts)]
        kb.add_documents([(f"doc{start}.txt", chunks, vectors, {"bytes": 0})], replace=False)


def open_every_kb(root, registry):
    """The old listing: each KB opened (index loaded) just to count it."""
    service = KnowledgeBaseService(root, registry)
    out = []
    for entry in sorted(service.root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            snap = service.get(entry.name).current()
            out.append({"kb_name": entry.name, "docs": len(snap.docs), "chunks": len(snap.chunks)})
    return out


def read_manifests(root, registry):
    return [{k: kb[k] for k in ("kb_name", "docs", "chunks")} for kb in KnowledgeBaseService(root, registry).list()]


def best_of(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kbs", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    registry = EmbedderRegistry()
    registry.get()  # loaded once, outside both timings (each cold worker shares it, as in one process)
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "kb", registry, args)


def run(root, registry, args):
    builder = KnowledgeBaseService(root, registry)
    rng = random.Random(7)
    start = time.perf_counter()
    for k in range(args.kbs):
        fill(builder, f"kb{k}", args.chunks, rng)
    print(f"{args.kbs} KBs x {args.chunks} chunks built in {time.perf_counter() - start:.1f} s")
    old_s, old = best_of(lambda: open_every_kb(root, registry), args.repeat)
    new_s, new = best_of(lambda: read_manifests(root, registry), args.repeat)
    assert new == old, (new, old)
    print(f"open every KB: {old_s * 1000:8.1f} ms   read manifests: {new_s * 1000:8.1f} ms   "
          f"ratio {old_s / new_s:.0f}x (same counts)")


if __name__ == "__main__":
    main()
