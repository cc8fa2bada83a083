"""Generate ``birdsdao/species/data/ranges.csv``: per-species range facts from AVONET (Tobias et al. 2022,
CC BY 4.0) for every catalogue species the data set names, the input of the location prior (ranges.py).

Run ``python -m birdsdao.tools.build_ranges AVONET_CSV`` where AVONET_CSV is AVONET's BirdLife-taxonomy
sheet as CSV (where the copy we used came from: data/README.md). Matching, in order: the catalogue id (a
binomial; a subspecies or domestic form by its first two words), a Latin alias of the species, the same
epithet (Latin endings -us/-a/-um alike) in the same family when unique (genus moves such as Phalacrocorax
auritus -> Nannopterum auritum). Ids that are a genus or a family (BIRDS-525's CROW = Corvus, ALBATROSS =
Diomedeidae) get one row per member species: the prior takes the best of them (the union of ranges).
Domestic forms get no row (they live wherever people keep them: the prior leaves them neutral).
A species whose concept is wider than BirdLife's (``data/range_concepts.csv``: Herring Gull includes
American Herring Gull in the Clements/iNat taxonomy the iNat head follows) also gets the rows of the
BirdLife species it contains.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from pathlib import Path

from . import DATA_DIR, read_species, write_table

OUT_FILE = DATA_DIR / "ranges.csv"
CONCEPTS_FILE = DATA_DIR / "range_concepts.csv"
COLUMNS = ["species_id", "avonet_name", "match", "min_lat", "max_lat", "centroid_lat", "centroid_lon",
           "range_km2", "migration"]
_AVONET = {"min_lat": "Min.Latitude", "max_lat": "Max.Latitude", "centroid_lat": "Centroid.Latitude",
           "centroid_lon": "Centroid.Longitude", "range_km2": "Range.Size", "migration": "Migration"}
_DOMESTIC = ("domesticus", "domestica")  # the third word of a domestic form (Passer domesticus is wild)
_BINOMIAL = re.compile(r"^[A-Z][a-z]+ [a-z-]+$")


def _epithet_stem(epithet: str) -> str:
    """Latin gender endings vary when a species changes genus (auritus -> auritum)."""
    return re.sub(r"(us|a|um|is|e)$", "", epithet)


def read_avonet(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # the sheet's CSV export starts with a BOM
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        values = {k: row.get(col, "NA") for k, col in _AVONET.items()}
        if any(values[k] in ("", "NA") for k in ("min_lat", "max_lat", "centroid_lat", "centroid_lon", "range_km2")):
            continue  # no range map behind the row
        out.append({"name": row["Species1"].strip(), "family": row["Family1"].strip(), **values})
    return out


def read_concepts(path: Path = CONCEPTS_FILE) -> dict[str, list[str]]:
    """species id → the BirdLife species its wider concept contains."""
    out: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["species_id"], []).append(row["avonet_name"])
    return out


def build(avonet: list[dict], species: list[dict], concepts: dict[str, list[str]] | None = None
          ) -> tuple[list[dict], Counter]:
    by_name = {r["name"]: r for r in avonet}
    by_genus, by_family, by_stem = {}, {}, {}
    for r in avonet:
        genus, epithet = r["name"].split(" ", 1)
        by_genus.setdefault(genus, []).append(r)
        by_family.setdefault(r["family"], []).append(r)
        by_stem.setdefault((r["family"], _epithet_stem(epithet)), []).append(r)
    rows, counts = [], Counter()

    def emit(sid: str, found: list[dict], how: str) -> None:
        counts[how] += 1
        for r in found:
            rows.append({"species_id": sid, "avonet_name": r["name"], "match": how,
                         **{k: r[k] for k in _AVONET}})

    for sp in species:
        sid = sp["id"]
        words = sid.replace(" × ", " ").split()
        if len(words) == 3 and words[2] in _DOMESTIC:
            counts["domestic (neutral)"] += 1
            continue
        if len(words) == 1:  # a genus or family class
            members = by_genus.get(words[0]) or by_family.get(words[0])
            if members:
                emit(sid, members, "genus" if words[0] in by_genus else "family")
            else:
                counts["no data"] += 1
            continue
        if "×" in sid:  # a hybrid: both parents' ranges
            parents = [by_name.get(f"{words[0]} {w}") for w in words[1:]]
            if all(parents):
                emit(sid, parents, "hybrid parents")
                continue
        binomial = " ".join(words[:2])
        if binomial in by_name:
            emit(sid, [by_name[binomial]], "scientific name")
            wider = [by_name[name] for name in (concepts or {}).get(sid, []) if name in by_name]
            if wider:
                emit(sid, wider, "wider concept")
            continue
        alias = next((a for a in sp.get("aliases", []) if _BINOMIAL.match(a) and a in by_name), None)
        if alias:
            emit(sid, [by_name[alias]], "latin alias")
            continue
        stem = by_stem.get((sp.get("family") or "", _epithet_stem(words[1])), [])
        if len(stem) == 1:
            emit(sid, stem, "epithet in family")
            continue
        counts["no data"] += 1
    return rows, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("avonet_csv", type=Path)
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    species = read_species()
    rows, counts = build(read_avonet(args.avonet_csv), species, read_concepts())
    with_data = len(species) - counts["no data"] - counts["domestic (neutral)"]
    write_table(args.out, rows, COLUMNS, counts, f"{with_data}/{len(species)} species with range data ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
