"""Load through nginx (issue #16): N concurrent clients for a while against one or two real gunicorn app servers,
on the file store or on PostgreSQL (pgserver), mixing /detect with real photos, /get_response, /kb/search and
small uploads. Prints per route: requests, errors (target 0), requests shed with 503 + Retry-After (the
backpressure of a full answer queue, counted apart), p50/p95 of the answered ones, and throughput.

    .venv/bin/python bench/bench_load.py                                   # file store, one server (short)
    .venv/bin/python bench/bench_load.py --store pg --servers 2            # PostgreSQL, two servers
    .venv/bin/python bench/bench_load.py --clients 50 --duration 60        # the issue's figures
    .venv/bin/python bench/bench_load.py --root /tmp/other-checkout        # another checkout (same bench)

Numbers depend on the machine (each app server holds every model; on the 2-core test box two servers share
two cores): compare configurations within one run of this script, never with numbers from another machine.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster import HERE, Cluster, auth, multipart, photos  # noqa: E402

QUESTIONS = ["白头海雕吃什么？", "丹顶鹤在哪里越冬？", "麻雀的叫声是什么样的？", "What does a puffin eat?", "鸳鸯的繁殖季节"]
MIX = {"detect": 2, "get_response": 2, "kb_search": 4, "upload": 1}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Load:
    def __init__(self, port: int, pics: list[tuple[str, bytes]], kb: str, seed: int):
        self.port, self.pics, self.kb = port, pics, kb
        self.rng = random.Random(seed)
        self.results: list[tuple[str, int, float, bool]] = []  # route, status (0: no answer), seconds, shed
        self.lock = threading.Lock()
        self.uploads = 0

    def one(self, route: str, conn: http.client.HTTPConnection) -> tuple[int, bool]:
        rng = self.rng
        if route == "detect":
            name, data = rng.choice(self.pics)
            body, ctype = multipart({"annotate": "0"}, {"image": (name, data)})
            conn.request("POST", "/detect", body, {"Content-Type": ctype})
        elif route == "get_response":
            form = {"user_input": rng.choice(QUESTIONS), "model_type": "extractive", "mode": "kb"}
            conn.request("POST", "/get_response", urllib.parse.urlencode(form),
                         {"Content-Type": "application/x-www-form-urlencoded"})
        elif route == "kb_search":
            form = {"kb_name": "species", "query": rng.choice(QUESTIONS), "top_k": "5"}
            conn.request("POST", "/kb/search", urllib.parse.urlencode(form),
                         {"Content-Type": "application/x-www-form-urlencoded"})
        else:
            with self.lock:
                self.uploads += 1
                n = self.uploads
            text = f"# 观鸟记录 {n}\n第{n}次记录：在湖边看到{n % 17 + 2}只白鹭和一只苍鹭，编号{n * 7919}。\n" * 3
            body, ctype = multipart({"kb_name": self.kb}, {"files": (f"note-{n}.md", text.encode())})
            conn.request("POST", "/kb/upload", body, {"Content-Type": ctype, **auth()})
        r = conn.getresponse()
        r.read()
        return r.status, r.status == 503 and r.getheader("Retry-After") is not None

    def client(self, until: float) -> None:
        routes, weights = zip(*MIX.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        while time.monotonic() < until:
            route = self.rng.choices(routes, weights)[0]
            started = time.monotonic()
            try:
                status, shed = self.one(route, conn)
            except (OSError, http.client.HTTPException):
                status, shed = 0, False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            with self.lock:
                self.results.append((route, status, time.monotonic() - started, shed))
        conn.close()

    def run(self, clients: int, duration: float) -> float:
        until = time.monotonic() + duration
        threads = [threading.Thread(target=self.client, args=(until,)) for _ in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - started


def summarize(results, wall_s: float) -> dict:
    by_route = defaultdict(list)
    for route, status, seconds, shed in results:
        by_route[route].append((status, seconds, shed))
    out = {}
    for route in MIX:
        rows = by_route.get(route, [])
        ok = [s for status, s, _ in rows if 200 <= status < 300]
        shed = sum(1 for _, _, sh in rows if sh)
        errors = [status for status, _, sh in rows if not (200 <= status < 300) and not sh]
        out[route] = {"requests": len(rows), "ok": len(ok), "shed_503": shed, "errors": len(errors),
                      "error_statuses": sorted(set(errors)), "p50_s": round(percentile(ok, 0.5), 3),
                      "p95_s": round(percentile(ok, 0.95), 3)}
    total = len(results)
    out["all"] = {"requests": total, "errors": sum(v["errors"] for v in out.values()),
                  "shed_503": sum(v["shed_503"] for v in out.values()), "per_s": round(total / wall_s, 2),
                  "p50_s": round(percentile([s for _, st, s, _ in results if 200 <= st < 300], 0.5), 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=("files", "pg"), default="files")
    ap.add_argument("--servers", type=int, default=1)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=20, help="seconds of load (the issue's figure: 60)")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--root", type=Path, default=HERE, help="the checkout to run (its .venv, deploy/, gunicorn.conf.py)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)

    with Cluster(args.root, args.store) as cluster:
        if args.store == "pg":
            cluster.start_pg()
        started = time.monotonic()
        ports = [cluster.start_server() for _ in range(args.servers)]
        ready = [round(cluster.wait_ready(p), 1) for p in ports]
        print(f"{args.servers} app server(s) on {args.store} ready after {ready} s (started together; "
              f"{time.monotonic() - started:.0f} s)", flush=True)
        port = cluster.start_nginx()
        cluster.create_kb("bench")
        load = Load(port, photos(args.photos), "bench", seed=16)
        for route in MIX:  # one of each first, so no first-use cost lands in the numbers
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            print(f"warm-up {route}: {load.one(route, conn)[0]}", flush=True)
            conn.close()
        wall = load.run(args.clients, args.duration)
        summary = summarize(load.results, wall)
        docs = cluster.docs("bench")
        after = [cluster.servers[p].poll() is None for p in ports]
    summary["config"] = {"store": args.store, "servers": args.servers, "clients": args.clients,
                         "duration_s": args.duration, "uploads_answered_ok": summary["upload"]["ok"] + 1,
                         "docs_in_kb": len(docs), "servers_alive": after}
    print(f"\n{args.clients} clients x {args.duration:.0f} s through nginx -> {args.servers} server(s), {args.store} store")
    print(f"{'route':<14}{'requests':>9}{'ok':>7}{'shed503':>9}{'errors':>8}{'p50 s':>9}{'p95 s':>9}")
    for route in MIX:
        r = summary[route]
        print(f"{route:<14}{r['requests']:>9}{r['ok']:>7}{r['shed_503']:>9}{r['errors']:>8}{r['p50_s']:>9.2f}{r['p95_s']:>9.2f}"
              + (f"  statuses {r['error_statuses']}" if r["error_statuses"] else ""))
    a = summary["all"]
    print(f"{'all':<14}{a['requests']:>9}{'':>7}{a['shed_503']:>9}{a['errors']:>8}   {a['per_s']} requests/s")
    print(f"documents in the upload KB: {len(docs)} (uploads answered 2xx, warm-up included: "
          f"{summary['config']['uploads_answered_ok']})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if a["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
