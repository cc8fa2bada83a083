"""The PostgreSQL storage path (DATABASE_URL) against a real PostgreSQL 16 + pgvector (tests/pg.py): migrations,
the KB and taught-species contracts run against both stores, crash safety of a PG write (a writer killed with
SIGKILL mid-transaction), and two real gunicorn app servers (2 workers each) behind a real nginx upstream sharing
one database: what is created, uploaded or taught through one is answered by the other."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from birdsdao import db
from birdsdao.config import PROJECT_ROOT
from birdsdao.errors import APIError
from birdsdao.kb import KnowledgeBaseService
from birdsdao.kb.search import tokenize
from birdsdao.kb.pg import PgKnowledgeBaseService, tsquery_literal, tsvector_literal
from birdsdao.kb.species_kb import ensure_species_kb
from birdsdao.kb.store import KnowledgeBaseChanged
from birdsdao.vision.taught import PgTaughtStore, TaughtStore
from tests.pg import pg_db, pg_server, pg_url  # noqa: F401 - fixtures
from tests.test_kb_store import CountingRegistry

DOCS = [("heron.txt", "苍鹭常站在浅水中等待鱼，耐心地一动不动。".encode()),
        ("eagle.txt", "白头海雕是美国的国鸟，栖息在北美洲的湖泊和海岸。".encode()),
        ("magpie.txt", "Magpies are clever birds; 喜鹊常在村庄附近筑巢。".encode())]


@pytest.fixture(scope="module")
def registry():
    return CountingRegistry()  # one e5 model for the module: the stores, not the model, are under test


@pytest.fixture(params=["file", "pg"])
def store(request, tmp_path, registry):
    """A factory of services on ONE store (each call: another process's view of it), file or PostgreSQL."""
    if request.param == "file":
        return lambda: KnowledgeBaseService(tmp_path / "kb", registry)
    url = request.getfixturevalue("pg_db")
    return lambda: PgKnowledgeBaseService(url, registry)


# --- migrations ---------------------------------------------------------------------------------------------

def test_migrations_apply_once_when_three_servers_start_together_and_then_are_a_no_op(pg_db):
    applied = []
    threads = [threading.Thread(target=lambda: applied.append(db.migrate(pg_db))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [name for _, name, _ in db.migrations()]
    assert sorted(applied, key=len) == [[], [], names]
    assert db.migrate(pg_db) == []
    with db.pool(pg_db).connection() as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")] == names
        vector = conn.execute("SELECT %s::vector", (np.array([1.5, 2, 3], np.float32),)).fetchone()[0]
    assert vector.to_numpy().tolist() == [1.5, 2, 3]


def test_keyword_literals_quote_hostile_tokens_and_keep_chinese_words(pg_url):
    text = "白头海雕 it's a \\ back'slash O'Brien 白头海雕"
    with db.pool(pg_url).connection() as conn:
        lexemes = conn.execute("SELECT tsvector_to_array(%s::tsvector)", (tsvector_literal(text),)).fetchone()[0]
        # exactly jieba's tokens (search.tokenize), not what the server's parser or locale would make of them
        assert sorted(lexemes) == sorted(set(tokenize(text))) and "海雕" in lexemes
        matched = conn.execute("SELECT %s::tsvector @@ %s::tsquery", (tsvector_literal(text),
                                                                      tsquery_literal("海雕 in 北美"))).fetchone()[0]
    assert matched is True
    assert tsquery_literal("的 了 ？？") == ""  # stop words and punctuation only: no keyword search at all


# --- the KB contract, on both stores ----------------------------------------------------------------------

def test_kb_contract_create_upload_search_list_delete(store):
    service = store()
    assert service.create("birds", "说明")["docs"] == 0
    with pytest.raises(APIError) as exc:
        service.create("birds")
    assert exc.value.status == 409
    results = service.upload("birds", DOCS)
    assert [r["status"] for r in results] == ["added"] * 3
    assert [r["status"] for r in service.upload("birds", DOCS[:1])] == ["skipped"]
    assert [r["status"] for r in service.upload("birds", DOCS[:1], replace=True)] == ["replaced"]
    info = service.info("birds")
    assert (info["docs"], info["chunks"], info["description"]) == (3, 3, "说明")
    assert [kb["kb_name"] for kb in service.list()] == ["birds"]
    assert [d["doc_name"] for d in service.docs("birds")] == ["eagle.txt", "heron.txt", "magpie.txt"]
    for mode in ("vector", "bm25", "rrf", "weighted"):
        hits = service.search("birds", "白头海雕住在哪里？", 2, mode)
        assert hits[0].doc_name == "eagle.txt" and hits[0].chunk_id == "eagle.txt#0", (mode, hits)
        assert hits[0].score_kind == mode and "白头海雕" in hits[0].text
    assert service.search("birds", "的", 3, "bm25") == []
    service.delete_doc("birds", "heron.txt")
    assert "heron.txt" not in {h.doc_name for h in service.search("birds", "苍鹭", 5, "vector")}
    with pytest.raises(APIError) as exc:
        service.delete_doc("birds", "heron.txt")
    assert exc.value.status == 404
    service.delete("birds")
    for call in (lambda: service.search("birds", "x"), lambda: service.delete("birds"), lambda: service.info("birds")):
        with pytest.raises(APIError) as exc:
            call()
        assert exc.value.status == 404


def test_uploading_reembeds_no_text_the_kb_already_holds(store, registry):
    service = store()
    service.create("inc")
    before = registry.embedded
    service.upload("inc", DOCS)
    assert registry.embedded == before + 3
    service.upload("inc", [("heron-copy.txt", DOCS[0][1]), ("new.txt", "夜鹭在夜间捕鱼。".encode())])
    # the copy's text is another document's: indexed by its bare text, embedded once; new.txt once
    assert registry.embedded == before + 5
    service.upload("inc", [("eagle.txt", DOCS[1][1])], replace=True)
    assert registry.embedded == before + 5


def test_another_process_sees_every_change_on_its_next_request(store):
    a, b = store(), store()
    a.create("shared")
    assert b.search("shared", "白头海雕") == []
    a.upload("shared", DOCS)
    assert b.search("shared", "白头海雕", 1)[0].doc_name == "eagle.txt"
    b.delete_doc("shared", "eagle.txt")
    assert "eagle.txt" not in {d["doc_name"] for d in a.docs("shared")}
    a.delete("shared")
    with pytest.raises(APIError) as exc:
        b.search("shared", "苍鹭")
    assert exc.value.status == 404
    a.create("shared")  # the same name again: another KB, empty, in both
    assert b.info("shared")["docs"] == 0 and b.search("shared", "苍鹭") == []


def test_a_kb_deleted_during_an_upload_answers_409_and_keeps_nothing(store):
    a, b = store(), store()
    a.create("gone")
    kb = a.get("gone")
    vectors = kb.embed_documents([("x.txt", a.prepare("x.txt", DOCS[0][1])[1])])
    b.delete("gone")
    b.create("gone")
    name, chunks, info = a.prepare("x.txt", DOCS[0][1])
    with pytest.raises(KnowledgeBaseChanged) as exc:
        kb.add_documents([(name, chunks, vectors[0], info)], replace=False)
    assert exc.value.status == 409
    assert b.info("gone")["docs"] == 0


def test_the_species_kb_is_built_once_when_two_servers_start_together(store, registry):
    cards = [(f"card{i}.md", f"# 鸟{i}\n第{i}种鸟常见于湿地，以鱼为食。") for i in range(30)]
    services, results = [store(), store()], []

    def start(service):
        with service.build_lock("species"):
            results.append(ensure_species_kb(service, cards)["action"])

    before = registry.embedded
    threads = [threading.Thread(target=start, args=(s,)) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["built", "reused"]
    assert registry.embedded - before == 30  # once, not twice
    assert services[1].info("species")["docs"] == 30


# --- taught species, on both stores -----------------------------------------------------------------------

@pytest.fixture(params=["file", "pg"])
def taught(request, tmp_path):
    if request.param == "file":
        return lambda: TaughtStore(tmp_path / "taught")
    url = request.getfixturevalue("pg_db")
    return lambda: PgTaughtStore(url)


def test_taught_store_contract_and_another_process_sees_a_teaching_by_its_key(taught):
    a, b = taught(), taught()
    key = b.index_key()
    feats = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    record = {"key": "taught:GARDEN PARROT", "new": True, "names": {"zh": "花园鹦鹉"}, "images": 3}
    with a.locked(), a.locked():  # re-entrant within a thread
        a.put("GARDEN PARROT", record, feats)
    assert b.index_key() != key
    assert b.records() == {"GARDEN PARROT": record}
    got = b.load_all()["GARDEN PARROT"][1]
    assert got.dtype == np.float32 and np.array_equal(got, feats.astype(np.float16).astype(np.float32))
    assert np.array_equal(b.features("GARDEN PARROT"), got)
    key = b.index_key()
    assert a.remove("GARDEN PARROT") is True and a.remove("GARDEN PARROT") is False
    assert b.index_key() != key and b.records() == {}


def test_pg_teaching_from_two_threads_of_two_stores_loses_nothing(pg_db):
    stores = [PgTaughtStore(pg_db), PgTaughtStore(pg_db)]

    def teach_many(store, prefix):
        for i in range(20):
            with store.locked():
                records = store.records()  # the read-modify-write the pipeline does under locked()
                store.put(f"{prefix} {i}", {"key": f"taught:{prefix}{i}", "new": True, "names": {},
                                            "seen": len(records)}, np.ones((1, 4), np.float32))

    threads = [threading.Thread(target=teach_many, args=(s, p)) for s, p in zip(stores, "AB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = stores[0].records()
    assert len(records) == 40
    assert sorted(r["seen"] for r in records.values()) == list(range(40))  # every read saw every earlier write


# --- crash safety on PostgreSQL -----------------------------------------------------------------------------

def test_kill_9_of_a_writer_mid_transaction_leaves_no_part_of_its_document_with_fake_slow_commit_hook(pg_db):
    service = PgKnowledgeBaseService(pg_db, CountingRegistry())
    service.create("crash")
    service.upload("crash", DOCS[:1])
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        from birdsdao.kb.embeddings import EmbedderRegistry
        from birdsdao.kb.pg import PgKnowledgeBase, PgKnowledgeBaseService
        def slow_bump(self, conn):  # every chunk is written, the commit not yet made
            print("written", flush=True)
            time.sleep(60)
        PgKnowledgeBase._bump = slow_bump
        service = PgKnowledgeBaseService({pg_db!r}, EmbedderRegistry())
        big = "。".join(f"第{{i}}句关于湿地鸟类的观察" for i in range(400)).encode()
        service.upload("crash", [("big.txt", big)])
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            if proc.stdout.readline().strip() != b"written":
                proc.kill()
                pytest.fail(proc.stderr.read().decode()[-2000:])
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    assert [d["doc_name"] for d in service.docs("crash")] == ["heron.txt"]
    with service.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1
    assert [r["status"] for r in service.upload("crash", DOCS[1:2])] == ["added"]  # no lock left behind


def test_a_batch_with_one_bad_document_writes_none_of_it_with_fake_wrong_width_vector(pg_db, registry):
    service = PgKnowledgeBaseService(pg_db, registry)
    service.create("atomic")
    kb = service.get("atomic")
    prepared = [service.prepare(name, data) for name, data in DOCS[:2]]
    vectors = kb.embed_documents([(name, chunks) for name, chunks, _ in prepared])
    vectors[1] = vectors[1][:, :8]  # the width check refuses it inside the transaction
    with pytest.raises(Exception, match="chunks_dim_matches"):
        kb.add_documents([(n, c, v, i) for (n, c, i), v in zip(prepared, vectors)], replace=False)
    assert service.info("atomic")["docs"] == 0 and service.search("atomic", "苍鹭") == []


def test_a_large_kb_is_searched_through_the_hnsw_index_and_a_small_one_exactly(pg_db, registry):
    hnsw = PgKnowledgeBaseService(pg_db, registry, exact_below=0)
    hnsw.create("big")
    hnsw.upload("big", DOCS)
    exact = PgKnowledgeBaseService(pg_db, registry)
    query = "白头海雕住在哪里？"
    assert [h.chunk_id for h in hnsw.search("big", query, 3, "vector")] == \
           [h.chunk_id for h in exact.search("big", query, 3, "vector")]
    with hnsw.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # 3 rows: the planner would scan; show the index is usable
        plan = " ".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM chunks WHERE dim = 384 AND kb_id = %s "
            "ORDER BY embedding::vector(384) <#> %s::vector(384) LIMIT 50",
            (hnsw.get("big").kb_id, "[" + ",".join(["0.05"] * 384) + "]")))
    assert "chunks_hnsw_384" in plan


# --- two app servers on one database ------------------------------------------------------------------------

def test_kb_requests_while_postgresql_is_down_answer_503_database_unavailable_and_recover(pg_server, pg_db, registry):
    """What a client sees through the app's one error handler: a stopped database is the server's state (503,
    Retry-After), not a bug (500), and the same service answers again once PostgreSQL is back."""
    from flask import Flask
    from pgserver._commands import pg_ctl

    from birdsdao.web.errors import register_error_handlers

    service = PgKnowledgeBaseService(pg_db, registry)
    service.create("t1")
    app = Flask(__name__)
    register_error_handlers(app)
    app.add_url_rule("/docs", "docs", lambda: {"docs": service.docs("t1")})
    client = app.test_client()
    assert client.get("/docs").status_code == 200
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg_server.pgdata, user=pg_server.system_user, timeout=60)
    try:
        started = time.monotonic()
        down = client.get("/docs")
        assert (down.status_code, down.get_json()["code"]) == (503, "database_unavailable"), down.get_json()
        assert down.headers["Retry-After"] and time.monotonic() - started < 35
    finally:
        pg_server.ensure_postgres_running()
    deadline = time.monotonic() + 60
    while client.get("/docs").status_code != 200:  # the pool replaces its broken connections
        assert time.monotonic() < deadline, "no recovery without a restart"
        time.sleep(0.5)


def test_a_photo_kept_by_one_app_server_is_answered_by_another_and_expires_or_is_evicted_with_410(pg_db):
    from birdsdao.vision.photos import PgPhotoStore, build_photo_store, new_photo_id

    class Clock:
        now = 1_800_000_000.0

        def __call__(self):
            return self.now

    clock = Clock()
    a = PgPhotoStore(pg_db, ttl_s=3600, max_count=2, max_bytes=10_000, clock=clock)
    b = PgPhotoStore(pg_db, ttl_s=3600, max_count=2, max_bytes=10_000, clock=clock)
    first = a.put(b"jpeg-1", {"n": 1})
    got = b.get(first)
    assert (got.jpeg, got.record) == (b"jpeg-1", {"n": 1})
    clock.now += 1
    second = b.put(b"jpeg-2", {"n": 2})
    clock.now += 1
    third = a.put(b"jpeg-3", {"n": 3})  # the count limit pushes the oldest out early
    assert b.stats()["photos"] == 2 and a.get(second).record == {"n": 2} and b.get(third).jpeg == b"jpeg-3"
    for store, pid, status in ((b, first, 410), (a, new_photo_id(clock.now), 404)):
        with pytest.raises(APIError) as exc:
            store.get(pid)
        assert exc.value.status == status
    clock.now += 3601  # past the TTL: 410 whatever the table holds
    with pytest.raises(APIError) as exc:
        a.get(third)
    assert exc.value.status == 410
    with pytest.raises(APIError) as exc:
        a.put(b"x" * 20_000, {})
    assert (exc.value.status, exc.value.code) == (413, "photo_too_large")
    config = {"PHOTO_STORE": "auto", "DATABASE_URL": pg_db, "DATABASE_POOL_SIZE": 2, "PHOTO_TTL_S": 60,
              "PHOTO_MAX_COUNT": 5, "PHOTO_MAX_BYTES": 1000}
    assert isinstance(build_photo_store(config), PgPhotoStore)  # the app's choice when DATABASE_URL is set


def _multipart(fields: dict, files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "----birdsdao-pg-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    for field, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _call(port: int, path: str, fields: dict | None = None, files=(), token: str | None = None, timeout=120):
    from tests.test_deploy import _get

    if fields is None and not files:
        status, _, body = _get(f"http://127.0.0.1:{port}{path}", timeout)
        return status, json.loads(body)
    if files:
        body, ctype = _multipart(fields or {}, list(files))
    else:
        body, ctype = urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def two_servers(pg_server, tmp_path_factory):
    """Two real gunicorn app servers (2 workers each, own instance folders: nothing shared but the database) on
    two loopback ports, one PostgreSQL database, and a real nginx whose upstream holds both."""
    from tests.conftest import YOLO_WEIGHTS
    from tests.test_deploy import NGINX, _free_port, _wait_for

    name = f"two_{os.getpid()}"
    pg_server.psql(f"CREATE DATABASE {name};")
    url = pg_server.get_uri().replace("/postgres?", f"/{name}?", 1)
    tmp = tmp_path_factory.mktemp("two-servers")
    servers, logs = [], []
    try:
        for tag in ("a", "b"):
            port = _free_port()
            env = dict(os.environ, BIRDSDAO_DATABASE_URL=url, BIRDSDAO_INSTANCE_PATH=str(tmp / f"instance-{tag}"),
                       BIRDSDAO_YOLO_WEIGHTS=str(YOLO_WEIGHTS), BIRDSDAO_DETECTOR_CACHE=str(tmp / "onnx-cache"),
                       BIRDSDAO_API_TOKEN=TOKEN, BIRDSDAO_PROXY_HOPS="1", GUNICORN_WORKERS="2", GUNICORN_THREADS="4",
                       GUNICORN_ACCESSLOG="/dev/null")
            log = open(tmp / f"gunicorn-{tag}.log", "wb")
            logs.append(log)
            proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                                     f"127.0.0.1:{port}", "server:app"], cwd=PROJECT_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            servers.append({"port": port, "proc": proc, "log": tmp / f"gunicorn-{tag}.log"})
        for s in servers:
            status, body = _wait_for(f"http://127.0.0.1:{s['port']}/healthz", 400, s["proc"])
            assert status == 200, f"{status} {body[:1000]!r}\n" + s["log"].read_text(errors="replace")[-3000:]
        nginx = _start_nginx(tmp / "nginx", [s["port"] for s in servers], NGINX, _free_port(), _wait_for)
        try:
            yield {"a": servers[0]["port"], "b": servers[1]["port"], "nginx": nginx["port"], "nginx_dir": nginx["dir"],
                   "url": url}
        finally:
            nginx["proc"].terminate()
            nginx["proc"].wait(timeout=10)
    finally:
        for s in servers:
            _signal_group(s["proc"], signal.SIGTERM)
        for s in servers:
            try:
                s["proc"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(s["proc"], signal.SIGKILL)
                s["proc"].wait()
        for log in logs:
            log.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # exited already (a failed start)
        pass


def _start_nginx(folder: Path, ports: list[int], nginx: str, port: int, wait_for) -> dict:
    """deploy/nginx.conf with its upstream holding every app server (as README's several-servers set-up)."""
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed (apt-get install nginx; .ci/run does it)")
    folder.mkdir()
    site = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.compile(r"^\s*server 127\.0\.0\.1:800[01] [^;]*;\n", re.M)
    assert "listen 80;" in site and len(upstream.findall(site)) == 2
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = upstream.sub("", site, count=1)
    site = upstream.sub("".join(f"    server 127.0.0.1:{p};\n" for p in ports), site)
    temp_paths = "".join(f"{n}_temp_path {folder / n};\n" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
        f"events {{ worker_connections 64; }}\nhttp {{\naccess_log {folder / 'access.log'} combined;\n"
        f"log_format up '$upstream_addr';\naccess_log {folder / 'upstream.log'} up;\n{temp_paths}{site}\n}}\n")
    proc = subprocess.Popen([nginx, "-c", str(folder / "nginx.conf"), "-p", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, body = wait_for(f"http://127.0.0.1:{port}/healthz", 30, proc)
    assert status == 200, (status, body)
    return {"port": port, "proc": proc, "dir": folder}


TOKEN = "pg-test-token"


def _wait_species_kb(port: int, deadline_s: float = 400) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        status, health = _call(port, "/healthz")
        kb = health["models"]["kb"]
        if not kb["building"] and kb["bundled"].get("species"):
            return kb["bundled"]["species"]
        time.sleep(1)
    raise AssertionError("the species knowledge base was still building")


@pytest.mark.slow
def test_what_one_app_server_writes_the_other_answers_on_its_next_request(two_servers):
    from tests.test_teach import views_of_one_bird

    a, b, proxy = two_servers["a"], two_servers["b"], two_servers["nginx"]
    # Four workers started together and each ran the species KB build: one built it, the rest waited and reused.
    actions = [_wait_species_kb(port)["action"] for port in (a, b)]
    assert {_call(port, "/healthz")[1]["models"]["kb"]["storage"] for port in (a, b)} == {"postgresql"}
    assert set(actions) <= {"built", "reused"} and "failed" not in actions
    with db.pool(two_servers["url"]).connection() as conn:
        docs, distinct = conn.execute("SELECT count(*), count(DISTINCT (doc_name, pos)) FROM chunks c JOIN kbs k "
                                      "USING (kb_id) WHERE k.name = 'species'").fetchone()
    assert docs > 0 and docs == distinct

    assert _call(a, "/kb/create", {"kb_name": "field-notes"}, token=TOKEN)[0] == 201
    status, body = _call(a, "/kb/upload", {"kb_name": "field-notes"}, [("files", n, d) for n, d in DOCS], token=TOKEN)
    assert status == 200 and [f["status"] for f in body["files"]] == ["added"] * 3, body
    teach_images, query_image = views_of_one_bird()
    status, body = _call(a, "/species/teach", {"label": "Garden Parrot", "chinese_name": "花园鹦鹉"},
                         [("images", f"{i}.jpg", d) for i, d in enumerate(teach_images)], token=TOKEN)
    assert status == 200, body

    for _ in range(4):  # both workers of B (gthread workers take connections in turn; four tries reach both)
        status, body = _call(b, "/kb/search", {"kb_name": "field-notes", "query": "白头海雕住在哪里"})
        assert status == 200 and body["hits"][0]["doc_name"] == "eagle.txt", body
        status, body = _call(b, "/detect", {"annotate": "0", "top_k": "5"}, [("image", "q.jpg", query_image)])
        assert status == 200 and "GARDEN PARROT" in [s["label"] for s in body["detections"][0]["species"]][:3], body
    status, body = _call(b, "/get_response", {"user_input": "白头海雕住在哪里？", "mode": "kb", "kb_name": "field-notes"})
    assert status == 200 and any(s.get("doc_name") == "eagle.txt" for s in body["sources"]), body
    assert "GARDEN PARROT" in {s["label"] for s in _call(b, "/species/taught")[1]["species"]}
    # A photo detected through A is asked about through B (the photo store is PostgreSQL's too).
    status, seen = _call(a, "/detect", {"annotate": "0"}, [("image", "q.jpg", query_image)])
    assert status == 200 and seen["photo_id"], seen
    status, body = _call(b, "/get_response", {"user_input": "图里有几只鸟？", "photo_id": seen["photo_id"]})
    assert status == 200 and body["photo_id"] == seen["photo_id"], body

    # Through nginx, the upstream alternates between A and B; every answer is the same.
    for _ in range(4):
        status, body = _call(proxy, "/kb/search", {"kb_name": "field-notes", "query": "苍鹭"})
        assert status == 200 and body["hits"][0]["doc_name"] == "heron.txt", body
    assert _call(proxy, "/kb/delete_doc", {"kb_name": "field-notes", "doc_name": "heron.txt"}, token=TOKEN)[0] == 200
    for port in (a, b):
        assert "heron.txt" not in {d["doc_name"] for d in _call(port, "/kb/docs?kb_name=field-notes")[1]["docs"]}
    upstreams = (two_servers["nginx_dir"] / "upstream.log").read_text().split()
    assert {f"127.0.0.1:{a}", f"127.0.0.1:{b}"} <= set(upstreams)
