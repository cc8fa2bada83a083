"""Upload jobs on PostgreSQL: app servers queue them (``PgJobs``), ``python -m birdsdao.worker`` processes on
any machine run them (``PgWorker``). The queue is procrastinate's (locking, retries, worker heartbeats); the
job's public state, progress and files are our own tables (migrations/0100_jobs.sql).

Crash safety: a job's files and row are committed before it is queued; a worker writes a document through the
KB store, which commits it in one step, and only then marks the job done. A worker killed mid-job stops
beating; after ``JOBS_STALLED_AFTER_S`` any live worker puts the job back in the queue (``JOBS_MAX_ATTEMPTS``
runs in all) or marks it failed with the reason. Design notes: README.md ("Background jobs").
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from contextlib import contextmanager

import procrastinate
import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from ..errors import APIError
from .jobs import STATES, Runner, busy, failure_of, unknown_job

log = logging.getLogger(__name__)

TASK = "birdsdao.kb_upload"
QUEUE = "kb_upload"
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
_SCHEMA_LOCK = 0x6B625F6A6F6273  # pg_advisory_xact_lock key: one process installs the queue schema at a time
_JOB_COLUMNS = ("job_id::text, kb_name, state, progress, result, attempts, extract(epoch FROM created_at), "
                "extract(epoch FROM started_at), extract(epoch FROM finished_at)")


def job_dict(row) -> dict:
    """One ``kb_jobs`` row (selected as ``_JOB_COLUMNS``) in the shape ``jobs.py`` documents."""
    job_id, kb_name, state, progress, result, attempts, created, started, finished = row
    job = {"job_id": job_id.replace("-", ""), "kb_name": kb_name, "state": state, "progress": progress,
           "result": result, "attempts": attempts, "created_at": float(created)}
    if started is not None:
        job["started_at"] = float(started)
    if finished is not None:
        job["finished_at"] = float(finished)
    return job


def unavailable(exc: BaseException) -> APIError:
    log.warning("job queue database unavailable: %s", exc)
    return APIError(503, "database_unavailable", "the job database is unavailable; try again soon",
                    {"Retry-After": "5"})


def make_pool(conninfo: str, timeout_s: float, max_size: int = 4) -> psycopg_pool.ConnectionPool:
    """A pool that fails fast (``timeout_s``) while the database is down and heals by itself when it is back:
    each connection is checked as it is handed out, so the ones a database restart broke are replaced, and a
    failed connection attempt is not retried in the background (``reconnect_timeout=0``): the next request
    tries afresh, so the first one after the database returns is served."""
    return psycopg_pool.ConnectionPool(
        conninfo, min_size=1, max_size=max_size, timeout=timeout_s, open=True,
        kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
        check=psycopg_pool.ConnectionPool.check_connection, reconnect_timeout=0)


def install_schema(conninfo: str, conn: psycopg.Connection) -> None:
    """Our tables (the migrations, db.py) and procrastinate's tables and functions, once per database (its
    schema script is not idempotent, hence the check under a lock). procrastinate's version is pinned: a new
    one comes with its own migration scripts to apply."""
    from .. import db

    db.migrate(conninfo)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            conn.execute(procrastinate.schema.SchemaManager.get_schema())


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=job_id)
    except (ValueError, TypeError):
        raise unknown_job() from None


class PgJobs:
    """The app server's side: queue a job (``submit``), read its state (``get``), count by state."""

    def __init__(self, conninfo: str, *, max_waiting: int, connect_timeout_s: float):
        self.conninfo, self.max_waiting = conninfo, max_waiting
        self.pool = make_pool(conninfo, connect_timeout_s)
        self.queue = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())
        self.queue.open(self.pool)
        self._schema_ready = False

    @contextmanager
    def _conn(self):
        try:
            with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise unavailable(exc) from None

    def _ensure_schema(self, conn) -> None:
        if not self._schema_ready:  # at first use, not at start-up: the server starts with the database down
            install_schema(self.conninfo, conn)
            self._schema_ready = True

    def submit(self, kb_name: str, files: list[tuple[str, bytes]], replace: bool) -> dict:
        job_id = uuid.uuid4()
        with self._conn() as conn:
            self._ensure_schema(conn)
            with conn.transaction():
                # One submit at a time counts the waiting jobs, so max_waiting holds across app servers.
                conn.execute("LOCK TABLE kb_jobs IN SHARE ROW EXCLUSIVE MODE")
                waiting = conn.execute("SELECT count(*) FROM kb_jobs WHERE state = 'queued'").fetchone()[0]
                if waiting >= self.max_waiting:
                    raise busy()
                row = conn.execute(
                    f"INSERT INTO kb_jobs (job_id, kb_name, replace, progress) VALUES (%s, %s, %s, %s) "
                    f"RETURNING {_JOB_COLUMNS}", (job_id, kb_name, replace, Jsonb({"files": len(files)}))).fetchone()
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO kb_job_files (job_id, position, filename, data) VALUES (%s, %s, %s, %s)",
                                    [(job_id, i, name, data) for i, (name, data) in enumerate(files)])
            try:
                self.queue.configure_task(TASK, queue=QUEUE).defer(job_id=str(job_id))
            except Exception as exc:  # the rows are there but no worker will ever see them: say so
                _finish(conn, job_id, "failed", {"error": "the job could not be queued", "code": "queue_failed"})
                raise unavailable(exc) from None
        return job_dict(row)

    def get(self, job_id: str) -> dict:
        key = _job_uuid(job_id)
        with self._conn() as conn:
            self._ensure_schema(conn)
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM kb_jobs WHERE job_id = %s", (key,)).fetchone()
        if row is None:
            raise unknown_job()
        return job_dict(row)

    def counts(self) -> dict[str, int]:
        """Jobs by state for /metrics; empty while the database is unreachable (a scrape must not fail)."""
        try:
            with self._conn() as conn:
                self._ensure_schema(conn)
                rows = conn.execute("SELECT state, count(*) FROM kb_jobs GROUP BY state").fetchall()
        except APIError:
            return {}
        return {**dict.fromkeys(STATES, 0), **dict(rows)}


def _finish(conn, job_id, state: str, result: dict) -> None:
    """A job's end and its files' removal in one transaction."""
    with conn.transaction():
        conn.execute("UPDATE kb_jobs SET state = %s, result = %s, finished_at = now(), updated_at = now() "
                     "WHERE job_id = %s", (state, Jsonb(result), job_id))
        conn.execute("DELETE FROM kb_job_files WHERE job_id = %s", (job_id,))


class PgWorker:
    """A worker process's side: runs queued jobs with ``run`` (the KB service's ``run_upload_job``) and puts
    the jobs of workers that stopped beating back in the queue, or fails them once they ran out of attempts."""

    def __init__(self, conninfo: str, run: Runner, *, concurrency: int, heartbeat_s: float, stalled_after_s: float,
                 max_attempts: int, timeout_s: float):
        self.conninfo, self.run = conninfo, run
        self.concurrency, self.heartbeat_s, self.stalled_after_s = concurrency, heartbeat_s, stalled_after_s
        self.max_attempts, self.timeout_s = max_attempts, timeout_s
        self.pool = make_pool(conninfo, timeout_s, max_size=concurrency + 2)
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
        self.app.task(name=TASK, queue=QUEUE, pass_context=True)(self._task)

    def _task(self, context, job_id: str) -> None:
        self.execute(uuid.UUID(job_id), attempt=context.job.attempts + 1)

    def execute(self, job_id: uuid.UUID, attempt: int) -> str | None:
        """Run one job (its ``attempt``-th run); the state it ended in, None when it was not there to run."""
        with self.pool.connection() as conn:
            row = conn.execute("UPDATE kb_jobs SET state = 'running', attempts = %s, worker = %s, started_at = now(), "
                               "updated_at = now() WHERE job_id = %s AND state IN ('queued', 'running') "
                               "RETURNING kb_name, replace", (attempt, WORKER_NAME, job_id)).fetchone()
            if row is None:  # finished already (a late retry) or deleted
                return None
            kb_name, replace = row
            files = [(name, bytes(data)) for name, data in conn.execute(
                "SELECT filename, data FROM kb_job_files WHERE job_id = %s ORDER BY position", (job_id,))]

        def progress(done: int, total: int) -> None:
            with self.pool.connection() as conn:
                conn.execute("UPDATE kb_jobs SET progress = progress || %s, updated_at = now() WHERE job_id = %s",
                             (Jsonb({"chunks_embedded": done, "chunks_to_embed": total}), job_id))

        try:
            state, result = "done", self.run(kb_name, files, replace, progress)
        except Exception as exc:  # noqa: BLE001 - reported in the job; the worker goes on
            if not isinstance(exc, APIError):
                log.exception("upload job %s failed", job_id)
            state, result = "failed", failure_of(exc)
        with self.pool.connection() as conn:
            _finish(conn, job_id, state, result)
        log.info("upload job %s (attempt %d): %s", job_id, attempt, state)
        return state

    async def recover_stalled(self) -> int:
        """Jobs whose worker stopped beating: queued again, or failed after ``max_attempts`` runs. How many."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(task_name=TASK, seconds_since_heartbeat=self.stalled_after_s)
        for job in stalled:
            job_id = uuid.UUID(job.task_kwargs["job_id"])
            runs = job.attempts + 1
            try:
                if runs < self.max_attempts:
                    await manager.retry_job(job)
                    await asyncio.to_thread(self._requeued, job_id, runs)
                    log.warning("upload job %s: its worker stopped during run %d; queued again", job_id, runs)
                else:
                    await manager.finish_job(job, procrastinate.jobs.Status.FAILED, delete_job=False)
                    reason = {"error": f"the worker running this upload stopped {runs} times (killed or lost); "
                                       "a document it had not finished was not written", "code": "worker_lost"}
                    await asyncio.to_thread(self._finish, job_id, "failed", reason)
                    log.warning("upload job %s: its worker stopped %d times; failed", job_id, runs)
            except procrastinate.exceptions.ProcrastinateException as exc:  # another worker recovered it first
                log.info("upload job %s: recovered elsewhere (%s)", job_id, exc)
        return len(stalled)

    def _requeued(self, job_id: uuid.UUID, runs: int) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE kb_jobs SET state = 'queued', updated_at = now(), "
                         "progress = progress - 'chunks_embedded' - 'chunks_to_embed' "
                         "WHERE job_id = %s AND state = 'running'", (job_id,))

    def _finish(self, job_id: uuid.UUID, state: str, result: dict) -> None:
        with self.pool.connection() as conn:
            _finish(conn, job_id, state, result)

    async def _recover_forever(self) -> None:
        while True:
            try:
                await self.recover_stalled()
            except Exception:  # noqa: BLE001 - the database may be restarting; try again next round
                log.exception("looking for stalled upload jobs failed")
            await asyncio.sleep(self.heartbeat_s)

    async def run_async(self) -> None:
        with self.pool.connection() as conn:
            install_schema(self.conninfo, conn)
        async with self.app.open_async():
            recovery = asyncio.create_task(self._recover_forever())
            try:
                await self.app.run_worker_async(
                    queues=[QUEUE], concurrency=self.concurrency, update_heartbeat_interval=self.heartbeat_s,
                    stalled_worker_timeout=self.stalled_after_s, fetch_job_polling_interval=self.heartbeat_s,
                    delete_jobs="successful")
            finally:
                recovery.cancel()

    def run_forever(self) -> None:
        asyncio.run(self.run_async())
