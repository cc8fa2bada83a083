"""Cross-language retrieval (issue #18): recall@5 of Chinese questions over English passages and English
questions over Chinese ones (``bench/crosslang/``: documents written for this test in a KB of their own, and
questions about the bundled species cards, whose descriptions are Chinese), for dense only, BM25 only and
fusions with several BM25 weights; same-language recall on the species evaluation questions checks that a
weight good across languages costs nothing within one.

    python bench/bench_crosslang.py [--same-lang 150]

A hit counts when one of the top 5 passages is from the question's document and holds its key phrase. The
species KB is built from the shipped card vectors (seconds); the written documents are embedded each run. Each
question is searched once per side (dense, BM25: the lists ``store.search`` fuses) and fused by
``search.fuse`` per run."""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import kb_corpus  # noqa: E402
from birdsdao.config import DEFAULTS  # noqa: E402
from birdsdao.kb import KnowledgeBaseService  # noqa: E402
from birdsdao.kb.embeddings import EmbedderRegistry  # noqa: E402
from birdsdao.kb.search import CANDIDATES, balance_languages, fuse, is_cjk_text  # noqa: E402
from birdsdao.kb.species_kb import card_documents, ensure_species_kb  # noqa: E402
from birdsdao.species import build as build_catalog  # noqa: E402

SET = HERE / "crosslang"
# (mode, BM25 weight, language balance): dense only, BM25 only, RRF and score-weighted fusion at several BM25
# weights, each without and with the dense side's language balance (search.balance_languages).
RUNS = [("vector", 0.0, 0.0), ("vector", 0.0, 0.5), ("vector", 0.0, 1.0), ("bm25", 0.0, 0.0)] + \
    [("rrf", w, b) for b in (0.0, 1.0) for w in (1.0, 0.5, 0.3, 0.1)] + \
    [("weighted", w, b) for b in (0.0, 1.0) for w in (0.3, 0.1)]
K = 5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--same-lang", type=int, default=150, help="species eval questions for the same-language check")
    args = ap.parse_args()
    queries = [json.loads(line) for line in (SET / "queries.jsonl").read_text("utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        service = KnowledgeBaseService(Path(tmp), EmbedderRegistry(seed_path=DEFAULTS["KB_SEED_VECTORS"]))
        ensure_species_kb(service, card_documents(build_catalog(DEFAULTS, None)))
        service.create("crosslang", "documents written for bench_crosslang")
        files = sorted(p for p in (SET / "docs").iterdir() if p.is_file())
        results = service.upload("crosslang", [(p.name, p.read_bytes()) for p in files])
        names = {p.name: r["doc_name"] for p, r in zip(files, results)}
        bad = [r for r in results if r["status"] != "added"]
        assert not bad, bad
        print(f"KBs ready in {time.perf_counter() - t0:.1f} s: species cards + {len(files)} written documents "
              f"({sum(r['chunks'] for r in results)} chunks)")
        cards = {d["doc_name"] for d in service.docs("species")}
        same = [q for q in kb_corpus.questions(kb_corpus.species_rows()) if q["doc_name"] in cards]
        same = random.Random(5).sample(same, min(args.same_lang, len(same)))
        groups = {"zh→en": [q for q in queries if not q["q"].isascii()],
                  "en→zh": [q for q in queries if q["q"].isascii()]}
        print(f"{len(queries)} cross-language questions ({', '.join(f'{g} {len(v)}' for g, v in groups.items())}); "
              f"{len(same)} same-language species questions; recall@{K}")
        print(f"{'run':22s} {'zh→en':>7s} {'en→zh':>7s} {'cross':>7s} {'same':>7s}")
        # Each question is searched once per side (the lists store.search fuses), then fused per run.
        lists, texts = {}, {}
        for q in [*queries, *same]:
            text, kb = (q["q"], q.get("kb", "crosslang")) if "q" in q else (q["question"], "species")
            lists[text] = {}
            for mode in ("vector", "bm25"):
                hits = service.search(kb, text, CANDIDATES, mode, lang_balance=0.0)
                texts.update((h.chunk_id, h.text) for h in hits)
                lists[text][mode] = [(h.chunk_id, h.score) for h in hits]
        best = None
        for mode, weight, balance in RUNS:
            label = mode + (f" w={weight}" if mode in ("rrf", "weighted") else "") + (f" b={balance}" if balance else "")

            def top(text):
                vec = lists[text]["vector"]
                vec = balance_languages(vec, [is_cjk_text(texts[c]) for c, _ in vec], balance)
                return fuse(mode, vec, lists[text]["bm25"], K, weight)

            row = {}
            for group, qs in groups.items():
                hits = 0
                for q in qs:
                    doc = names.get(q["doc"], q["doc"])
                    hits += any(cid.startswith(doc + "#") and q["key"] in texts[cid] for cid, _ in top(q["q"]))
                row[group] = hits / len(qs)
            row["cross"] = sum(row[g] * len(qs) for g, qs in groups.items()) / len(queries)
            if same:
                row["same"] = sum(any(cid.startswith(q["doc_name"] + "#") for cid, _ in top(q["question"]))
                                  for q in same) / len(same)
            print(f"{label:22s} {row['zh→en']:7.1%} {row['en→zh']:7.1%} {row['cross']:7.1%} "
                  f"{row.get('same', float('nan')):7.1%}")
            score = (row["cross"] + row.get("same", 0.0), row["cross"])
            if mode in ("rrf", "weighted") and (best is None or score > best[0]):
                best = (score, label)
        print(f"best fusion (cross + same recall@{K}): {best[1]}; configured: {DEFAULTS['KB_SEARCH_MODE']} "
              f"w={DEFAULTS['KB_BM25_WEIGHT']} b={DEFAULTS['KB_LANG_BALANCE']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
