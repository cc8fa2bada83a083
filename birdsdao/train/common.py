"""Helpers every command shares: atomic file writes, label lists, device choice, seeding and the end-of-run
summary."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from birdsdao.config import PROJECT_ROOT
from birdsdao.fileio import write_atomic
from birdsdao.vision.species_model import read_labels  # noqa: F401 (the server reads labels the same way)

SHARED = Path(os.environ.get("BIRDSDAO_SHARED", PROJECT_ROOT.parent / "shared")).resolve()
# The server's own setting first (BIRDSDAO_YOLO_WEIGHTS), so train and evaluate seed from the same detector.
INAT_REFERENCE = SHARED / "data" / "inat_bird_species_reference.csv"
DEFAULT_DETECTOR = Path(os.environ.get("BIRDSDAO_YOLO_WEIGHTS") or SHARED / "weights" / "yolov8n.pt")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` durably (birdsdao.fileio.write_atomic), so a crash never leaves half a file;
    world-readable, as these are reports and labels, not secrets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")), mode=0o644)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: Path, rows) -> None:
    """One JSON object per line (what ``score`` reads), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_torch_save(obj, path: Path) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: torch.save(obj, fh), mode=0o644)


def write_labels(out: Path, names: list[str]) -> None:
    """labels.txt (line i = output i, what the server reads) and labels.json (the same list)."""
    atomic_write_text(Path(out) / "labels.txt", "".join(f"{n}\n" for n in names))
    write_json(Path(out) / "labels.json", list(names))


def pick_device(name: str | None):
    """``--device``: 'cpu', 'cuda', 'cuda:1', or empty for the first GPU when there is one."""
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def summary(title: str, rows: dict) -> str:
    """The block printed at the end of every command (also returned for tests)."""
    width = max((len(k) for k in rows), default=0)
    lines = [f"== {title} =="] + [f"  {k.ljust(width)} : {v}" for k, v in rows.items()]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
