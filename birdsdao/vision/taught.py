"""Species the user taught, stored under ``<instance>/taught/``: ``index.json`` (names, which vocabulary
species each label improves or adds) and one ``<sha1>.npz`` of photo features per label. Plain arrays and
JSON only (no pickle); every write is temp file + ``os.replace``; the index is written last, so a crash
leaves the previous consistent state."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

from ..errors import APIError

MAX_LABEL_LEN = 64


def normalize_label(raw: str | None) -> str:
    """API.md: letters, digits, spaces, ``-'``. Upper-cased, spaces collapsed ("bald  eagle" → "BALD EAGLE")."""
    label = " ".join(unicodedata.normalize("NFC", raw or "").split()).upper()
    if not label:
        raise APIError(400, "missing_field", "'label' is required")
    if len(label) > MAX_LABEL_LEN:
        raise APIError(400, "bad_field", f"'label' is longer than {MAX_LABEL_LEN} characters")
    if not all(ch.isalpha() or ch.isdigit() or ch in " -'" for ch in label) or not any(ch.isalnum() for ch in label):
        raise APIError(400, "bad_field", "'label' may contain only letters, digits, spaces, hyphens and apostrophes")
    return label


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TaughtStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"

    def _file_for(self, label: str) -> Path:
        # The file name is a digest, never the user's text: no path can be steered by a request.
        return self.root / (hashlib.sha1(label.encode("utf-8")).hexdigest() + ".npz")

    def records(self) -> dict[str, dict]:
        if not self.index_path.exists():
            return {}
        return json.loads(self.index_path.read_text(encoding="utf-8"))["species"]

    def features(self, label: str) -> np.ndarray:
        with np.load(self._file_for(label), allow_pickle=False) as data:
            return data["features"].astype(np.float32)

    def load_all(self) -> dict[str, tuple[dict, np.ndarray]]:
        out = {}
        for label, record in self.records().items():
            try:
                out[label] = (record, self.features(label))
            except (OSError, KeyError, ValueError):  # a damaged file loses that species, not the server
                continue
        return out

    def put(self, label: str, record: dict, features: np.ndarray) -> None:
        _write_atomic(self._file_for(label), lambda fh: np.savez(fh, features=features.astype(np.float16)))
        records = self.records()
        records[label] = record
        self._write_index(records)

    def remove(self, label: str) -> bool:
        records = self.records()
        if label not in records:
            return False
        del records[label]
        self._write_index(records)
        self._file_for(label).unlink(missing_ok=True)
        return True

    def _write_index(self, records: dict) -> None:
        payload = json.dumps({"version": 1, "species": records}, ensure_ascii=False, indent=1).encode("utf-8")
        _write_atomic(self.index_path, lambda fh: fh.write(payload))
