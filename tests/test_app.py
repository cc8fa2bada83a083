"""The frame: configuration layering, the model registry, JSON errors, limits and security headers."""
from __future__ import annotations

import io

import pytest

from birdsdao import create_app, services as services_mod
from birdsdao.errors import APIError
from birdsdao.services import get_service

from .conftest import NATURAL


def test_instance_config_file_overrides_defaults_and_env_overrides_it(tmp_path, monkeypatch):
    instance = tmp_path / "inst"
    instance.mkdir()
    (instance / "config.py").write_text("DEFAULT_MODEL = 'from-file'\nAPI_TOKEN = 'file-token'\n")
    monkeypatch.setenv("BIRDSDAO_INSTANCE_PATH", str(instance))
    monkeypatch.setenv("BIRDSDAO_API_TOKEN", "env-token")
    app = create_app({"SERVICES": []})
    assert app.config["INSTANCE_PATH"] == str(instance.resolve())
    assert app.config["DEFAULT_MODEL"] == "from-file"
    assert app.config["API_TOKEN"] == "env-token"
    assert app.config["YOLO_WEIGHTS"] == "yolov8n.pt"


def test_env_values_are_parsed_as_json(make_app, monkeypatch):
    monkeypatch.setenv("BIRDSDAO_MAX_CONTENT_LENGTH", "1234")
    app = make_app(services=[])
    assert app.config["MAX_CONTENT_LENGTH"] == 1234


def test_unknown_service_name_is_a_configuration_error(make_app):
    with pytest.raises(ValueError, match="unknown service"):
        make_app(services=["nope"])


def test_fake_failing_backend_is_reported_by_healthz_and_routes_answer_503(make_app, monkeypatch):
    monkeypatch.setitem(services_mod.BUILDERS, "species", "tests.test_app:_fake_failing_builder")
    app = make_app(services=["species"])
    client = app.test_client()
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json["status"] == "degraded"
    assert r.json["models"]["species"]["loaded"] is False
    assert "weights file is corrupt" in r.json["models"]["species"]["error"]
    with app.test_request_context():
        with pytest.raises(APIError) as exc:
            get_service("species")
    assert exc.value.status == 503 and exc.value.code == "model_unavailable"
    assert "weights file is corrupt" in exc.value.message


def _fake_failing_builder(config, services):
    raise RuntimeError("weights file is corrupt")


def test_services_are_built_once_per_app(make_app, monkeypatch):
    monkeypatch.setitem(services_mod.BUILDERS, "species", "tests.test_app:_counting_builder")
    _COUNTER.clear()
    app = make_app(services=["species"])
    client = app.test_client()
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert _COUNTER == [1]


_COUNTER: list = []


def _counting_builder(config, services):
    _COUNTER.append(1)
    return object()


def test_unknown_route_and_wrong_method_answer_json(make_app):
    client = make_app(services=[]).test_client()
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json["code"] == "not_found" and r.is_json
    r = client.post("/healthz")
    assert r.status_code == 405 and r.json["code"] == "method_not_allowed"


def test_oversized_request_answers_413_json(make_app):
    client = make_app(services=[], MAX_CONTENT_LENGTH=1000).test_client()
    r = client.post("/detect", data={"image": (io.BytesIO(b"x" * 5000), "a.jpg")})
    assert r.status_code == 413 and r.json["code"] == "too_large"


def test_every_response_carries_security_headers(make_app):
    client = make_app(services=[]).test_client()
    for path in ("/healthz", "/no/such/route"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_cross_site_browser_post_is_refused_but_integrations_pass(make_app):
    client = make_app(services=[], API_TOKEN="s3cret").test_client()
    r = client.post("/healthz", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and r.json["code"] == "cross_site"
    r = client.post("/healthz", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    # same-origin browser post and a script without browser headers reach the route (405: GET-only route)
    assert client.post("/healthz", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 405
    assert client.post("/healthz").status_code == 405
    # a cross-site integration that presents the token is let through
    r = client.post("/healthz", headers={"Origin": "https://other.example", "Authorization": "Bearer s3cret"})
    assert r.status_code == 405


def test_json_answers_carry_chinese_as_utf8_not_escapes(make_app):
    app = make_app(services=[])
    with app.app_context():
        body = app.json.dumps({"chinese_name": "白头海雕"})
    assert "白头海雕" in body and "\\u" not in body


def test_healthz_tells_software_versions_only_to_the_operator(make_app):
    client = make_app(services=["species"], API_TOKEN="s3cret").test_client()
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.json["status"] == "ok"
    text = anonymous.get_data(as_text=True)
    assert '"python"' not in text and '"version"' not in text
    operator = client.get("/healthz", headers={"Authorization": "Bearer s3cret"}).json
    assert operator["python"] and operator["version"]
    remote = make_app(services=["species"]).test_client().get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert '"python"' not in remote.get_data(as_text=True)


@pytest.mark.parametrize("path", ["//healthz", "//kb?x=1"])
def test_redirects_never_carry_the_request_host(make_app, path):
    client = make_app(services=[]).test_client()
    r = client.get(path, headers={"Host": "evil.example"})
    location = r.headers.get("Location", "")
    assert r.status_code in (301, 308) and location.startswith("/") and not location.startswith("//"), location
    assert "evil.example" not in location, location


def test_every_response_carries_a_request_id_that_its_log_lines_carry_too(make_app, caplog):
    import logging

    from birdsdao.web.request_id import RequestIdFilter

    client = make_app().test_client()
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32 and made != client.get("/healthz").headers["X-Request-ID"]
    assert client.get("/no/such/route", headers={"X-Request-ID": "abc-123.x"}).headers["X-Request-ID"] == "abc-123.x"
    hostile = client.get("/healthz", headers={"X-Request-ID": "a b\\r\\nSet-Cookie: x"}).headers["X-Request-ID"]
    assert len(hostile) == 32 and " " not in hostile  # not a token: replaced, never echoed
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    app.add_url_rule("/fails", "fails", lambda: 1 / 0)  # a view that breaks: Flask logs the exception
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR):
        r = app.test_client().get("/fails", headers={"X-Request-ID": "req-42"})
    assert r.status_code == 500 and r.headers["X-Request-ID"] == "req-42"
    assert [rec.request_id for rec in caplog.records if "ZeroDivisionError" in (rec.exc_text or "") or rec.exc_info] == ["req-42"]


def test_json_logs_are_one_object_a_line_with_the_request_id(tmp_path):
    import json
    import subprocess
    import sys

    from birdsdao.config import PROJECT_ROOT

    script = (
        "from birdsdao import create_app\n"
        f"app = create_app({{'INSTANCE_PATH': {str(tmp_path)!r}, 'SERVICES': [], 'PROPAGATE_EXCEPTIONS': False}})\n"
        "app.add_url_rule('/fails', 'fails', lambda: 1 / 0)\n"
        "app.test_client().get('/fails', headers={'X-Request-ID': 'req-7'})\n"
    )
    env = {**__import__("os").environ, "BIRDSDAO_LOG_FORMAT": "json"}
    run = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    failed = [rec for rec in lines if "ZeroDivisionError" in rec.get("exception", "")]
    assert failed and failed[0]["request_id"] == "req-7" and failed[0]["level"] == "ERROR"
    assert all(set(rec) >= {"time", "level", "logger", "request_id", "message"} for rec in lines)


def test_metrics_count_requests_by_route_and_status_for_the_operator_only(make_app):
    app = make_app(services=["species", "vision"], API_TOKEN="t0ken")
    client = app.test_client()
    photo = next((NATURAL / "American_Robin").iterdir()).read_bytes()
    assert client.post("/detect", data={"image": (io.BytesIO(photo), "robin.jpg"), "annotate": "0"}).status_code == 200
    client.get("/no/such/route")
    assert client.get("/metrics").status_code == 403  # versions and traffic are the operator's
    r = client.get("/metrics", headers={"Authorization": "Bearer t0ken"})
    text = r.get_data(as_text=True)
    assert r.status_code == 200 and r.mimetype == "text/plain"
    assert 'birdsdao_requests_total{method="POST",route="/detect",status="200"} 1.0' in text
    assert 'birdsdao_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'birdsdao_requests_total{method="GET",route="/metrics",status="403"} 1.0' in text
    assert 'birdsdao_detect_stage_seconds_count{stage="detect"} 1.0' in text
    assert 'birdsdao_request_seconds_bucket{le="+Inf",route="/detect"} 1.0' in text


def test_metrics_report_answer_queues_and_upload_jobs(make_app):
    text = make_app(services=["species", "embedder", "kb", "llm"], KB_SPECIES_BUILD="off").test_client().get(
        "/metrics").get_data(as_text=True)  # the test client is this machine: the operator when no token is set
    assert 'birdsdao_llm_running{backend="extractive"} 0.0' in text
    assert 'birdsdao_llm_waiting{backend="extractive"} 0.0' in text
    assert 'birdsdao_upload_jobs{state="queued"} 0.0' in text


def test_draining_a_body_that_never_comes_gives_up_instead_of_holding_the_thread(monkeypatch):
    """A client that announced a body and sends none: the drain after the answer stops at its deadline."""
    import socket
    import time

    from birdsdao.web import wsgi

    monkeypatch.setattr(wsgi, "_DRAIN_TIMEOUT_S", 0.3)
    server_side, client_side = socket.socketpair()
    try:
        stream = server_side.makefile("rb")
        start = time.perf_counter()
        wsgi._ThenDrain([b"answer"], stream, 1 << 20, server_side).close()
        assert time.perf_counter() - start < 3
    finally:
        server_side.close()
        client_side.close()
