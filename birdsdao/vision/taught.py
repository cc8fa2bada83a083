"""Species the user taught, stored crash-safely under ``<instance>/taught/`` (JSON index + one ``.npz`` per
label, no pickle) and shared between worker processes (see README.md)."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import APIError
from ..fileio import exclusive_lock, stat_key, write_atomic

log = logging.getLogger(__name__)

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


def _check_records(species) -> dict[str, dict]:
    """The ``species`` mapping of an index, or ValueError when it is not one this module wrote."""
    if not isinstance(species, dict) or not all(
            isinstance(label, str) and isinstance(r, dict) and isinstance(r.get("key"), str)
            and isinstance(r.get("names"), dict) and isinstance(r.get("new"), bool) for label, r in species.items()):
        raise ValueError("not a taught-species index")
    return species


class _Reentrant:
    """A cross-process lock (``outer()``: a flock or an advisory lock, as a context manager) that the holding
    thread may take again: a teach holds it around records() → put(), which take it too. A second flock on a
    new file description would block its own process, hence the depth count."""

    def __init__(self, outer):
        self.outer = outer
        self._lock = threading.RLock()
        self._depth = 0  # how deep the holding thread is; the outer lock is taken at depth 0 only

    @contextmanager
    def hold(self):
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with self.outer():
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0


class TaughtStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"
        self._reentrant = _Reentrant(lambda: exclusive_lock(self.root / ".lock"))

    def locked(self):
        """Exclusive access to the index across threads and processes, for a read-modify-write of it."""
        return self._reentrant.hold()

    def index_key(self):
        """(inode, mtime, size) of index.json, None when absent: it changes whenever any process rewrote it
        (every write is a new file renamed into place), so a stat tells a worker to reload."""
        return stat_key(self.index_path)

    def _file_for(self, label: str) -> Path:
        # The file name is a digest, never the user's text: no path can be steered by a request.
        return self.root / (hashlib.sha1(label.encode("utf-8")).hexdigest() + ".npz")

    def records(self) -> dict[str, dict]:
        try:
            return self._read_index()
        except FileNotFoundError:
            return {}
        except ValueError as exc:  # empty (power cut before fsync), truncated, edited by hand; an OSError
            return self._recover(exc)  # (EACCES, EIO) is no proof of damage and propagates

    def _read_index(self) -> dict[str, dict]:
        data = json.loads(self.index_path.read_text(encoding="utf-8"))
        return _check_records(data.get("species") if isinstance(data, dict) else None)

    def _recover(self, exc: Exception) -> dict[str, dict]:
        """Keep the unreadable index aside for a human, rebuild one from the .npz files' own records."""
        with self.locked():
            try:  # another worker may have rebuilt it while this one waited for the lock
                return self._read_index()
            except FileNotFoundError:
                return {}
            except ValueError:
                pass
            return self._rebuild(exc)

    def _rebuild(self, exc: Exception) -> dict[str, dict]:
        aside = self.index_path.with_name(f"index.json.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns()}")
        records, lost = self._records_from_features()
        try:  # a copy, not a move: until the new index is in place the old one stays where it was
            shutil.copyfile(self.index_path, aside)
            self._write_index(records)
        except OSError as write_exc:  # a read-only folder, a full disk: serve what was recovered, change nothing
            log.error("taught species: %s is unreadable (%s) and could not be replaced (%s); serving %d "
                      "species recovered from their feature files", self.index_path, exc, write_exc, len(records))
            return records
        log.error("taught species: %s was unreadable (%s); kept it as %s and rebuilt the index from the feature "
                  "files: %d species recovered, %d feature files without a readable record left unused",
                  self.index_path, exc, aside.name, len(records), lost)
        return records

    def _records_from_features(self) -> tuple[dict[str, dict], int]:
        records, lost = {}, 0
        for path in sorted(self.root.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    record = json.loads(str(data["record"]))
                label = record.pop("label")
                _check_records({label: record})
                if self._file_for(label) != path:  # a copied or renamed file: its name must be its label's
                    raise ValueError("file name does not match its label")
            except (OSError, KeyError, ValueError, TypeError, AttributeError):
                lost += 1  # written before records were kept in the .npz, or damaged
                continue
            records[label] = record
        return records, lost

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
        # The record rides along (a 0-d unicode array, no pickle) so a lost index can be rebuilt from these files.
        copy = np.array(json.dumps({"label": label, **record}, ensure_ascii=False))
        with self.locked():
            write_atomic(self._file_for(label),
                         lambda fh: np.savez(fh, features=features.astype(np.float16), record=copy))
            records = self.records()
            records[label] = record
            self._write_index(records)

    def remove(self, label: str) -> bool:
        with self.locked():
            records = self.records()
            if label not in records:
                return False
            del records[label]
            self._write_index(records)
            self._file_for(label).unlink(missing_ok=True)
            return True

    def _write_index(self, records: dict) -> None:
        payload = json.dumps({"version": 1, "species": records}, ensure_ascii=False, indent=1).encode("utf-8")
        write_atomic(self.index_path, lambda fh: fh.write(payload))


class PgTaughtStore:
    """``TaughtStore``'s interface on PostgreSQL (``DATABASE_URL`` set): one row per label in ``taught_species``
    and a version counter that every write bumps in its own transaction, so ``index_key()`` (one indexed read)
    tells each app process that another one taught or forgot. ``locked()`` is a session advisory lock: a teach's
    records → put is one step across every process on the database, as the flock is on one host."""

    def __init__(self, url: str, pool_size: int = 8):
        from .. import db

        self._db = db
        self.url = url
        self.pool = db.pool(url, max_size=pool_size)
        self._reentrant = _Reentrant(lambda: self._db.advisory_lock(self.url, self._db.TAUGHT_LOCK))

    def locked(self):
        """As TaughtStore.locked, across app servers: a PostgreSQL advisory lock."""
        return self._reentrant.hold()

    def index_key(self):
        with self.pool.connection() as conn:
            return conn.execute("SELECT version FROM taught_version").fetchone()[0]

    def records(self) -> dict[str, dict]:
        with self.pool.connection() as conn:
            return {label: record for label, record in
                    conn.execute("SELECT label, record FROM taught_species ORDER BY label")}

    def features(self, label: str) -> np.ndarray:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT n, dim, features FROM taught_species WHERE label = %s", (label,)).fetchone()
        if row is None:
            raise KeyError(label)
        return _features(*row)

    def load_all(self) -> dict[str, tuple[dict, np.ndarray]]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT label, record, n, dim, features FROM taught_species ORDER BY label").fetchall()
        return {label: (record, _features(n, dim, feats)) for label, record, n, dim, feats in rows}

    def put(self, label: str, record: dict, features: np.ndarray) -> None:
        from psycopg.types.json import Jsonb

        # Rounded through float16 as the file store keeps them: both stores give the same predictions.
        feats = np.asarray(features, np.float16).astype(np.float32)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("INSERT INTO taught_species (label, record, n, dim, features) VALUES (%s, %s, %s, %s, %s) "
                         "ON CONFLICT (label) DO UPDATE SET record = EXCLUDED.record, n = EXCLUDED.n, "
                         "dim = EXCLUDED.dim, features = EXCLUDED.features",
                         (label, Jsonb(record), feats.shape[0], feats.shape[1], feats.ravel().tolist()))
            conn.execute("UPDATE taught_version SET version = version + 1")

    def remove(self, label: str) -> bool:
        with self.pool.connection() as conn, conn.transaction():
            gone = conn.execute("DELETE FROM taught_species WHERE label = %s", (label,)).rowcount
            if gone:
                conn.execute("UPDATE taught_version SET version = version + 1")
            return bool(gone)


def _features(n: int, dim: int, flat) -> np.ndarray:
    return np.asarray(flat, np.float32).reshape(n, dim)


def open_store(config, instance: Path):
    """The taught-species store this server uses: PostgreSQL when ``DATABASE_URL`` is set, else the files under
    ``<instance>/taught`` (the one place the choice is made for taught species)."""
    if config["DATABASE_URL"]:
        return PgTaughtStore(config["DATABASE_URL"], int(config["DATABASE_POOL_SIZE"]))
    return TaughtStore(instance / "taught")
