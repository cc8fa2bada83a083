"""Deployment as documented: the real gunicorn (gunicorn.conf.py) behind a real nginx (deploy/nginx.conf)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from birdsdao.config import PROJECT_ROOT

from .conftest import BIRDS525, YOLO_WEIGHTS

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _wait_for(url: str, deadline_s: float, proc: subprocess.Popen) -> tuple[int, bytes]:
    end = time.monotonic() + deadline_s
    last = (0, b"")
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            status, _, body = _get(url, timeout=5)
            last = (status, body)
            if status == 200:
                return last
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    return last


def _multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "----birdsdao-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory):
    """The real gunicorn with every default service, started exactly as the README says."""
    tmp = tmp_path_factory.mktemp("gunicorn")
    port = _free_port()
    env = dict(os.environ)
    env.update({
        "BIRDSDAO_INSTANCE_PATH": str(tmp / "instance"),
        "BIRDSDAO_YOLO_WEIGHTS": str(YOLO_WEIGHTS),
        "BIRDSDAO_PROXY_HOPS": "1",  # as the README says for running behind deploy/nginx.conf
    })
    log = open(tmp / "gunicorn.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "server:app"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        status, body = _wait_for(f"http://127.0.0.1:{port}/healthz", 240, proc)
        startup_s = time.monotonic() - started
        assert status == 200, f"/healthz never became healthy: {status} {body[:2000]!r}\n" + (tmp / "gunicorn.log").read_text()[-3000:]
        yield {"port": port, "proc": proc, "startup_s": startup_s, "log": tmp / "gunicorn.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def nginx_proxy(gunicorn_server, tmp_path_factory):
    """A real nginx on a loopback port running deploy/nginx.conf in front of the gunicorn above."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed (apt-get install nginx; .ci/run does it)")
    tmp = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    site = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    assert "listen 80;" in site and "server 127.0.0.1:8000;" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{gunicorn_server['port']};")
    temp_paths = "".join(
        f"{name}_temp_path {tmp / name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    # As root, nginx's workers drop to 'nobody', who cannot enter pytest's private tmp folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\naccess_log {tmp / 'access.log'};\n{temp_paths}{site}\n}}\n"
    )
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        status, body = _wait_for(f"http://127.0.0.1:{port}/healthz", 30, proc)
        assert status == 200, (status, body, (tmp / "error.log").read_text() if (tmp / "error.log").exists() else "")
        yield {"port": port, "dir": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_gunicorn_serves_healthz_with_every_model_loaded(gunicorn_server):
    status, headers, body = _get(f"http://127.0.0.1:{gunicorn_server['port']}/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok"
    for name in ("species", "vision", "embedder", "kb", "llm"):
        assert health["models"][name]["loaded"] is True, health["models"][name]


def test_gunicorn_serves_the_chat_page(gunicorn_server):
    status, headers, body = _get(f"http://127.0.0.1:{gunicorn_server['port']}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "鸟之道" in body.decode()
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_request_passes_through_nginx(nginx_proxy):
    status, headers, body = _get(f"http://127.0.0.1:{nginx_proxy['port']}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = _get(f"http://127.0.0.1:{nginx_proxy['port']}/no/such/page")
    assert status == 404 and json.loads(body)["code"] == "not_found"
    assert "nginx" in headers.get("Server", ""), "the answer did not come through nginx"


def _post(url: str, form: dict, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_same_origin_post_on_a_non_default_port_passes_nginx_and_cross_site_is_refused(nginx_proxy):
    """Browsers without Sec-Fetch-Site (Safari < 16.4) are judged by Origin alone, which carries nginx's port;
    nginx must forward the Host with that port. The test nginx listens on a random port, never 80."""
    base = f"http://127.0.0.1:{nginx_proxy['port']}"
    form = {"kb_name": "no-such-kb", "query": "x"}
    status, body = _post(f"{base}/kb/search", form, {"Origin": base})
    assert (status, body["code"]) == (404, "unknown_kb"), body  # got past the cross-site check
    status, body = _post(f"{base}/kb/search", form, {"Origin": "http://127.0.0.1"})  # same host, other port
    assert (status, body["code"]) == (403, "cross_site")


def test_client_sent_forwarded_prefix_is_not_trusted_through_nginx(nginx_proxy):
    req = urllib.request.Request(f"http://127.0.0.1:{nginx_proxy['port']}/", headers={"X-Forwarded-Prefix": "/evil"})
    with urllib.request.urlopen(req, timeout=30) as r:
        page = r.read().decode()
    assert 'href="/static/' in page and "/evil" not in page


def test_photo_upload_passes_through_nginx(nginx_proxy):
    photo = sorted((BIRDS525 / "BALD EAGLE").iterdir())[0].read_bytes()
    body, content_type = _multipart("image", "eagle.jpg", photo, "image/jpeg")
    req = urllib.request.Request(
        f"http://127.0.0.1:{nginx_proxy['port']}/detect", data=body, method="POST",
        headers={"Content-Type": content_type},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        result = json.loads(r.read())
    assert result["is_bird"] is True
    assert result["detections"][0]["species"][0]["english_name"] == "Bald Eagle"


def _wait_for_species_kb(port: int, deadline_s: float = 300) -> None:
    """The bundled species KB is built in the background on a first start (from shipped vectors: seconds)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        health = json.loads(_get(f"http://127.0.0.1:{port}/healthz")[2])
        if not health["models"]["kb"]["building"]:
            assert health["models"]["kb"]["bundled"]["species"]["action"] in ("built", "updated", "reused")
            return
        time.sleep(1)
    raise AssertionError("the species knowledge base was still building")


def test_streamed_answer_passes_through_nginx_as_server_sent_events(nginx_proxy, gunicorn_server):
    _wait_for_species_kb(gunicorn_server["port"])
    form = urllib.parse.urlencode({"user_input": "请告诉我些关于白头海雕的知识吧？", "mode": "kb", "stream": "1"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{nginx_proxy['port']}/get_response", data=form, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.read().decode().splitlines() if line.startswith("data: ")]
    deltas = "".join(e.get("delta", "") for e in events)
    assert "白头海雕" in deltas
    assert events[-1]["done"] is True and events[-1]["sources"], events[-1]
