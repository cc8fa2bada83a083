"""The knowledge-base store and ingest pipeline without HTTP: crash safety (a writer killed with SIGKILL),
incremental updates, loaders and encodings, the splitter, no pickle, the species KB build-once logic."""
from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from birdsdao.config import DEFAULTS, PROJECT_ROOT
from birdsdao.errors import APIError
from birdsdao.kb import KnowledgeBaseService, Limits
from birdsdao.kb.embeddings import EmbedderRegistry
from birdsdao.kb.ingest import ChineseSentenceSplitter, decode_text, load_sections
from birdsdao.kb.names import sanitize_filename, validate_doc_name, validate_kb_name
from birdsdao.kb.species_kb import ensure_species_kb
from birdsdao.kb.store import KnowledgeBaseChanged, StoreError
from tests.threads import WAIT, hold, run_in_thread, waiting_on


class CountingRegistry(EmbedderRegistry):
    """The real e5 embedder, counting how many texts it was asked to embed."""

    def __init__(self):
        super().__init__()
        self.embedded = 0

    def get(self, name=None):
        model = super().get(name)
        registry = self
        if not getattr(model, "_counted", False):
            original = model.embed_array

            def counted(texts, *, is_query=False, **kwargs):
                if not is_query:
                    registry.embedded += len(texts)
                return original(texts, is_query=is_query, **kwargs)

            model.embed_array = counted
            model._counted = True
        return model


@pytest.fixture
def service(tmp_path):
    return KnowledgeBaseService(tmp_path / "kb", CountingRegistry())


def test_adding_and_deleting_a_document_does_not_reembed_the_rest(service):
    service.create("inc")
    service.upload("inc", [(f"d{i}.txt", f"第{i}篇文档。内容是关于鸟类{i}的观察记录。".encode()) for i in range(5)])
    registry = service.embedders
    after_first = registry.embedded
    assert after_first == 5
    service.upload("inc", [("new.txt", "新文档：夜鹭在夜间捕鱼。".encode())])
    assert registry.embedded == after_first + 1
    before = service.get("inc").current().index.ntotal
    service.delete_doc("inc", "d0.txt")
    snap = service.get("inc").current()
    assert snap.index.ntotal == before - 1 and registry.embedded == after_first + 1
    # the deleted document's vector is gone from FAISS itself, not only from the chunk list
    vector = registry.get().embed_array(["第0篇文档。内容是关于鸟类0的观察记录。"], is_query=True)
    _, ids = snap.index.search(vector, snap.index.ntotal)
    assert set(ids[0].tolist()) == set(snap.ids.tolist())
    # replacing a document with the same text re-embeds nothing (chunk vectors are reused by text)
    service.upload("inc", [("d1.txt", "第1篇文档。内容是关于鸟类1的观察记录。".encode())], replace=True)
    assert registry.embedded == after_first + 1


def test_reopened_store_has_the_same_results_and_no_pickle(service, tmp_path):
    service.create("persist", "说明")
    service.upload("persist", [("heron.md", "# 苍鹭\n苍鹭常站在浅水中等待鱼。\n".encode())])
    first = [h.to_dict() for h in service.search("persist", "苍鹭", 3)]
    again = KnowledgeBaseService(tmp_path / "kb", EmbedderRegistry())
    assert [h.to_dict() for h in again.search("persist", "苍鹭", 3)] == first
    files = {p.name for p in (tmp_path / "kb" / "persist").rglob("*") if p.is_file()}
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)
    assert {"index.faiss", "chunks.jsonl", "bm25.npz", "vocab.json", "manifest.json", "CURRENT"} <= files


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from birdsdao.kb import KnowledgeBaseService
    from birdsdao.kb.embeddings import EmbedderRegistry
    service = KnowledgeBaseService({kb_root!r}, EmbedderRegistry())
    i = 0
    while True:
        service.upload("crash", [(f"doc{{i}}-{{time.time()}}.txt", ("第%d篇。" % i + "大杜鹃在春天鸣叫。" * 30).encode())])
        if i == 0:
            print("ready", flush=True)  # one commit done: models and jieba are loaded, writes are fast now
        i += 1
""")


def test_kill_9_during_writes_leaves_a_loadable_last_good_state(service, tmp_path):
    service.create("crash")
    service.upload("crash", [("seed.txt", "种子文档。".encode())])
    kb_root = tmp_path / "kb"
    doc_counts = []
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(PROJECT_ROOT), kb_root=str(kb_root))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        reopened = KnowledgeBaseService(kb_root, EmbedderRegistry())
        snap = reopened.get("crash").current()
        assert "seed.txt" in snap.docs
        doc_counts.append(len(snap.docs))
        assert snap.index.ntotal == len(snap.chunks) == snap.counts.shape[0]
        assert sum(d["chunks"] for d in snap.docs.values()) == len(snap.chunks)
        assert reopened.search("crash", "种子文档", 1)[0].doc_name == "seed.txt"
        reopened.upload("crash", [(f"after{delay}.txt", "之后还能写。".encode())])  # still writable
    assert doc_counts[-1] >= 2 * len(doc_counts)  # each killed writer had committed (then died mid-work)


def test_a_damaged_current_version_falls_back_to_the_previous_one(service, tmp_path):
    service.create("dmg")
    service.upload("dmg", [("one.txt", "第一篇。".encode())])
    service.upload("dmg", [("two.txt", "第二篇。".encode())])
    folder = tmp_path / "kb" / "dmg"
    current = (folder / "CURRENT").read_text().strip()
    (folder / current / "chunks.jsonl").write_bytes(b"garbage")
    reopened = KnowledgeBaseService(tmp_path / "kb", EmbedderRegistry())
    assert [d["doc_name"] for d in reopened.docs("dmg")] == ["one.txt"]


def _summary_from_loaded_snapshot(service, kb_name) -> dict:
    """What /kb/list showed before it read manifests: the fully loaded KB's counts (the oracle)."""
    snap = service.get(kb_name).current()
    m = snap.manifest
    return {"kb_name": kb_name, "description": m["description"], "docs": len(snap.docs), "chunks": len(snap.chunks),
            "embed_model": m["embed_model"], "updated_at": m["updated_at"]}


@pytest.fixture
def version_loads(monkeypatch):
    """How many times any KB version (FAISS index, chunks, BM25) was loaded from disk."""
    from birdsdao.kb import store

    loads, real = [], store._read_version
    monkeypatch.setattr(store, "_read_version", lambda folder: loads.append(folder) or real(folder))
    return loads


def test_listing_reads_manifests_and_loads_no_index_even_after_another_process_wrote(service, tmp_path, version_loads):
    service.create("notes", "野外笔记")
    service.upload("notes", [(f"n{i}.txt", f"第{i}条笔记。黑水鸡在池塘里游泳。第二句话说的是第{i}只。".encode())
                             for i in range(3)] + [("long.txt", ("苍鹭站在浅水里等鱼。" * 80).encode())])
    service.delete_doc("notes", "n1.txt")
    service.create("empty")
    (tmp_path / "kb" / "foreign").mkdir()  # no CURRENT: not a knowledge base, not listed
    # A second service on the same folder stands for another gunicorn worker (nothing opened yet).
    worker = KnowledgeBaseService(tmp_path / "kb", service.embedders)
    version_loads.clear()
    listed = worker.list()
    assert version_loads == [] and worker._open == {}  # listing loaded no version of any KB
    assert [k["kb_name"] for k in listed] == ["empty", "notes"]
    assert listed[1]["docs"] == 3 and listed[1]["chunks"] > 3  # the long document has several chunks
    assert listed == [_summary_from_loaded_snapshot(service, n) for n in ("empty", "notes")]

    worker.search("notes", "黑水鸡", 1)  # the worker opens "notes"; then the first process commits twice
    service.upload("notes", [("new.txt", "新笔记：小䴙䴘潜水捕鱼。".encode())])
    service.delete_doc("notes", "n0.txt")
    version_loads.clear()
    listed = worker.list()
    assert version_loads == []  # the stale open KB is not reloaded just to be listed...
    assert listed == [_summary_from_loaded_snapshot(service, n) for n in ("empty", "notes")]  # ...yet is current
    assert listed[1]["docs"] == 3
    assert worker.info("notes") == listed[1]


def test_listing_a_kb_whose_current_manifest_is_damaged_shows_the_version_it_falls_back_to(service, tmp_path):
    service.create("dmg2")
    service.upload("dmg2", [("one.txt", "第一篇。".encode())])
    service.upload("dmg2", [("two.txt", "第二篇。".encode())])
    folder = tmp_path / "kb" / "dmg2"
    (folder / (folder / "CURRENT").read_text().strip() / "manifest.json").write_text("{half a manifest")
    reopened = KnowledgeBaseService(tmp_path / "kb", service.embedders)
    assert [(k["kb_name"], k["docs"]) for k in reopened.list()] == [("dmg2", 1)]
    assert [d["doc_name"] for d in reopened.docs("dmg2")] == ["one.txt"]


class HeldOpenService(KnowledgeBaseService):
    """The real service, store and e5 embedder; opening the KB named ``held`` first waits until ``release`` is
    set (a fake only in that it stands for a slow open: a big index, a sentence-transformers model to load),
    then opens it for real, or raises ``fail_with``. ``opens`` counts the opens of each KB."""

    def __init__(self, root, embedders, held: str):
        super().__init__(root, embedders)
        self.held, self.entered, self.release = held, threading.Event(), threading.Event()
        self.opens: dict[str, int] = {}
        self.fail_with: Exception | None = None

    def _open_folder(self, folder, kb_name):
        self.opens[kb_name] = self.opens.get(kb_name, 0) + 1
        if kb_name == self.held:
            hold(self.entered, self.release, "open")
            if self.fail_with is not None:
                raise self.fail_with
        return super()._open_folder(folder, kb_name)


@pytest.fixture
def restarted(service, tmp_path):
    """Three KBs on disk, then a fresh service on the same folder (a restarted worker) whose opens of "slow"
    are held: "warm" already open in it, "cold" not yet."""
    for name, text in [("slow", "大杜鹃在春天鸣叫。"), ("warm", "白鹭在稻田里捕食小鱼。"), ("cold", "戴胜在地面啄食昆虫。")]:
        service.create(name)
        service.upload(name, [(f"{name}.txt", text.encode())])
    restarted = HeldOpenService(tmp_path / "kb", service.embedders, held="slow")
    restarted.get("warm")
    yield restarted
    restarted.release.set()  # never leave a held thread behind, whatever failed


def _hold_two_opens(service):
    """Two concurrent first gets of the held KB: the first is opening it, the second waits for that open."""
    first = run_in_thread(service.get, service.held)
    assert service.entered.wait(WAIT)
    waiting = waiting_on(service._opening[service.held])
    second = run_in_thread(service.get, service.held)
    assert waiting.wait(WAIT)  # the second get waits for the open under way instead of starting its own
    return first, second


def test_a_held_open_blocks_no_other_kb_and_opens_once_with_fake_slow_open_hook(restarted):
    service = restarted
    first = run_in_thread(service.get, "slow")
    assert service.entered.wait(WAIT)
    # While "slow" is still opening: a search of an open KB, the first open of another, a listing, an upload.
    searched = run_in_thread(service.search, "warm", "白鹭吃什么", 1)
    opened = run_in_thread(service.get, "cold")
    listed = run_in_thread(service.list)
    uploaded = run_in_thread(service.upload, "warm", [("more.txt", "夜鹭在黄昏出来觅食。".encode())])
    for box in (searched, opened, listed, uploaded):
        assert box["done"].wait(WAIT), "waited behind another KB's open"
        assert "error" not in box, box.get("error")
    assert searched["value"][0].doc_name == "warm.txt"
    assert opened["value"].current().docs.keys() == {"cold.txt"}
    assert [k["kb_name"] for k in listed["value"]] == ["cold", "slow", "warm"]
    assert [f["status"] for f in uploaded["value"]] == ["added"]
    assert service.describe()["opening"] == ["slow"]

    waiting = waiting_on(service._opening["slow"])
    second = run_in_thread(service.get, "slow")
    assert waiting.wait(WAIT)
    assert not first["done"].is_set() and not second["done"].is_set()  # both wait for the one held open
    service.release.set()
    assert first["done"].wait(WAIT) and second["done"].wait(WAIT)
    assert first["value"] is second["value"] is service.get("slow")
    assert first["value"].current().docs.keys() == {"slow.txt"}
    assert service.opens == {"warm": 1, "cold": 1, "slow": 1}  # two concurrent first gets, one open
    assert service.describe()["opening"] == []


def test_a_failed_open_reaches_every_waiter_and_is_retried_later_with_fake_failing_open_hook(restarted):
    service = restarted
    service.fail_with = StoreError("knowledge base 'slow' has no loadable version (v000003: truncated)")
    first, second = _hold_two_opens(service)
    service.release.set()
    assert first["done"].wait(WAIT) and second["done"].wait(WAIT)
    for box in (first, second):
        assert (box["error"].status, box["error"].code) == (503, "kb_unavailable")
        assert "no loadable version" in box["error"].message
    assert service.opens["slow"] == 1 and "slow" not in service._open and service._opening == {}

    service.fail_with = None  # e.g. the disk came back: the next request opens it for real
    assert service.search("slow", "大杜鹃", 1)[0].doc_name == "slow.txt"
    assert service.opens["slow"] == 2


def test_a_kb_deleted_or_recreated_while_opening_leaves_no_stale_open_with_fake_slow_open_hook(restarted):
    service = restarted
    first, second = _hold_two_opens(service)
    deleted = run_in_thread(service.delete, "slow")
    assert deleted["done"].wait(WAIT) and "error" not in deleted  # the delete did not wait for the open
    service.release.set()
    assert first["done"].wait(WAIT) and second["done"].wait(WAIT)
    for box in (first, second):  # answered as a get after the delete: the KB is gone
        assert (box["error"].status, box["error"].code) == (404, "unknown_kb")
    assert "slow" not in service._open and service._opening == {}

    # Deleted and created again while an open of the old folder is held: everyone gets the new KB.
    service.create("slow")
    service.upload("slow", [("old.txt", "旧的内容。".encode())])
    service._open.pop("slow")  # as if this worker had not opened it yet
    service.entered.clear()
    service.release.clear()
    first, second = _hold_two_opens(service)
    service.delete("slow")
    created = service.create("slow", "新的")
    service.release.set()
    assert first["done"].wait(WAIT) and second["done"].wait(WAIT)
    assert first["value"] is second["value"] is service.get("slow")
    assert first["value"].current().manifest["description"] == created["description"] == "新的"
    assert first["value"].current().docs == {}


class HeldEmbeddingRegistry(EmbedderRegistry):
    """The real e5 embedder; while ``hold`` is set, embedding documents (never queries) first signals
    ``entered`` and waits for ``release`` (a fake only in that it holds an upload mid-embedding), then embeds."""

    def __init__(self):
        super().__init__()
        self.hold, self.entered, self.release = False, threading.Event(), threading.Event()

    def _load(self, name):
        model = super()._load(name)
        original, registry = model.embed_array, self

        def held(texts, *, is_query=False, **kwargs):
            if registry.hold and not is_query:
                hold(registry.entered, registry.release, "embedding")
            return original(texts, is_query=is_query, **kwargs)

        model.embed_array = held
        return model


BIG_DOC = ("old.txt", "".join(f"第{i}段。苍鹭在浅水里站立很久，等待小鱼游近后迅速啄食。" * 4 for i in range(60)).encode())


@pytest.fixture
def held_upload(tmp_path):
    """A service whose embedder holds the next upload mid-embedding; yields (service, start_upload), where
    ``start_upload(svc)`` starts an upload to "t1" through ``svc`` (a service on the same embedder)."""
    registry = HeldEmbeddingRegistry()
    service = KnowledgeBaseService(tmp_path / "kb", registry)

    def start_upload(svc):
        registry.hold = True
        box = run_in_thread(svc.upload, "t1", [BIG_DOC])
        assert registry.entered.wait(WAIT), box
        return box

    yield service, start_upload
    registry.release.set()


def _finished_with_kb_changed(service, box):
    service.embedders.release.set()
    assert box["done"].wait(WAIT)
    error = box.get("error")
    assert isinstance(error, APIError), f"not a clear API error: {error!r} / {box.get('value')}"
    assert (error.status, error.code) == (409, "kb_changed")
    assert "deleted or replaced" in error.message


def test_a_kb_deleted_during_an_upload_answers_409_and_keeps_nothing_with_fake_embedding_hold_hook(held_upload, tmp_path):
    service, start_upload = held_upload
    service.create("t1")
    box = start_upload(service)
    service.delete("t1")
    _finished_with_kb_changed(service, box)
    assert list((tmp_path / "kb").iterdir()) == []  # no folder, trash or temp version of the upload anywhere
    with pytest.raises(APIError) as exc:
        service.docs("t1")
    assert exc.value.code == "unknown_kb"


def _replaced_during_upload(service, start_upload, tmp_path):
    box = start_upload(service)
    service.delete("t1")
    service.create("t1", "新的")
    _finished_with_kb_changed(service, box)
    assert service.docs("t1") == [] and service.info("t1")["chunks"] == 0
    fresh = KnowledgeBaseService(tmp_path / "kb", service.embedders)  # what another worker reads from disk
    assert fresh.docs("t1") == [] and fresh.get("t1").current().index.ntotal == 0
    assert sorted(p.name for p in (tmp_path / "kb" / "t1").iterdir() if p.name.startswith("v")) == ["v000001"]


def test_a_kb_replaced_during_an_upload_answers_409_and_the_new_kb_stays_empty_with_fake_embedding_hold_hook(
        held_upload, tmp_path):
    service, start_upload = held_upload
    service.create("t1")
    stale = service.get("t1")
    _replaced_during_upload(service, start_upload, tmp_path)
    with pytest.raises(APIError) as exc:  # a request still holding the old KB reads nothing of the new one
        stale.current()
    assert (exc.value.status, exc.value.code) == (409, "kb_changed")
    service.upload("t1", [("new.txt", "新文档。".encode())])  # the new KB itself takes writes
    assert [d["doc_name"] for d in service.docs("t1")] == ["new.txt"]


def test_a_worker_holding_a_kb_another_worker_replaced_opens_the_new_one(service, tmp_path):
    service.create("t1")
    service.upload("t1", [("old.txt", "旧文档：苍鹭。".encode())])
    worker = KnowledgeBaseService(tmp_path / "kb", service.embedders)  # another gunicorn worker
    stale = worker.get("t1")
    service.delete("t1")
    service.create("t1", "新的")
    service.upload("t1", [("new.txt", "新文档：白鹭。".encode())])
    assert [d["doc_name"] for d in worker.docs("t1")] == ["new.txt"]
    assert worker.get("t1") is not stale and worker.search("t1", "白鹭", 1)[0].doc_name == "new.txt"
    worker.upload("t1", [("more.txt", "再一篇：夜鹭。".encode())])
    assert [d["doc_name"] for d in service.docs("t1")] == ["more.txt", "new.txt"]


def test_a_kb_whose_folder_vanishes_while_it_reloads_answers_409_not_500(service, tmp_path):
    """Another worker's delete lands between this worker's pointer check and its listing of the folder."""
    service.create("t1")
    kb = service.get("t1")
    shutil.rmtree(tmp_path / "kb" / "t1")
    with pytest.raises(KnowledgeBaseChanged):
        kb._load()


def _strip_identity(folder: Path) -> None:
    """Make ``folder`` look like a KB written before identities existed: no ``kb_id`` in any manifest."""
    for manifest_path in folder.glob("v*/manifest.json"):
        manifest = json.loads(manifest_path.read_text("utf-8"))
        manifest.pop("kb_id")
        manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), "utf-8")


def test_an_older_kb_without_identity_still_loads_takes_writes_and_detects_replacement_with_fake_embedding_hold_hook(
        held_upload, tmp_path):
    service, start_upload = held_upload
    service.create("t1")
    service.upload("t1", [("a.txt", "第一篇：白鹭。".encode())])
    folder = tmp_path / "kb" / "t1"
    _strip_identity(folder)
    service = KnowledgeBaseService(tmp_path / "kb", service.embedders)  # a restart onto the old folder
    service.upload("t1", [("b.txt", "第二篇：夜鹭。".encode())])
    service.delete_doc("t1", "a.txt")
    assert [d["doc_name"] for d in service.docs("t1")] == ["b.txt"]
    assert service.search("t1", "夜鹭", 1)[0].doc_name == "b.txt"
    # Another worker's write to the same old folder is not mistaken for a replacement...
    other = KnowledgeBaseService(tmp_path / "kb", service.embedders)
    other.upload("t1", [("c.txt", "第三篇：池鹭。".encode())])
    service.upload("t1", [("d.txt", "第四篇：牛背鹭。".encode())])
    assert [d["doc_name"] for d in service.docs("t1")] == ["b.txt", "c.txt", "d.txt"]
    # ...while a delete and re-create during an upload to it is.
    service.delete("t1")
    service.create("t1")
    _strip_identity(tmp_path / "kb" / "t1")
    service = KnowledgeBaseService(tmp_path / "kb", service.embedders)
    service.get("t1")
    _replaced_during_upload(service, start_upload, tmp_path)


def test_a_delete_waits_for_a_commit_under_way_and_cuts_no_version_in_half_with_fake_slow_write_hook(
        service, tmp_path, monkeypatch):
    from birdsdao.kb import store

    service.create("t1")
    writing, release, real = threading.Event(), threading.Event(), store._write_version

    def slow_write(folder, snap):  # stands for a big version being written: the upload holds the folder lock
        hold(writing, release, "write")
        real(folder, snap)

    monkeypatch.setattr(store, "_write_version", slow_write)
    uploaded = run_in_thread(service.upload, "t1", [("a.txt", "白鹭在稻田里捕食小鱼。".encode())])
    assert writing.wait(WAIT)
    deleted = run_in_thread(service.delete, "t1")
    assert not deleted["done"].wait(0.5)  # the delete waits for the commit instead of pulling the folder away
    release.set()
    assert uploaded["done"].wait(WAIT) and deleted["done"].wait(WAIT)
    assert "error" not in uploaded and [f["status"] for f in uploaded["value"]] == ["added"]
    assert "error" not in deleted and list((tmp_path / "kb").iterdir()) == []


def test_loaders_read_every_format_and_both_encodings():
    limits = Limits.from_config()
    text = "夜鹭在黄昏出来觅食。"
    assert decode_text(text.encode("gb18030")) == text
    assert decode_text(b"\xef\xbb\xbf" + text.encode()) == text
    html = f"<html><script>alert(1)</script><h2>习性</h2><p>{text}</p></html>".encode()
    section = load_sections("a.html", html, limits)[0]
    assert (section.heading, section.text) == ("习性", text)
    csv_sections = load_sections("a.csv", "问题,答案\n夜鹭何时觅食？,黄昏\n".encode("gb18030"), limits)
    assert csv_sections[0].question == "夜鹭何时觅食？" and "黄昏" in csv_sections[0].text
    md = load_sections("a.md", "# 夜鹭\nQ: When does it feed?\nA: At dusk.\n".encode(), limits)
    assert md[0].question == "When does it feed?" and md[0].heading == "夜鹭"
    pdf = load_sections("a.pdf", _tiny_pdf("Night herons feed at dusk."), limits)
    assert pdf[0].heading == "p. 1" and "Night herons" in pdf[0].text


def _tiny_pdf(line: str) -> bytes:
    """A one-page PDF with one line of Helvetica text, written by hand (no PDF library needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({line}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_splitter_ends_chunks_at_sentence_ends_with_overlap():
    splitter = ChineseSentenceSplitter(chunk_size=40, overlap=15)
    text = "白鹭是一种涉禽。它们在浅水中觅食！为什么羽毛是白色的？因为繁殖期需要展示；冬季羽色不变。The egret waits. Then it strikes!"
    chunks = splitter.split_text(text)
    assert len(chunks) >= 3
    assert all(c[-1] in "。！？；.!" for c in chunks)
    assert all(len(c) <= 40 for c in chunks)
    # overlap: each chunk after the first starts with the previous chunk's last sentence
    assert any(chunks[i + 1].startswith(chunks[i].split("。")[-2][-5:]) or chunks[i][-8:] in chunks[i + 1]
               for i in range(len(chunks) - 1))


@pytest.mark.parametrize("raw", ["../../etc/passwd", "..", "", "\x00", "////", "..\\..\\boot.ini", "....//"])
def test_sanitised_names_are_never_empty_and_never_a_path(raw):
    name = sanitize_filename(raw, "txt")
    assert name and "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")


def test_kb_name_rule():
    assert validate_kb_name("鸟类_notes-2") == "鸟类_notes-2"
    for bad in ("", "a" * 65, "../x", "a b", "x\x00", "é"):
        with pytest.raises(APIError):
            validate_kb_name(bad)


def test_species_kb_is_built_once_then_reused_and_updated_incrementally(service):
    cards = [(f"{name}.md", f"# {name}\n{name}是一种鸟。它的食性是{food}。\n") for name, food in
             [("白头海雕", "鱼"), ("戴胜", "昆虫"), ("喜鹊", "杂食")]]
    assert ensure_species_kb(service, cards)["action"] == "built"
    embedded = service.embedders.embedded
    assert ensure_species_kb(service, cards)["action"] == "reused"
    assert service.embedders.embedded == embedded
    changed = cards[:2] + [("喜鹊.md", "# 喜鹊\n喜鹊是一种鸟。它的食性是杂食，也吃昆虫。\n")]
    result = ensure_species_kb(service, changed)
    assert result["action"] == "updated" and result["changed"] == 1
    assert service.search("species", "喜鹊吃什么", 1)[0].doc_name == "喜鹊.md"
    folder = Path(service.root) / "species"
    manifest = json.loads((folder / (folder / "CURRENT").read_text().strip() / "manifest.json").read_text())
    assert manifest["source_hash"] and manifest["bundled"] is True


def test_a_kb_is_usable_as_a_langchain_faiss_vector_store(service):
    service.create("lc")
    service.upload("lc", [("egret.md", "# 白鹭\n白鹭在稻田里捕食小鱼和青蛙。\n".encode()),
                          ("owl.md", "# 猫头鹰\n猫头鹰在夜间捕食老鼠。\n".encode())])
    store = service.get("lc").as_langchain()
    docs = store.similarity_search("白鹭吃什么", k=1)
    assert docs[0].metadata["doc_name"] == "egret.md" and "小鱼" in docs[0].page_content


def test_species_cards_feed_the_species_kb_builder():
    from birdsdao.kb.species_kb import card_documents
    from birdsdao.species import build as build_catalog

    catalog = build_catalog(DEFAULTS, None)
    docs = card_documents(catalog)
    assert len(docs) == len(catalog) and len({name for name, _ in docs}) == len(docs)
    assert all(name.endswith(".md") and text.strip() for name, text in docs)
    assert validate_doc_name(docs[0][0]) == docs[0][0]
