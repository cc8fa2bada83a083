"""Build and maintenance commands (``python -m birdsdao.tools.<name>``); the server never imports them."""
from __future__ import annotations

import csv
import io


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """The rows as the CSV text the data files keep (header first, ``\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
