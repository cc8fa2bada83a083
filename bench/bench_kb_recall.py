"""Retrieval recall@1/@5 on the species evaluation set, per retrieval combination (vector, bm25, rrf,
weighted), Chinese and English questions separately. A hit counts when the question's species card is
among the top k documents.

    nice -n 10 .venv/bin/python bench/bench_kb_recall.py [--n 200]

The KB is built once under bench/out/recall/ and reused by later runs (delete it to rebuild)."""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kb_corpus  # noqa: E402
from birdsdao.config import DEFAULTS  # noqa: E402
from birdsdao.kb import KnowledgeBaseService  # noqa: E402
from birdsdao.kb.embeddings import EmbedderRegistry  # noqa: E402
from birdsdao.kb.search import MODES  # noqa: E402
from birdsdao.kb.species_kb import ensure_species_kb  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "recall"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="questions (sampled from the eval set)")
    parser.add_argument("--cards", type=int, default=0, help="build the KB from this many cards only (0: all)")
    args = parser.parse_args()
    rows = kb_corpus.species_rows()
    questions = kb_corpus.questions(rows, args.n)
    try:  # the real species cards and eval set (species branch), when present
        from birdsdao.species import build as build_catalog
        from birdsdao.kb.species_kb import card_documents

        cards = card_documents(build_catalog(DEFAULTS, None))
        source = "species cards (birdsdao.species.cards)"
    except ImportError:
        cards = [kb_corpus.card(r) for r in rows]
        source = "CSV stand-in cards (bench/kb_corpus.py)"
    if args.cards and args.cards < len(cards):
        # A subset KB (all cards take ~2 min to embed on an idle 2-core box, far longer on a busy one):
        # a random sample of cards, questions only about them.
        rng = random.Random(11)
        cards = rng.sample(cards, args.cards)
        keep = {name for name, _ in cards}
        questions = [q for q in questions if q["doc_name"] in keep]
    if len(questions) > args.n:
        questions = random.Random(5).sample(questions, args.n)
    print(f"corpus: {len(cards)} {source}")
    # the shipped card vectors make a full build take seconds (python -m birdsdao.tools.build_seed_vectors)
    service = KnowledgeBaseService(OUT / f"{len(cards)}", EmbedderRegistry(seed_path=DEFAULTS["KB_SEED_VECTORS"]))
    start = time.perf_counter()
    result = ensure_species_kb(service, cards)
    chunks = len(service.get("species").current().chunks)
    print(f"species KB: {result['action']} {len(cards)} cards, {chunks} chunks in {time.perf_counter() - start:.1f} s")
    print(f"{len(questions)} questions; recall by mode (top-k documents, card = target)")
    print(f"{'mode':10s} {'lang':4s} {'R@1':>6s} {'R@5':>6s} {'p50 ms':>7s}")
    best = None
    for mode in MODES:
        per_lang: dict[str, list] = {}
        times = []
        for q in questions:
            t = time.perf_counter()
            hits = service.search("species", q["question"], 20, mode)
            times.append((time.perf_counter() - t) * 1000)
            docs = list(dict.fromkeys(h.doc_name for h in hits))
            per_lang.setdefault(q["lang"], []).append((docs[:1].count(q["doc_name"]), q["doc_name"] in docs[:5]))
        allr = [x for v in per_lang.values() for x in v]
        times.sort()
        for lang, res in sorted(per_lang.items()) + [("all", allr)]:
            r1 = sum(a for a, _ in res) / len(res)
            r5 = sum(b for _, b in res) / len(res)
            print(f"{mode:10s} {lang:4s} {r1:6.1%} {r5:6.1%} {times[len(times) // 2]:7.1f}")
        score = (sum(b for _, b in allr), sum(a for a, _ in allr))
        if best is None or score > best[0]:
            best = (score, mode)
    print(f"winner (recall@5, then @1): {best[1]}")


if __name__ == "__main__":
    main()
