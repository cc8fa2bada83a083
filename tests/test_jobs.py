"""Background upload jobs on PostgreSQL (kb/pg_jobs.py): a real PostgreSQL (tests/pg.py), real app servers and
real ``python -m birdsdao.worker`` processes, killed with SIGKILL mid-job."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from birdsdao.config import PROJECT_ROOT

from .conftest import app_config
from .pg import pg_db, pg_server  # noqa: F401 - fixtures

KB_SERVICES = ["embedder", "kb"]


def _doc(paragraphs: int) -> bytes:
    """A document of ``paragraphs`` distinct chunks (each ~400 characters, none repeated, so every one is embedded)."""
    return "\n\n".join(f"第{i}段：白头海雕在第{i}号湖边捕鱼，记录编号{i * 7919}。" * 12 for i in range(paragraphs)).encode()


@pytest.fixture
def stack(pg_db, tmp_path):
    """App servers and workers on one database and one instance folder: ``stack.app()`` builds an app server
    (again: a restart), ``stack.worker(**config)`` starts a worker process, killed at the end."""
    from birdsdao import create_app

    class Stack:
        url, instance, workers, logs = pg_db, tmp_path / "instance", [], []

        def app(self, **config):
            config = {"KB_SPECIES_BUILD": "off", "DATABASE_URL": self.url, **config}
            return create_app(app_config(self.instance, KB_SERVICES, **config))

        def worker(self, **config) -> subprocess.Popen:
            env = dict(os.environ, BIRDSDAO_DATABASE_URL=self.url, BIRDSDAO_INSTANCE_PATH=str(self.instance),
                       BIRDSDAO_JOBS_HEARTBEAT_S="1", BIRDSDAO_JOBS_STALLED_AFTER_S="3",
                       **{f"BIRDSDAO_{k}": str(v) for k, v in config.items()})
            log = open(tmp_path / f"worker-{len(self.workers)}.log", "wb")
            self.logs.append(log)
            proc = subprocess.Popen([sys.executable, "-m", "birdsdao.worker"], cwd=PROJECT_ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            self.workers.append(proc)
            return proc

    s = Stack()
    yield s
    for proc in s.workers:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    for log in s.logs:
        log.close()


def _submit(client, kb_name: str, name: str, data: bytes, **fields):
    body = {"kb_name": kb_name, "async": "1", **fields, "files": [(io.BytesIO(data), name)]}
    return client.post("/kb/upload", data=body, content_type="multipart/form-data")


def _wait(client, job_id: str, until, timeout_s: float = 240) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = client.get(f"/kb/jobs/{job_id}").json
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job never reached the state wanted: {job}")


def _finished(job) -> bool:
    return job["state"] in ("done", "failed")


def _files_left(url: str, job_id: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM kb_job_files WHERE job_id = %s", (uuid.UUID(job_id),)).fetchone()[0]


def test_a_queued_job_survives_an_app_server_restart_and_a_worker_process_runs_it(stack):
    first = stack.app().test_client()
    assert first.post("/kb/create", data={"kb_name": "pgjobs"}).status_code == 201
    r = _submit(first, "pgjobs", "eagle.md", _doc(6))
    assert r.status_code == 202, r.json
    job_id = r.json["job_id"]
    del first  # the app server that took the upload is gone; no worker has run yet
    client = stack.app().test_client()
    job = client.get(f"/kb/jobs/{job_id}").json
    assert (job["state"], job["progress"]["files"]) == ("queued", 1), job
    stack.worker()
    job = _wait(client, job_id, _finished)
    assert job["state"] == "done", job
    (result,) = job["result"]["files"]
    assert (result["doc_name"], result["status"]) == ("eagle.md", "added") and result["chunks"] >= 6
    assert job["progress"]["chunks_embedded"] == job["progress"]["chunks_to_embed"] > 0
    assert job["attempts"] == 1 and job["finished_at"] >= job["started_at"] >= job["created_at"]
    docs = client.get("/kb/docs", query_string={"kb_name": "pgjobs"}).json["docs"]
    assert [(d["doc_name"], d["chunks"]) for d in docs] == [("eagle.md", result["chunks"])]
    assert _files_left(stack.url, job_id) == 0, "a finished job's files stay in the database"


def _kill_mid_job(stack, client, data: bytes, **worker_config) -> tuple[str, dict]:
    """Submit, start a worker, SIGKILL it once it has embedded some but not all chunks; (job_id, that job)."""
    assert client.post("/kb/create", data={"kb_name": "crash"}).status_code == 201
    job_id = _submit(client, "crash", "big.md", data).json["job_id"]
    worker = stack.worker(KB_EMBED_BATCH=4, **worker_config)
    job = _wait(client, job_id, lambda j: _finished(j) or j["progress"].get("chunks_embedded", 0) >= 8)
    assert job["state"] == "running" and job["progress"]["chunks_embedded"] < job["progress"]["chunks_to_embed"], job
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert client.get("/kb/docs", query_string={"kb_name": "crash"}).json["docs"] == [], "a killed worker wrote a document"
    return job_id, job


def test_a_worker_killed_mid_job_has_its_job_run_again_and_the_document_is_whole(stack):
    client = stack.app().test_client()
    job_id, killed = _kill_mid_job(stack, client, _doc(60))
    stack.worker()  # notices the silent worker after JOBS_STALLED_AFTER_S and queues its job again
    job = _wait(client, job_id, _finished)
    assert job["state"] == "done" and job["attempts"] == 2, job
    (result,) = job["result"]["files"]
    assert result["status"] == "added" and result["chunks"] >= 60
    docs = client.get("/kb/docs", query_string={"kb_name": "crash"}).json["docs"]
    assert [(d["doc_name"], d["chunks"]) for d in docs] == [("big.md", result["chunks"])]
    hits = client.post("/kb/search", data={"kb_name": "crash", "query": "第41号湖", "top_k": 3}).json["hits"]
    assert hits and "第41号湖" in hits[0]["text"]


def test_a_worker_killed_on_the_last_attempt_fails_the_job_with_a_reason_and_writes_nothing(stack):
    client = stack.app().test_client()
    job_id, _ = _kill_mid_job(stack, client, _doc(60), JOBS_MAX_ATTEMPTS=1)
    stack.worker(JOBS_MAX_ATTEMPTS=1)
    job = _wait(client, job_id, _finished)
    assert job["state"] == "failed" and job["result"]["code"] == "worker_lost", job
    assert "stopped" in job["result"]["error"]
    assert client.get("/kb/docs", query_string={"kb_name": "crash"}).json["docs"] == []
    assert _files_left(stack.url, job_id) == 0


def test_a_full_queue_answers_503_busy_and_an_unknown_job_404(stack):
    client = stack.app(JOBS_MAX_WAITING=1).test_client()
    assert client.post("/kb/create", data={"kb_name": "q"}).status_code == 201
    assert _submit(client, "q", "a.md", _doc(1)).status_code == 202
    r = _submit(client, "q", "b.md", _doc(1))
    assert (r.status_code, r.json["code"], r.headers["Retry-After"]) == (503, "busy", "30")
    for job_id in (uuid.uuid4().hex, "not-a-uuid", "'; DROP TABLE kb_jobs; --"):
        r = client.get(f"/kb/jobs/{job_id}")
        assert (r.status_code, r.json["code"]) == (404, "unknown_job"), job_id
    r = _submit(client, "no-such-kb", "a.md", _doc(1))
    assert (r.status_code, r.json["code"]) == (404, "unknown_kb")


def test_an_unreachable_job_database_is_503_database_unavailable_within_seconds():
    """The queue on its own (an app server's KB store may refuse to start without its database at all)."""
    from birdsdao.errors import APIError
    from birdsdao.kb.pg_jobs import PgJobs

    jobs = PgJobs("postgresql://nobody@127.0.0.1:9/nothing", max_waiting=8, connect_timeout_s=1)
    try:
        for call in (lambda: jobs.get(uuid.uuid4().hex), lambda: jobs.submit("kb", [("a.md", b"x")], False)):
            started = time.monotonic()
            with pytest.raises(APIError) as caught:
                call()
            assert (caught.value.status, caught.value.code) == (503, "database_unavailable")
            assert time.monotonic() - started < 5
        assert jobs.counts() == {}  # a /metrics scrape still answers
    finally:
        jobs.pool.close()


def test_the_job_queue_answers_503_while_postgresql_is_down_and_recovers_without_a_restart(pg_server, pg_db):
    from pgserver._commands import pg_ctl

    from birdsdao.errors import APIError
    from birdsdao.kb.pg_jobs import PgJobs

    jobs = PgJobs(pg_db, max_waiting=8, connect_timeout_s=1)
    try:
        job = jobs.submit("kb", [("a.md", b"x")], False)
        assert jobs.get(job["job_id"])["state"] == "queued"
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg_server.pgdata, user=pg_server.system_user, timeout=60)
        try:
            started = time.monotonic()
            with pytest.raises(APIError) as caught:
                jobs.get(job["job_id"])
            assert (caught.value.status, caught.value.code) == (503, "database_unavailable")
            assert time.monotonic() - started < 5
        finally:
            pg_server.ensure_postgres_running()
        assert jobs.get(job["job_id"])["state"] == "queued"  # the same object: no restart
    finally:
        jobs.pool.close()
