"""Background uploads (``/kb/upload`` with ``async=1``): a document too large to embed within a proxy's
timeout runs as a job, and ``/kb/jobs/<job_id>`` reports its state, progress and result.

Two implementations of one interface (``submit`` / ``get`` / ``counts``), chosen by configuration in
``make_jobs``: ``ThreadJobs`` here (the embedded default: one runner thread in the process that took the
upload) and ``PgJobs`` in ``pg_jobs.py`` (a PostgreSQL queue run by ``python -m birdsdao.worker`` processes,
used when ``DATABASE_URL`` is set). Both run the same ``run(kb_name, files, replace, progress)`` (the
service's ``run_upload_job``), so a job's result is what the synchronous upload answers.

A job's public shape (one place, ``job_dict``): ``{"job_id", "kb_name", "state": queued|running|done|failed,
"progress": {"files", "chunks_embedded", "chunks_to_embed"}, "result", "attempts", "created_at", ...}``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from typing import Callable, Protocol

from ..errors import APIError

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed")
# run(kb_name, files, replace, progress) -> result; progress(done, total) as in ``embed_array``.
Runner = Callable[[str, list, bool, Callable[[int, int], None]], dict]


class JobQueue(Protocol):
    def submit(self, kb_name: str, files: list[tuple[str, bytes]], replace: bool) -> dict: ...
    def get(self, job_id: str) -> dict: ...
    def counts(self) -> dict[str, int]: ...


def unknown_job() -> APIError:
    return APIError(404, "unknown_job", "no such upload job")


def busy(retry_after_s: int = 30) -> APIError:
    return APIError(503, "busy", "too many uploads are waiting; try again later", {"Retry-After": str(retry_after_s)})


def failure_of(exc: BaseException) -> dict:
    """A job's ``result`` when its run raised: the APIError's JSON, anything else an internal error (logged)."""
    if isinstance(exc, APIError):
        return exc.to_dict()
    return {"error": "internal error", "code": "internal_error"}


class ThreadJobs:
    """Jobs in the memory of the process that took them, one at a time in arrival order. A restart forgets
    them, and an upload cut short by it wrote nothing (the store commits a document in one step or not at all);
    ``PgJobs`` is the one that survives restarts and spreads over machines."""

    def __init__(self, run: Runner, max_waiting: int = 8, keep: int = 200):
        self.run = run
        self.max_waiting = max_waiting  # each waiting job holds its files in memory
        self.keep = keep  # finished jobs remembered for /kb/jobs
        self._jobs: OrderedDict[str, dict] = OrderedDict()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._runner: threading.Thread | None = None

    def submit(self, kb_name: str, files: list[tuple[str, bytes]], replace: bool) -> dict:
        with self._lock:
            waiting = sum(1 for job in self._jobs.values() if job["state"] == "queued")
            if waiting >= self.max_waiting:
                raise busy()
            job_id = uuid.uuid4().hex
            job = self._jobs[job_id] = {"job_id": job_id, "kb_name": kb_name, "state": "queued",
                                        "progress": {"files": len(files)}, "result": None, "attempts": 0,
                                        "created_at": time.time()}
            self._forget_old()
            if self._runner is None or not self._runner.is_alive():
                self._runner = threading.Thread(target=self._loop, name="kb-upload-jobs", daemon=True)
                self._runner.start()
            self._queue.put((job_id, kb_name, files, replace))
            return dict(job)

    def get(self, job_id: str) -> dict:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise APIError(404, "unknown_job", "no such upload job (jobs are forgotten when the server restarts)")
            return {**job, "progress": dict(job["progress"])}

    def counts(self) -> dict[str, int]:
        """Jobs remembered, by state, for /metrics."""
        with self._lock:
            out = dict.fromkeys(STATES, 0)
            for job in self._jobs.values():
                out[job["state"]] += 1
            return out

    def _forget_old(self) -> None:
        finished = [k for k, job in self._jobs.items() if job["state"] in ("done", "failed")]
        for job_id in finished[:max(0, len(finished) - self.keep)]:
            del self._jobs[job_id]

    def _update(self, job_id: str, **fields) -> None:
        with self._lock:
            self._jobs[job_id].update(fields)

    def _progress(self, job_id: str, done: int, total: int) -> None:
        with self._lock:
            self._jobs[job_id]["progress"].update(chunks_embedded=done, chunks_to_embed=total)

    def _loop(self) -> None:
        while True:
            job_id, kb_name, files, replace = self._queue.get()
            self._update(job_id, state="running", started_at=time.time(), attempts=1)
            try:
                result = self.run(kb_name, files, replace, lambda done, total: self._progress(job_id, done, total))
                self._update(job_id, state="done", result=result, finished_at=time.time())
            except Exception as exc:  # noqa: BLE001 - a job's failure is reported, never kills the runner
                if not isinstance(exc, APIError):
                    log.exception("upload job %s failed", job_id)
                self._update(job_id, state="failed", result=failure_of(exc), finished_at=time.time())


def make_jobs(config, run: Runner) -> JobQueue:
    """The job queue configuration asks for: PostgreSQL when ``DATABASE_URL`` is set, else threads here."""
    if config["DATABASE_URL"]:
        from .pg_jobs import PgJobs  # imports psycopg and procrastinate only where a database is configured

        return PgJobs(config["DATABASE_URL"], max_waiting=int(config["JOBS_MAX_WAITING"]),
                      connect_timeout_s=float(config["DATABASE_TIMEOUT_S"]))
    return ThreadJobs(run, max_waiting=int(config["JOBS_MAX_WAITING"]))
