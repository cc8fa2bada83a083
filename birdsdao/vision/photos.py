"""Recent photos of the conversation: ``/detect`` keeps each photo (a bounded JPEG, EXIF stripped) and what
the server saw in it (the record: detections, EXIF date/time/camera, place) so ``/get_response`` can answer
questions about it by ``photo_id``.

Photo ids carry their own creation time: ``p`` + 8 base32 characters of the creation second + 16 base32
characters of randomness (80 bits). The id is checked against a strict pattern before any lookup and is never
part of a path: the index maps it to a file name the server drew itself. Because an id says when it was
made, "expired" (410) is told from "unknown" (404) without keeping ids forever: an id older than the TTL is
expired; a younger one evicted early (count or byte limit, oldest first) is at or below the store's eviction
watermark (the newest creation second evicted so far), so it is expired too; anything else not in the index
was never issued here (404).

``PhotoStore`` is the interface; ``FilePhotoStore`` keeps everything under ``<instance>/photos`` (or
``PHOTO_STORE_PATH``), written atomically under one cross-process lock, so all gunicorn workers of a host
share it. ``PgPhotoStore`` (``DATABASE_URL`` set) keeps them in PostgreSQL, shared by every app server.

``put_later`` (what /detect uses) hands the JPEG encoding and the writes to one writer thread per store and
returns the id at once: keeping the photo costs a /detect call nothing it waits for (it was a quarter of the
call: encode, three atomic writes, the index). A ``get`` of an id this process has not written yet waits for
it; an id another worker issued in the last ``pending_wait_s`` seconds is looked for again until then."""
from __future__ import annotations

import base64
import io
import atexit
import json
import logging
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import APIError
from ..fileio import exclusive_lock, fsync_dir, stat_key, write_atomic

log = logging.getLogger(__name__)

PHOTO_ID = re.compile(r"^p[a-z2-7]{24}$")
_FILE_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def new_photo_id(now: float | None = None) -> str:
    second = int(time.time() if now is None else now)
    stamp = base64.b32encode(second.to_bytes(5, "big")).decode().lower()
    rand = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return f"p{stamp}{rand}"


def id_created(photo_id: str) -> int:
    return int.from_bytes(base64.b32decode(photo_id[1:9].upper()), "big")


def check_photo_id(raw) -> str:
    """A well-formed photo id, or 400 ``bad_field`` (nothing is looked up for a malformed one)."""
    if not isinstance(raw, str) or not PHOTO_ID.match(raw):
        raise APIError(400, "bad_field", "'photo_id' is not a photo id this server issues")
    return raw


@dataclass
class StoredPhoto:
    photo_id: str
    jpeg: bytes
    record: dict


class PhotoStore:
    """What every photo store does. ``put`` may evict the oldest photos to stay within its limits."""

    def put(self, jpeg: bytes, record: dict) -> str:
        raise NotImplementedError

    def put_later(self, make_jpeg: Callable[[], bytes], record: dict) -> str:
        """The id at once; the photo is stored soon after (a store without a writer stores it now)."""
        return self.put(make_jpeg(), record)

    def get(self, photo_id: str) -> StoredPhoto:
        """The photo, or 404 ``unknown_photo`` / 410 ``photo_expired`` / 400 ``bad_field``."""
        raise NotImplementedError

    def stats(self) -> dict:
        raise NotImplementedError


class FilePhotoStore(PhotoStore):
    def __init__(self, root: Path, *, ttl_s: float, max_count: int, max_bytes: int, clock=time.time,
                 pending_wait_s: float = 5.0, queue_size: int = 32):
        self.root = Path(root)
        self.ttl_s = float(ttl_s)
        self.max_count = int(max_count)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self.pending_wait_s = float(pending_wait_s)
        self._index_path = self.root / "index.json"
        self._cache_key, self._cache = None, None
        self._cache_lock = threading.Lock()
        self._pending: dict[str, threading.Event] = {}  # ids handed out by put_later, not yet written
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    # -- index --------------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        key = stat_key(self._index_path)
        with self._cache_lock:
            if key is not None and key == self._cache_key:
                return self._cache
        try:
            index = json.loads(self._index_path.read_text(encoding="utf-8")) if key else {}
        except (OSError, ValueError) as exc:
            log.warning("photo index unreadable, starting empty: %r", exc)
            index = {}
        index.setdefault("photos", {})
        index.setdefault("evicted_up_to", 0)
        with self._cache_lock:
            self._cache_key, self._cache = key, index
        return index

    def _write_index(self, index: dict) -> None:
        data = json.dumps(index, separators=(",", ":")).encode()
        write_atomic(self._index_path, lambda fh: fh.write(data))

    def _paths(self, token: str) -> tuple[Path, Path]:
        if not _FILE_TOKEN.match(token):  # the index is ours, but a file name is never taken on trust
            raise ValueError("bad file token in the photo index")
        return self.root / f"{token}.jpg", self.root / f"{token}.json"

    # -- the interface ------------------------------------------------------------------------------
    def put(self, jpeg: bytes, record: dict) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        photo_id = new_photo_id(now)
        self._write(photo_id, now, jpeg, record)
        return photo_id

    def put_later(self, make_jpeg: Callable[[], bytes], record: dict) -> str:
        self.root.mkdir(parents=True, exist_ok=True)  # an unusable store fails here, in the request
        now = self.clock()
        photo_id = new_photo_id(now)
        done = threading.Event()
        with self._writer_lock:
            self._pending[photo_id] = done
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_behind, name="photo-writer", daemon=True)
                self._writer.start()
                atexit.register(self.flush)
        try:
            self._jobs.put_nowait((photo_id, now, make_jpeg, record, done))
        except queue.Full:  # the writer is behind: this request writes its own photo
            try:
                self._write(photo_id, now, make_jpeg(), record)
            finally:
                self._settle(photo_id, done)
        return photo_id

    def _write_behind(self) -> None:
        while True:
            photo_id, now, make_jpeg, record, done = self._jobs.get()
            try:
                self._write(photo_id, now, make_jpeg(), record)
            except Exception as exc:  # noqa: BLE001 - a photo not kept is answered 404 later, never a dead writer
                log.warning("photo %s not kept: %r", photo_id, exc)
            finally:
                self._settle(photo_id, done)
                self._jobs.task_done()

    def _settle(self, photo_id: str, done: threading.Event) -> None:
        with self._writer_lock:
            self._pending.pop(photo_id, None)
        done.set()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout``) until every photo handed to the writer is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._writer_lock:
                waiting = list(self._pending.values())
            if not waiting:
                return
            waiting[0].wait(max(0.0, deadline - time.monotonic()))

    def _write(self, photo_id: str, now: float, jpeg: bytes, record: dict) -> None:
        token = secrets.token_hex(16)
        meta = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        size = len(jpeg) + len(meta)
        if size > self.max_bytes:
            raise APIError(413, "photo_too_large", "the photo is larger than this server keeps for conversations")
        jpg_path, json_path = self._paths(token)
        with exclusive_lock(self.root / ".lock"):
            # the files first, then the index that names them: a crash in between leaves only orphans
            write_atomic(jpg_path, lambda fh: fh.write(jpeg))
            write_atomic(json_path, lambda fh: fh.write(meta))
            index = json.loads(json.dumps(self._read_index()))  # a private copy to change
            index["photos"][photo_id] = {"file": token, "created": int(now), "bytes": size}
            doomed = self._evict(index, now)
            self._write_index(index)
            for old in doomed:
                for path in self._paths(old):
                    path.unlink(missing_ok=True)
            if doomed:
                fsync_dir(self.root)

    def _evict(self, index: dict, now: float) -> list[str]:
        """Drop expired photos, then the oldest until count and bytes fit; return their file tokens."""
        photos = index["photos"]
        order = sorted(photos, key=lambda pid: (photos[pid]["created"], pid))
        total = sum(p["bytes"] for p in photos.values())
        doomed = []
        for pid in order:
            entry = photos[pid]
            expired = now - entry["created"] > self.ttl_s
            if not expired and len(photos) <= self.max_count and total <= self.max_bytes:
                break
            if not expired:  # pushed out early: ids up to this second now answer 410, not 404
                index["evicted_up_to"] = max(index["evicted_up_to"], entry["created"])
            total -= entry["bytes"]
            doomed.append(entry["file"])
            del photos[pid]
        return doomed

    def get(self, photo_id: str) -> StoredPhoto:
        photo_id = check_photo_id(photo_id)
        created = id_created(photo_id)
        now = self.clock()
        if now - created > self.ttl_s:
            raise _expired()
        with self._writer_lock:
            pending = self._pending.get(photo_id)
        if pending is not None:
            pending.wait(self.pending_wait_s)
        index = self._read_index()
        entry = index["photos"].get(photo_id)
        deadline = time.monotonic() + self.pending_wait_s - max(0.0, now - created)
        while entry is None and created > index["evicted_up_to"] and time.monotonic() < deadline:
            time.sleep(0.05)  # just issued by another worker of this host, whose writer may not be done yet
            index = self._read_index()
            entry = index["photos"].get(photo_id)
        if entry is None:
            if created <= index["evicted_up_to"]:
                raise _expired()
            raise APIError(404, "unknown_photo", "no photo with this 'photo_id' was uploaded to this server")
        jpg_path, json_path = self._paths(entry["file"])
        try:
            return StoredPhoto(photo_id, jpg_path.read_bytes(), json.loads(json_path.read_text(encoding="utf-8")))
        except FileNotFoundError:  # evicted by another worker after we read the index
            raise _expired() from None

    def stats(self) -> dict:
        index = self._read_index()
        return {"photos": len(index["photos"]), "bytes": sum(p["bytes"] for p in index["photos"].values())}


class PgPhotoStore(PhotoStore):
    """The same store on PostgreSQL (``DATABASE_URL`` set): one row per photo, so every app server answers an id
    another issued. A put and its eviction are one transaction; the watermark only ever rises."""

    def __init__(self, url: str, *, ttl_s: float, max_count: int, max_bytes: int, clock=time.time,
                 pool_size: int = 8):
        from .. import db

        self.pool = db.pool(url, max_size=pool_size)
        self.ttl_s, self.max_count, self.max_bytes, self.clock = float(ttl_s), int(max_count), int(max_bytes), clock

    def put(self, jpeg: bytes, record: dict) -> str:
        from psycopg.types.json import Jsonb

        now = self.clock()
        photo_id = new_photo_id(now)
        size = len(jpeg) + len(json.dumps(record, ensure_ascii=False).encode())
        if size > self.max_bytes:
            raise APIError(413, "photo_too_large", "the photo is larger than this server keeps for conversations")
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("INSERT INTO photos (photo_id, created, bytes, jpeg, record) VALUES (%s, %s, %s, %s, %s)",
                         (photo_id, int(now), size, jpeg, Jsonb(record)))
            conn.execute("DELETE FROM photos WHERE created < %s", (int(now - self.ttl_s),))
            kept = total = 0
            doomed, newest_doomed = [], 0
            for pid, created, nbytes in conn.execute(
                    "SELECT photo_id, created, bytes FROM photos ORDER BY created DESC, photo_id DESC"):
                if kept < self.max_count and total + nbytes <= self.max_bytes:
                    kept, total = kept + 1, total + nbytes
                else:
                    doomed.append(pid)
                    newest_doomed = max(newest_doomed, created)
            if doomed:
                conn.execute("DELETE FROM photos WHERE photo_id = ANY(%s)", (doomed,))
                conn.execute("UPDATE photo_watermark SET evicted_up_to = GREATEST(evicted_up_to, %s)", (newest_doomed,))
        return photo_id

    def get(self, photo_id: str) -> StoredPhoto:
        photo_id = check_photo_id(photo_id)
        created = id_created(photo_id)
        if self.clock() - created > self.ttl_s:
            raise _expired()
        with self.pool.connection() as conn:
            row = conn.execute("SELECT jpeg, record FROM photos WHERE photo_id = %s", (photo_id,)).fetchone()
            if row is None:
                evicted_up_to = conn.execute("SELECT evicted_up_to FROM photo_watermark").fetchone()[0]
        if row is None:
            if created <= evicted_up_to:
                raise _expired()
            raise APIError(404, "unknown_photo", "no photo with this 'photo_id' was uploaded to this server")
        return StoredPhoto(photo_id, bytes(row[0]), row[1])

    def stats(self) -> dict:
        with self.pool.connection() as conn:
            count, total = conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM photos").fetchone()
        return {"photos": int(count), "bytes": int(total)}


def _expired() -> APIError:
    return APIError(410, "photo_expired", "this photo is no longer kept on the server; upload it again")


def build_photo_store(config) -> PhotoStore:
    kind = config["PHOTO_STORE"]
    if kind not in ("auto", "file", "database"):
        raise ValueError(f"PHOTO_STORE must be 'auto', 'file' or 'database' (got {kind!r})")
    options = {"ttl_s": config["PHOTO_TTL_S"], "max_count": config["PHOTO_MAX_COUNT"],
               "max_bytes": config["PHOTO_MAX_BYTES"]}
    if kind == "database" or (kind == "auto" and config["DATABASE_URL"]):
        return PgPhotoStore(config["DATABASE_URL"], pool_size=int(config["DATABASE_POOL_SIZE"]), **options)
    root = Path(config["PHOTO_STORE_PATH"] or Path(config["INSTANCE_PATH"]) / "photos")
    return FilePhotoStore(root, pending_wait_s=float(config["PHOTO_PENDING_WAIT_S"]), **options)


# -- what is kept ------------------------------------------------------------------------------------
def encode_jpeg(image, max_side: int, quality: int) -> bytes:
    """The decoded photo as a bounded JPEG without metadata (its EXIF facts are in the record)."""
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def photo_record(result: dict, exif: dict, place) -> dict:
    """What the conversation may know about a photo: /detect's answer (without the annotated image and
    timings), the EXIF date, time and camera, and the place name of its position (``places.Place`` or None)."""
    keep = ("box", "box_confidence", "species", "answer", "lookalike", "not_bird")
    detections = []
    for det in result.get("detections", []):
        d = {k: det[k] for k in keep if k in det}
        d["species"] = list(d.get("species") or [])[:3]
        detections.append(d)
    return {
        "image": result.get("image"),
        "is_bird": bool(result.get("is_bird")),
        "detections": detections,
        "location": result.get("location"),
        "taken": {"date": exif.get("date"), "time": exif.get("time"), "camera": exif.get("camera")},
        "place": place.to_dict() if place is not None else None,
    }


def prepare(result, config) -> tuple[Callable[[], bytes], dict]:
    """(a function that encodes the JPEG, the record) of a ``VisionPipeline.detect(..., keep_image=True)``
    result, with the EXIF facts detect already read. The place is named only for a real position (EXIF GPS or the form's
    lat/lon), never for a region."""
    from .places import place_name

    exif = result.exif
    where = result.location
    place = None
    if where is not None and where.source in ("exif", "form"):
        try:
            place = place_name(where.lat, where.lon)
        except Exception as exc:  # the place is a nicety: a broken table must not lose the photo
            log.warning("reverse geocoding failed: %r", exc)
    image, side, quality = result.image, int(config["PHOTO_MAX_SIDE"]), int(config["PHOTO_JPEG_QUALITY"])
    return (lambda: encode_jpeg(image, side, quality)), photo_record(result.to_dict(), exif, place)
