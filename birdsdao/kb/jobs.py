"""Background uploads (``/kb/upload`` with ``async=1``): a document too large to embed within a proxy's
timeout runs as a job, one at a time in arrival order, and ``/kb/jobs/<job_id>`` reports its state.

Jobs live in the memory of the process that took them (gunicorn.conf.py runs one worker): a restart forgets
them, and an upload cut short by it wrote nothing (store.py commits a document in one step or not at all).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict

from ..errors import APIError

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self, max_waiting: int = 8, keep: int = 200):
        self.max_waiting = max_waiting  # each waiting job holds its files in memory
        self.keep = keep  # finished jobs remembered for /kb/jobs
        self._jobs: OrderedDict[str, dict] = OrderedDict()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._runner: threading.Thread | None = None

    def submit(self, work) -> dict:
        """Queue ``work(progress)`` (``progress(done, total)`` as in ``embed_array``); the job's state."""
        with self._lock:
            waiting = sum(1 for job in self._jobs.values() if job["state"] == "queued")
            if waiting >= self.max_waiting:
                raise APIError(503, "busy", "too many uploads are waiting; try again later", {"Retry-After": "30"})
            job_id = uuid.uuid4().hex
            job = self._jobs[job_id] = {"job_id": job_id, "state": "queued", "progress": {}, "result": None,
                                        "created_at": time.time()}
            self._forget_old()
            if self._runner is None or not self._runner.is_alive():
                self._runner = threading.Thread(target=self._run, name="kb-upload-jobs", daemon=True)
                self._runner.start()
            self._queue.put((job_id, work))
            return dict(job)

    def get(self, job_id: str) -> dict:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise APIError(404, "unknown_job", "no such upload job (jobs are forgotten when the server restarts)")
            return {**job, "progress": dict(job["progress"])}

    def counts(self) -> dict[str, int]:
        """Jobs remembered, by state (queued, running, done, failed), for /metrics."""
        with self._lock:
            out = {state: 0 for state in ("queued", "running", "done", "failed")}
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

    def _run(self) -> None:
        while True:
            job_id, work = self._queue.get()
            self._update(job_id, state="running", started_at=time.time())

            def progress(done: int, total: int, job_id=job_id) -> None:
                self._update(job_id, progress={"chunks_embedded": done, "chunks_to_embed": total})

            try:
                self._update(job_id, state="done", result=work(progress), finished_at=time.time())
            except APIError as exc:
                self._update(job_id, state="failed", result=exc.to_dict(), finished_at=time.time())
            except Exception:  # noqa: BLE001 - a job's failure is reported, never kills the runner
                log.exception("upload job %s failed", job_id)
                self._update(job_id, state="failed", finished_at=time.time(),
                             result={"error": "internal error", "code": "internal_error"})
