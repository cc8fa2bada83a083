"""Generate ``birdsdao/species/data/ioc_zh_names.csv``: the Chinese (simplified) names of the IOC World Bird
List (multilingual version, CC BY 4.0) for the catalogue's species, the published names that
``build_species_data`` prefers over the project's own translations.

Run ``python -m birdsdao.tools.build_ioc_names ZH EN`` where the two files are the IOC v15.1 multilingual
sheet's scientific-name -> name lines (``"Haliaeetus leucocephalus": "白头海雕",``), one per species in IOC
order: its Chinese and its English column (where the copies we used came from: data/README.md). Only species-rank records are matched (the list names no
subspecies, genus or family classes, hybrids). Matching, in order: the catalogue id; a Latin alias of the
species; the English name (case, hyphens, apostrophes and grey/gray folded) when exactly one v15.1 species
has it (genus moves such as Chalcopsitta fuscata -> Pseudeos fuscata); a species of the same genus or the same epithet whose English name is nearly the same (similarity >=
0.8: misspelled labels and genus moves with a reworded name, Amaurornis bicolor -> Zapornia bicolor).
Splits and lumps whose English name changed stay unmatched (Accipiter gentilis, which v15.1 split into
Astur gentilis and Astur atricapillus; Corvus caurinus, lumped into the American Crow) and keep the
project's name.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

from . import DATA_DIR, read_species, write_table

OUT_FILE = DATA_DIR / "ioc_zh_names.csv"
COLUMNS = ["species_id", "ioc_name", "chinese_name", "match"]
FUZZY_ENGLISH = 0.8
_LINE = re.compile(r'^"([A-Z][a-z]+ [a-z-]+)": "([^"]*)",?\s*$')
_BINOMIAL = re.compile(r"^[A-Z][a-z]+ [a-z-]+$")


def read_name_map(path: Path) -> list[tuple[str, str]]:
    """``(scientific name, name)`` pairs in file order; a line of any other form is an error (the wrong file)."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: not a 'Genus species': 'name' line: {line[:80]!r}")
        if m.group(2) and m.group(2) != "nan":  # pandas writes an empty cell as nan
            pairs.append((m.group(1), m.group(2)))
    return pairs


def english_key(name: str) -> str:
    name = name.casefold().replace("gray", "grey").replace("'", "").replace("’", "")
    return re.sub(r"[^a-z]", "", name)


def _epithet_stem(epithet: str) -> str:
    """Latin gender endings vary when a species changes genus (auritus -> auritum)."""
    return re.sub(r"(us|a|um|is|e)$", "", epithet)


def match(species: list[dict], zh: dict[str, str], en: dict[str, str]) -> tuple[list[dict], Counter]:
    by_english: dict[str, list[str]] = {}
    by_genus: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for sci, name in en.items():
        by_english.setdefault(english_key(name), []).append(sci)
        genus, epithet = sci.split(" ")
        by_genus.setdefault(genus, []).append(sci)
        by_stem.setdefault(_epithet_stem(epithet), []).append(sci)
    rows, counts = [], Counter()

    def emit(sp: dict, ioc_name: str, how: str) -> None:
        if ioc_name not in zh:   # the list has the species but no Chinese name for it
            counts["no Chinese name in the list"] += 1
            return
        counts[how] += 1
        rows.append({"species_id": sp["id"], "ioc_name": ioc_name, "chinese_name": zh[ioc_name], "match": how})

    for sp in species:
        if sp.get("rank", "species") != "species":
            counts[f"not matched ({sp['rank']})"] += 1
            continue
        sid = sp["id"]
        if sid in en:
            emit(sp, sid, "scientific name")
            continue
        alias = next((a for a in sp.get("aliases", []) if _BINOMIAL.match(a) and a in en), None)
        if alias:
            emit(sp, alias, "latin alias")
            continue
        same_english = by_english.get(english_key(sp["english_name"]), [])
        if len(same_english) == 1:
            emit(sp, same_english[0], "english name")
            continue
        genus, epithet = sid.split(" ")
        key = english_key(sp["english_name"])
        near = {c for c in by_genus.get(genus, []) + by_stem.get(_epithet_stem(epithet), [])
                if SequenceMatcher(None, key, english_key(en[c])).ratio() >= FUZZY_ENGLISH}
        if len(near) == 1:
            emit(sp, near.pop(), "near english name in genus or epithet")
            continue
        counts["not matched (split, lump or not in the list)"] += 1
    return rows, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zh", type=Path, help="IOC scientific name -> Chinese (simplified) lines")
    parser.add_argument("en", type=Path, help="IOC scientific name -> English lines, same sheet")
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    species = read_species()
    rows, counts = match(species, dict(read_name_map(args.zh)), dict(read_name_map(args.en)))
    write_table(args.out, rows, COLUMNS, counts, f"{len(rows)}/{len(species)} catalogue records with an IOC Chinese name")
    return 0


if __name__ == "__main__":
    sys.exit(main())
