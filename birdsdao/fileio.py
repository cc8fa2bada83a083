"""Durable file writes and cross-process locking shared by every store: a file is fsynced before it is renamed into place and its
folder is fsynced after, so a power cut leaves either the old file or the complete new one, never an empty
or half-written one (a rename alone can reach the disk before the data it points to)."""
from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a create, rename or unlink in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in place and fsync it (for files inside a folder not yet published)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, write: Callable[[BinaryIO], object], mode: int | None = None) -> None:
    """Replace ``path`` with what ``write(fh)`` writes: temp file beside it, fsync, ``os.replace``, fsync
    the folder. Readers see the old file or the new one, before and after a crash. ``mode``: permissions
    for the new file (the temp file starts owner-only; reports and data files meant for anyone pass 0o644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def exclusive_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing) while the block runs, between threads and
    processes (gunicorn workers) alike, since each holder opens its own file description. Yields the open file."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stat_key(path: Path):
    """(inode, mtime_ns, size) of ``path``, None when it is absent: it changes whenever any process renamed a
    new file into place, so comparing it tells a worker to reload."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
