"""Precision / recall / F1 of the rule-based extractor (birdsdao/llm/extraction.py) on a hand-labelled set.

    nice .venv/bin/python bench/bench_extraction.py [--split dev|test|all] [--errors N] [--lang zh|en]

``bench/extraction_labelled.jsonl``: one sentence a line (127 Chinese, 32 English), each with gold
``entities`` [[type, span]], ``attributes`` [[attribute, value as written]] and ``triples`` [[head, relation,
tail]]; ``split`` alternates dev/test (rules were tuned on dev only).

Matching, counted as multisets per sentence:
- exact: KE2 (type, span) equal; KE3 (attribute, value) equal; KE1 (head, relation, tail) equal.
- relaxed: the same but a span/value/tail also matches when one contains the other (head and relation exact);
  shows boundary disagreements (约80厘米 vs 80厘米) apart from misses.
KE2 is also reported per entity type."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from birdsdao import segment  # noqa: E402
from birdsdao.llm.extraction import Extractor  # noqa: E402
from birdsdao.species.catalog import SpeciesCatalog  # noqa: E402
from birdsdao.species.names import NameResolver  # noqa: E402

LABELLED = Path(__file__).with_name("extraction_labelled.jsonl")


def load(split: str, lang: str | None) -> list[dict]:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if (split == "all" or r["split"] == split) and (lang is None or r["lang"] == lang)]


def _close(a: str, b: str) -> bool:
    return a == b or (bool(a) and bool(b) and (a in b or b in a))


def match(gold: list[tuple], pred: list[tuple], relaxed: bool) -> int:
    """Matched pairs, each gold and predicted item used once (last field compared loosely when relaxed)."""
    free = list(pred)
    hits = 0
    for g in gold:
        for i, p in enumerate(free):
            if g[:-1] == p[:-1] and (g[-1] == p[-1] or (relaxed and _close(g[-1], p[-1]))):
                hits += 1
                del free[i]
                break
    return hits


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 1.0
    r = tp / n_gold if n_gold else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def predictions(extractor: Extractor, row: dict) -> dict:
    out = extractor.extract(row["text"], row["lang"])
    return {"KE2": [(e["type"], e["text"]) for e in out["entities"]],
            "KE3": [(a["attribute"], a["value"]) for a in out["attribute_items"]],
            "KE1": [tuple(t) for t in out["triples"]]}


def gold_of(row: dict) -> dict:
    return {"KE2": [tuple(e) for e in row["entities"]], "KE3": [tuple(a) for a in row["attributes"]],
            "KE1": [tuple(t) for t in row["triples"]]}


def evaluate(extractor: Extractor, rows: list[dict], errors: int = 0) -> dict:
    totals: dict = {}
    shown = 0
    for row in rows:
        pred, gold = predictions(extractor, row), gold_of(row)
        for task in ("KE1", "KE2", "KE3"):
            for relaxed in (False, True):
                t = totals.setdefault((task, relaxed), [0, 0, 0])
                t[0] += match(gold[task], pred[task], relaxed)
                t[1] += len(pred[task])
                t[2] += len(gold[task])
        for kind in {g[0] for g in gold["KE2"]} | {p[0] for p in pred["KE2"]}:
            g = [x for x in gold["KE2"] if x[0] == kind]
            p = [x for x in pred["KE2"] if x[0] == kind]
            t = totals.setdefault(("KE2", kind), [0, 0, 0])
            t[0] += match(g, p, False)
            t[1] += len(p)
            t[2] += len(g)
        if errors and shown < errors and any(Counter(gold[k]) != Counter(pred[k]) for k in gold):
            shown += 1
            print(f"\n#{row['id']} {row['text']}")
            for k in ("KE2", "KE3", "KE1"):
                missed = list((Counter(gold[k]) - Counter(pred[k])).elements())
                extra = list((Counter(pred[k]) - Counter(gold[k])).elements())
                if missed or extra:
                    print(f"  {k} missed {missed}  extra {extra}")
    return totals


def report(title: str, totals: dict) -> None:
    print(f"\n== {title}")
    print(f"{'task':<34}{'P':>7}{'R':>7}{'F1':>7}{'gold':>7}{'pred':>7}")
    names = {"KE1": "KE1 triples", "KE2": "KE2 entities", "KE3": "KE3 attributes"}
    for task in ("KE1", "KE2", "KE3"):
        for relaxed in (False, True):
            tp, n_pred, n_gold = totals[(task, relaxed)]
            p, r, f = prf(tp, n_pred, n_gold)
            label = f"{names[task]} ({'relaxed' if relaxed else 'exact'})"
            print(f"{label:<34}{p:7.2f}{r:7.2f}{f:7.2f}{n_gold:7d}{n_pred:7d}")
    for key in sorted(k for k in totals if k[0] == "KE2" and isinstance(k[1], str)):
        tp, n_pred, n_gold = totals[key]
        p, r, f = prf(tp, n_pred, n_gold)
        print(f"{'  KE2 ' + key[1] + ' (exact)':<34}{p:7.2f}{r:7.2f}{f:7.2f}{n_gold:7d}{n_pred:7d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("dev", "test", "holdout", "all", "each"), default="each")
    ap.add_argument("--lang", choices=("zh", "en"))
    ap.add_argument("--errors", type=int, default=0, help="print the first N sentences with a difference")
    args = ap.parse_args()
    segment.jieba()
    catalog = SpeciesCatalog.load()
    extractor = Extractor(catalog, NameResolver(catalog))
    splits = ("dev", "test", "holdout") if args.split == "each" else (args.split,)
    for split in splits:
        rows = load(split, args.lang)
        report(f"{split}: {len(rows)} sentences ({sum(r['lang'] == 'zh' for r in rows)} zh, "
               f"{sum(r['lang'] == 'en' for r in rows)} en)", evaluate(extractor, rows, args.errors))


if __name__ == "__main__":
    main()
