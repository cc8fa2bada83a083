"""How well names are understood (issue #18): precision/recall of the exact / group / missing decisions on a
labelled list (``bench/names_labelled.csv``: Chinese, English and Latin names, typos, everyday group names and
birds the catalogue lacks), for ``NameResolver.resolve`` against the naive way, ``SpeciesCatalog.resolve`` (a
species or nothing, guessing typos and containment without a threshold), and for the same names inside a
question ("X吃什么？" / "What does the X eat?") through the answer path's ``naming.names_in``.

    python bench/bench_names.py [--show-errors]

Decisions: ``exact`` = a species (exact or a typo above the threshold; counted right only when it is the
labelled species), ``group`` = an everyday group name, ``missing`` = "not in the catalogue" (with or without
"did you mean"). A wrong species is a false ``exact`` and a miss of the labelled decision.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao.llm import naming  # noqa: E402
from birdsdao.species import SpeciesCatalog  # noqa: E402
from birdsdao.species.catalog import has_cjk  # noqa: E402
from birdsdao.species.names import NameResolver, Resolution  # noqa: E402

LABELS = Path(__file__).with_name("names_labelled.csv")
CLASSES = ("exact", "group", "missing")


def decision(r: Resolution | None) -> tuple[str, str | None]:
    if r is None:
        return "missing", None
    if r.status in ("exact", "fuzzy"):
        return "exact", r.species.id
    return ("group", None) if r.status == "group" else ("missing", None)


def naive(catalog: SpeciesCatalog, name: str) -> tuple[str, str | None]:
    s = catalog.resolve(name)
    return ("exact", s.id) if s is not None else ("missing", None)


def in_question(resolver: NameResolver, name: str) -> tuple[str, str | None]:
    question = f"{name}吃什么？" if has_cjk(name) else f"What does the {name} eat?"
    found = naming.names_in(resolver, question)
    if found:
        return decision(found[0])
    mentions = resolver.catalog.find_mentions(question)
    return ("exact", mentions[0][0].id) if mentions else ("missing", None)


def score(rows, predict) -> dict:
    counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in CLASSES}
    errors = []
    for row in rows:
        got, species = predict(row["name"])
        right = got == row["expected"] and (got != "exact" or species == row["species"])
        if right:
            counts[got]["tp"] += 1
        else:
            counts[got]["fp"] += 1
            counts[row["expected"]]["fn"] += 1
            errors.append((row["name"], row["expected"], got, species))
    out = {}
    for c, n in counts.items():
        p = n["tp"] / (n["tp"] + n["fp"]) if n["tp"] + n["fp"] else float("nan")
        r = n["tp"] / (n["tp"] + n["fn"]) if n["tp"] + n["fn"] else float("nan")
        out[c] = (p, r)
    out["accuracy"] = sum(n["tp"] for n in counts.values()) / len(rows)
    out["errors"] = errors
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--show-errors", action="store_true")
    args = ap.parse_args()
    with open(LABELS, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    catalog = SpeciesCatalog.load()
    resolver = NameResolver(catalog)
    support = {c: sum(r["expected"] == c for r in rows) for c in CLASSES}
    print(f"{len(rows)} labelled names: " + ", ".join(f"{c} {n}" for c, n in support.items()))
    runs = [("naive SpeciesCatalog.resolve", lambda n: naive(catalog, n)),
            ("NameResolver.resolve", lambda n: decision(resolver.resolve(n))),
            ("in a question (naming.names_in)", lambda n: in_question(resolver, n))]
    for title, predict in runs:
        t = time.perf_counter()
        result = score(rows, predict)
        ms = (time.perf_counter() - t) * 1000 / len(rows)
        cells = "  ".join(f"{c}: P {result[c][0]:.2f} R {result[c][1]:.2f}" for c in CLASSES)
        print(f"{title:34s} {cells}  accuracy {result['accuracy']:.2f}  ({ms:.1f} ms/name)")
        if args.show_errors:
            for name, want, got, species in result["errors"]:
                print(f"    {name!r}: labelled {want}, got {got} {species or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
