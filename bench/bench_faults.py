"""Faults (issue #16), against the real deployment of bench/cluster.py (nginx → two gunicorn app servers,
upload workers, PostgreSQL from pgserver), each followed by a consistency check:

- ``server``: ``kill -9`` of one app server while clients upload through nginx, ``--repeat`` times (the server
  is started again and waited for each time). Then: every document fully there (its chunk count is the one its
  text gives) or absent, every upload answered 2xx is there, /kb/list's counts match /kb/docs, no 5xx after.
- ``worker``: ``kill -9`` of a job worker in the middle of a job, ``--repeat`` times, while async uploads
  queue. Then: every job ends done or failed with a reason, a done job's document is whole, a failed one's
  absent, nothing left running, no 5xx after.
- ``pg``: PostgreSQL stopped for ``--outage`` seconds and started again under load: how the database routes
  answer meanwhile (status, slowest answer: failing fast means 503 within a few seconds, not a hang), how
  long after the restart they answer 2xx again (no app restart), and that /detect kept answering.

    .venv/bin/python bench/bench_faults.py                      # all three, 3 repetitions (short, this box)
    .venv/bin/python bench/bench_faults.py --repeat 20          # the issue's figure
    .venv/bin/python bench/bench_faults.py --steps pg --store pg --root /tmp/merged-checkout
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster import HERE, Cluster, auth, multipart, photos, request  # noqa: E402


def note(n: int, paragraphs: int = 1) -> bytes:
    """A document whose chunk count depends only on ``paragraphs`` (fixed-width numbers)."""
    return "\n\n".join(f"第{n:06d}号记录第{p:03d}段：湖边有白鹭{p:03d}只，苍鹭一只，编号{n * 7919 + p:09d}。" * 12
                       for p in range(paragraphs)).encode()


class Uploader:
    """Clients uploading small documents through nginx until stopped; remembers what each upload got."""

    def __init__(self, port: int, kb: str, clients: int = 4):
        self.port, self.kb, self.clients = port, kb, clients
        self.answers: dict[str, int] = {}  # doc name -> status (0: no answer)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.n = 0
        self.threads = []

    def _run(self):
        while not self.stop.is_set():
            with self.lock:
                self.n += 1
                name = f"u{self.n:06d}.md"
                n = self.n
            body, ctype = multipart({"kb_name": self.kb}, {"files": (name, note(n, 2))})
            try:
                status = request(self.port, "POST", "/kb/upload", body, {"Content-Type": ctype, **auth()}, timeout=120)[0]
            except (OSError, http.client.HTTPException):
                status = 0
            with self.lock:
                self.answers[name] = status
            if not 200 <= status < 300:
                time.sleep(0.2)  # a client pauses after a failure (else one outage counts thousands of 502s)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._run) for _ in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def after_check(cluster: Cluster, kb: str, rounds: int = 10) -> Counter:
    """Statuses of a few requests of every kind once the faults are over (any 5xx is a failure)."""
    statuses = Counter()
    pics = photos(2)
    for i in range(rounds):
        search = urllib.parse.urlencode({"kb_name": kb, "query": "白鹭"})
        statuses[request(cluster.nginx_port, "POST", "/kb/search", search.encode(),
                         {"Content-Type": "application/x-www-form-urlencoded"})[0]] += 1
        statuses[request(cluster.nginx_port, "GET", f"/kb/docs?kb_name={kb}")[0]] += 1
        body, ctype = multipart({"annotate": "0"}, {"image": pics[i % len(pics)]})
        statuses[request(cluster.nginx_port, "POST", "/detect", body, {"Content-Type": ctype})[0]] += 1
    return statuses


def consistency(cluster: Cluster, kb: str, expected_chunks: int, answered_ok: set[str]) -> dict:
    docs = {d["doc_name"]: d["chunks"] for d in cluster.docs(kb)}
    listed = {k["kb_name"]: k for k in json.loads(request(cluster.nginx_port, "GET", "/kb/list")[2])["kbs"]}[kb]
    partial = {name: c for name, c in docs.items() if c != expected_chunks}
    missing = sorted(answered_ok - set(docs))
    return {"docs": len(docs), "partial_docs": partial, "answered_2xx_but_missing": missing,
            "list_counts_match": listed["docs"] == len(docs) and listed["chunks"] == sum(docs.values())}


def step_server(cluster: Cluster, repeat: int, rng: random.Random) -> dict:
    kb = "faults_server"
    cluster.create_kb(kb)
    body, ctype = multipart({"kb_name": kb}, {"files": ("probe.md", note(0, 2))})
    expected = json.loads(request(cluster.nginx_port, "POST", "/kb/upload", body, {"Content-Type": ctype, **auth()})[2])["files"][0]["chunks"]
    restart_s = []
    with Uploader(cluster.nginx_port, kb) as up:
        for i in range(repeat):
            time.sleep(rng.uniform(1, 3))
            port = rng.choice(list(cluster.servers))
            cluster.kill_server(port)
            time.sleep(1)
            cluster.start_server(port)
            restart_s.append(cluster.wait_ready(port))
            # nginx leaves a failed server out for fail_timeout (10 s in deploy/nginx.conf) even once it is back:
            # killing the other one within that window is a double outage ("no live upstreams"), not this test.
            time.sleep(11)
            print(f"  server kill {i + 1}/{repeat}: port {port} back after {restart_s[-1]:.0f} s", flush=True)
    during = Counter(up.answers.values())
    ok = {name for name, status in up.answers.items() if 200 <= status < 300} | {"probe.md"}
    out = {"kills": repeat, "uploads": len(up.answers), "statuses_during": dict(during),
           "restart_s_mean": round(sum(restart_s) / len(restart_s), 1),
           **consistency(cluster, kb, expected, ok), "statuses_after": dict(after_check(cluster, kb))}
    return out


def _job(cluster: Cluster, job_id: str) -> dict:
    return json.loads(request(cluster.nginx_port, "GET", f"/kb/jobs/{job_id}")[2])


def step_worker(cluster: Cluster, repeat: int, rng: random.Random, paragraphs: int) -> dict:
    kb = "faults_worker"
    cluster.create_kb(kb)
    jobs: dict[str, str] = {}  # job id -> doc name

    def submit(n: int):
        name = f"w{n:06d}.md"
        body, ctype = multipart({"kb_name": kb, "async": "1"}, {"files": (name, note(n, paragraphs))})
        status, _, answer = request(cluster.nginx_port, "POST", "/kb/upload", body, {"Content-Type": ctype, **auth()})
        if status == 202:
            jobs[json.loads(answer)["job_id"]] = name
        return status

    submitted = Counter()
    n = 0
    for i in range(repeat):
        # Keep two jobs queued, wait for one to be running part-way, kill the worker that runs it.
        while sum(1 for j in jobs if _job(cluster, j)["state"] in ("queued", "running")) < 2:
            n += 1
            submitted[submit(n)] += 1
        # A job part-way through in a live worker (a killed worker's job reads "running" until it is requeued).
        import psycopg

        deadline = time.monotonic() + 300
        victim = None
        while victim is None and time.monotonic() < deadline:
            alive = {f":{w.pid}": w for w in cluster.workers if w.poll() is None}
            with psycopg.connect(cluster.url) as conn:
                rows = conn.execute("SELECT worker FROM kb_jobs WHERE state = 'running' AND "
                                    "(progress->>'chunks_embedded')::int > 0 AND "
                                    "(progress->>'chunks_embedded')::int < (progress->>'chunks_to_embed')::int").fetchall()
            victim = next((alive[k] for (owner,) in rows for k in alive if owner and owner.endswith(k)), None)
            time.sleep(0.3)
        if victim is None:
            print(f"  worker kill {i + 1}/{repeat}: no job got part-way in a live worker within 300 s; skipped", flush=True)
            continue
        victim.kill()
        victim.wait()
        cluster.workers.remove(victim)
        cluster.start_worker()
        print(f"  worker kill {i + 1}/{repeat}: pid {victim.pid}", flush=True)
    deadline = time.monotonic() + 60 * max(5, repeat)
    while time.monotonic() < deadline:
        states = {j: _job(cluster, j) for j in jobs}
        if all(job["state"] in ("done", "failed") for job in states.values()):
            break
        time.sleep(1)
    ends = Counter(job["state"] for job in states.values())
    reasons = Counter(job["result"].get("code") for job in states.values() if job["state"] == "failed")
    docs = {d["doc_name"]: d["chunks"] for d in cluster.docs(kb)}
    whole = all(docs.get(jobs[j]) == job["result"]["files"][0]["chunks"] for j, job in states.items() if job["state"] == "done")
    failed_absent = all(jobs[j] not in docs for j, job in states.items() if job["state"] == "failed")
    return {"kills": repeat, "jobs": len(jobs), "submitted": dict(submitted), "ends": dict(ends),
            "failed_reasons": dict(reasons), "attempts": dict(Counter(job["attempts"] for job in states.values())),
            "done_docs_whole": whole, "failed_docs_absent": failed_absent,
            "docs_equal_done_jobs": len(docs) == ends.get("done", 0),
            "statuses_after": dict(after_check(cluster, kb))}


def step_pg(cluster: Cluster, outage_s: float, clients: int) -> dict:
    kb = "faults_pg"
    cluster.create_kb(kb)
    body, ctype = multipart({"kb_name": kb}, {"files": ("seed.md", note(1, 2))})
    request(cluster.nginx_port, "POST", "/kb/upload", body, {"Content-Type": ctype, **auth()})
    log: list[tuple[float, str, int, float]] = []  # (start, route, status, seconds)
    stop = threading.Event()
    lock = threading.Lock()
    pics = photos(4)

    def client(i: int):
        conn_port = cluster.nginx_port
        while not stop.is_set():
            route = ("search", "docs", "detect")[i % 3]
            started = time.monotonic()
            try:
                if route == "search":
                    form = urllib.parse.urlencode({"kb_name": kb, "query": "白鹭"}).encode()
                    status = request(conn_port, "POST", "/kb/search", form,
                                     {"Content-Type": "application/x-www-form-urlencoded"}, timeout=60)[0]
                elif route == "docs":
                    status = request(conn_port, "GET", f"/kb/docs?kb_name={kb}", timeout=60)[0]
                else:
                    b, ct = multipart({"annotate": "0"}, {"image": pics[i % len(pics)]})
                    status = request(conn_port, "POST", "/detect", b, {"Content-Type": ct}, timeout=60)[0]
            except (OSError, http.client.HTTPException):
                status = 0
            with lock:
                log.append((started, route, status, time.monotonic() - started))
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(5)
    down = time.monotonic()
    cluster.pg_stop()
    time.sleep(outage_s)
    up = time.monotonic()
    cluster.pg_start()
    time.sleep(20)
    stop.set()
    for t in threads:
        t.join()
    during = [e for e in log if down <= e[0] < up]
    after = [e for e in log if e[0] >= up]
    db = ("search", "docs")
    first_ok = min((e[0] + e[3] for e in after if e[1] in db and 200 <= e[2] < 300), default=None)
    recovered_at = first_ok - up if first_ok else None
    tail = [e for e in after if first_ok and e[0] > first_ok]
    return {"outage_s": outage_s,
            "db_routes_during": dict(Counter(e[2] for e in during if e[1] in db)),
            "db_routes_slowest_failure_s": round(max((e[3] for e in during if e[1] in db and e[2] >= 500), default=0), 2),
            "detect_during": dict(Counter(e[2] for e in during if e[1] == "detect")),
            "recovered_s_after_start": round(recovered_at, 1) if recovered_at is not None else None,
            "after_recovery": dict(Counter(e[2] for e in tail)),
            "before": dict(Counter(e[2] for e in log if e[0] < down))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="server,worker,pg")
    ap.add_argument("--repeat", type=int, default=3, help="kills per step (the issue's figure: 20)")
    ap.add_argument("--store", choices=("files", "pg"), default="pg", help="KB store of the server step")
    ap.add_argument("--outage", type=float, default=8, help="seconds PostgreSQL stays down")
    ap.add_argument("--paragraphs", type=int, default=40, help="chunks per async upload of the worker step")
    ap.add_argument("--root", type=Path, default=HERE)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the cluster folder (logs) afterwards")
    args = ap.parse_args(argv)
    steps = args.steps.split(",")
    rng = random.Random(16)
    report = {}
    # Fast failure detection for the bench: workers beat every second and are given up after 5 s of silence.
    env = {"BIRDSDAO_JOBS_HEARTBEAT_S": "1", "BIRDSDAO_JOBS_STALLED_AFTER_S": "5", "BIRDSDAO_KB_EMBED_BATCH": "8",
           "BIRDSDAO_JOBS_MAX_ATTEMPTS": "3"}
    with Cluster(args.root, args.store, env=env, keep=args.keep) as cluster:
        if args.store == "pg" or "worker" in steps or "pg" in steps:
            cluster.start_pg()
        ports = [cluster.start_server() for _ in range(2)]
        print(f"app servers ready after {[round(cluster.wait_ready(p)) for p in ports]} s", flush=True)
        cluster.start_nginx()
        if "server" in steps:
            report["server"] = step_server(cluster, args.repeat, rng)
            print("server:", json.dumps(report["server"], ensure_ascii=False), flush=True)
        if "worker" in steps:
            if not cluster.url:
                raise SystemExit("the worker step needs PostgreSQL (--store pg)")
            cluster.start_worker()
            cluster.start_worker()
            report["worker"] = step_worker(cluster, args.repeat, rng, args.paragraphs)
            print("worker:", json.dumps(report["worker"], ensure_ascii=False), flush=True)
        if "pg" in steps:
            report["pg"] = step_pg(cluster, args.outage, clients=6)
            print("pg:", json.dumps(report["pg"], ensure_ascii=False), flush=True)
        print(f"cluster folder: {cluster.dir}" if args.keep else "", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
