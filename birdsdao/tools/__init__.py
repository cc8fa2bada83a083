"""Build and maintenance commands (``python -m birdsdao.tools.<name>``); the server never imports them."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from ..fileio import write_atomic

DATA_DIR = Path(__file__).resolve().parents[1] / "species" / "data"  # what the build tools read and write
SPECIES_FILE = DATA_DIR / "species.jsonl"


def read_species(path: Path = SPECIES_FILE) -> list[dict]:
    """The catalogue's species records (species.jsonl, built by build_species_data)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """The rows as the CSV text the data files keep (header first, ``\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_table(path: Path, rows: list[dict], columns: list[str], counts: Counter, summary: str) -> None:
    """Write ``rows`` as a data CSV (atomically) and print ``summary`` and how each row came about."""
    data = csv_text(rows, columns).encode("utf-8")
    write_atomic(path, lambda fh: fh.write(data), mode=0o644)
    print(f"{summary} -> {path}")
    for how, n in counts.most_common():
        print(f"  {how}: {n}")
