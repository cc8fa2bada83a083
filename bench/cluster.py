"""A deployment on loopback for the benches (bench_load.py, bench_faults.py), built as README "Deployment" says:
PostgreSQL + pgvector (the ``pgserver`` wheel) or the file store, N gunicorn app servers (gunicorn.conf.py),
upload workers (``python -m birdsdao.worker``), and nginx (deploy/nginx.conf with its upstream pointed at them).
Every process it starts is stopped by ``Cluster.close`` (also on Ctrl-C)."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIRDSDAO_SHARED", HERE.parent / "shared")).resolve()  # weights, data sets
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 120,
            conn: http.client.HTTPConnection | None = None):
    """(status, headers, body); ``conn`` reused when given (keep-alive), else a new connection closed after."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        if own:
            conn.close()


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """``files``: field -> (filename, bytes). (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    for k, (name, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


class Cluster:
    def __init__(self, root: Path = HERE, store: str = "files", workdir: Path | None = None, env: dict | None = None,
                 keep: bool = False):
        self.root = Path(root).resolve()
        self.store = store
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="birdsdao-cluster-"))
        self.instance = self.dir / "instance"
        self.extra_env = env or {}
        self.keep = keep  # leave the folder (logs, data) for a look afterwards
        self.servers: dict[int, subprocess.Popen] = {}  # port -> gunicorn
        self.workers: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None
        self.nginx_port = 0
        self.pg = None
        self.url = ""
        self._logs = []

    # --- PostgreSQL --------------------------------------------------------------------------------------

    def start_pg(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            self.pg = pgserver.get_server(str(self.dir / "pg"), cleanup_mode="stop")
        self.pg.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        self.url = self.pg.get_uri()
        return self.url

    def pg_stop(self) -> None:
        """Stop PostgreSQL itself (fast shutdown: every connection cut), as a restart or failover does."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pg.pgdata, user=self.pg.system_user, timeout=60)

    def pg_start(self) -> None:
        self.pg.ensure_postgres_running()

    # --- app servers, workers, nginx -----------------------------------------------------------------------

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env.update({"BIRDSDAO_INSTANCE_PATH": str(self.instance), "BIRDSDAO_API_TOKEN": TOKEN,
                    "BIRDSDAO_PROXY_HOPS": "1", "BIRDSDAO_YOLO_WEIGHTS": str(SHARED / "weights" / "yolov8n.pt"),
                    "BIRDSDAO_DETECTOR_CACHE": str(self.dir / "onnx-cache"), "GUNICORN_ACCESSLOG": "/dev/null"})
        if self.url:
            env["BIRDSDAO_DATABASE_URL"] = self.url
        env.update(self.extra_env)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _log(self, name: str):
        f = open(self.dir / f"{name}.log", "ab")
        self._logs.append(f)
        return f

    def start_server(self, port: int | None = None) -> int:
        port = port or free_port()
        log = self._log(f"gunicorn-{port}")
        self.servers[port] = subprocess.Popen(
            [str(self.root / ".venv/bin/python"), "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
             f"127.0.0.1:{port}", "server:app"], cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return port

    def wait_ready(self, port: int, timeout_s: float = 600) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            proc = self.servers[port]
            if proc.poll() is not None:
                raise RuntimeError(f"app server on {port} exited ({proc.returncode}); see {self.dir}/gunicorn-{port}.log")
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    return time.monotonic() - started
                models = json.loads(request(port, "GET", "/healthz", timeout=5)[2]).get("models", {})
                failed = {name: m["error"] for name, m in models.items() if m.get("error")}
                if failed:  # never becomes ready: say why now
                    raise RuntimeError(f"app server on {port}: services failed: {failed}")
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"app server on {port} not ready after {timeout_s} s")

    def kill_server(self, port: int) -> None:
        proc = self.servers.pop(port)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def start_worker(self, **env) -> subprocess.Popen:
        log = self._log(f"worker-{len(self.workers)}")
        proc = subprocess.Popen([str(self.root / ".venv/bin/python"), "-m", "birdsdao.worker"], cwd=self.root,
                                env=self.env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def start_nginx(self) -> int:
        self.nginx_port = free_port()
        site = (self.root / "deploy" / "nginx.conf").read_text()
        # The shipped upstream lines (their max_fails / fail_timeout kept), one per app server started here.
        options = re.search(r"upstream birdsdao \{\n    server 127\.0\.0\.1:\d+( [^;]*)?;", site).group(1) or ""
        upstream = "".join(f"    server 127.0.0.1:{p}{options};\n" for p in self.servers)
        site = re.sub(r"(upstream birdsdao \{\n)(    server [^\n]*\n)+", lambda m: m.group(1) + upstream, site)
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.nginx_port};")
        tmp = self.dir / "nginx"
        tmp.mkdir(exist_ok=True)
        temp_paths = "".join(f"{n}_temp_path {tmp / n};\n" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root;\n" if os.geteuid() == 0 else ""
        (tmp / "nginx.conf").write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\n"
            f"events {{ worker_connections 1024; }}\nhttp {{\naccess_log off;\n{temp_paths}{site}\n}}\n")
        self.nginx = subprocess.Popen([NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if request(self.nginx_port, "GET", "/healthz", timeout=5)[0] == 200:
                    return self.nginx_port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not come up")

    def create_kb(self, name: str) -> None:
        body, ctype = multipart({"kb_name": name}, {})
        status, _, answer = request(self.nginx_port, "POST", "/kb/create", body, {"Content-Type": ctype, **auth()})
        if status not in (201, 409):
            raise RuntimeError(f"/kb/create: {status} {answer[:300]!r}")

    def docs(self, kb_name: str) -> list[dict]:
        status, _, body = request(self.nginx_port, "GET", f"/kb/docs?kb_name={kb_name}")
        if status != 200:
            raise RuntimeError(f"/kb/docs: {status} {body[:300]!r}")
        return json.loads(body)["docs"]

    def close(self) -> None:
        def signal_group(proc, sig):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

        for proc in [*self.workers, *self.servers.values()]:
            signal_group(proc, signal.SIGTERM)
        if self.nginx is not None:
            self.nginx.terminate()
        for proc in [*self.workers, *self.servers.values()]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait()
        if self.nginx is not None:
            self.nginx.wait(timeout=30)
        if self.pg is not None:
            self.pg.cleanup()
        for f in self._logs:
            f.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def photos(count: int) -> list[tuple[str, bytes]]:
    """Real field photos (natural-dev), one per species folder."""
    out = []
    for folder in sorted((SHARED / "datasets" / "natural-dev").iterdir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                out.append((f.name, f.read_bytes()))
                break
        if len(out) >= count:
            break
    return out
