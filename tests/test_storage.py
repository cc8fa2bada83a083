"""A full or read-only instance disk: writes answer 507 / 503 with a clear JSON error, and what was stored
stays as it was. The disk is real: a small tmpfs mounted for the test (needs root, as .ci/run has)."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from birdsdao import create_app

from .conftest import BIRDS525, YOLO_WEIGHTS

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CARD = "# 白头海雕\n白头海雕是北美洲的大型猛禽，主要以鱼类为食，也捕食水鸟。\n".encode()
# Long enough that the new version's FAISS index is the first file that does not fit (FAISS raises a
# RuntimeError naming ENOSPC, not an OSError).
OTHER = "# 麻雀\n".encode() + "".join(f"第{i}条：麻雀主要吃谷物和草籽，育雏期也吃昆虫，常在村庄附近成群活动。\n" * 3
                                   for i in range(40)).encode()
PHOTOS = [(BIRDS525 / "ALEXANDRINE PARAKEET" / f"{i}.jpg").read_bytes() for i in (1, 2, 3)]


class Disk:
    """A small tmpfs: ``fill()`` takes every free byte, ``read_only()`` remounts it so (bench/bench_probe.py
    uses it too)."""

    def __init__(self, path: Path, size: str = "48m"):
        self.path = path
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        self.filler = path / "filler"

    def fill(self):
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            for block in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * block)
                except OSError:
                    continue
        finally:
            os.close(fd)

    def free(self):
        self.filler.unlink()

    def read_only(self, on: bool):
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)], check=True)

    def unmount(self):
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "disk")
    yield d
    d.unmount()


def _upload(client, name, body):
    data = {"kb_name": "k", "files": [(io.BytesIO(body), name)]}
    return client.post("/kb/upload", data=data, content_type="multipart/form-data", headers=AUTH)


def _kb_client(disk):
    return create_app({"TESTING": True, "INSTANCE_PATH": str(disk.path / "instance"), "API_TOKEN": TOKEN,
                       "SERVICES": ["embedder", "kb"], "KB_SPECIES_BUILD": "off"}).test_client()


@pytest.mark.parametrize("state, status, code", [("full", 507, "storage_full"), ("read-only", 503, "storage_read_only")])
def test_kb_writes_on_a_full_or_read_only_disk_answer_json_and_keep_the_data(disk, state, status, code):
    client = _kb_client(disk)
    assert client.post("/kb/create", data={"kb_name": "k"}, headers=AUTH).status_code == 201
    assert _upload(client, "card.md", CARD).status_code == 200
    disk.fill() if state == "full" else disk.read_only(True)
    for r in (_upload(client, "other.md", OTHER),
              client.post("/kb/delete_doc", data={"kb_name": "k", "doc_name": "card.md"}, headers=AUTH)):
        assert (r.status_code, r.json["code"]) == (status, code), r.json
        assert "nothing was changed" in r.json["error"]
    if state == "read-only":
        r = client.post("/kb/delete", data={"kb_name": "k"}, headers=AUTH)
        assert (r.status_code, r.json["code"]) == (status, code), r.json
    assert [d["doc_name"] for d in client.get("/kb/docs?kb_name=k").json["docs"]] == ["card.md"]
    assert client.post("/kb/search", data={"kb_name": "k", "query": "白头海雕吃什么"}).json["hits"]
    disk.free() if state == "full" else disk.read_only(False)
    assert _upload(client, "other.md", OTHER).json["files"][0]["status"] == "added"
    fresh = _kb_client(disk)  # what is on the disk, read by a new process's view
    assert sorted(d["doc_name"] for d in fresh.get("/kb/docs?kb_name=k").json["docs"]) == ["card.md", "other.md"]


@pytest.mark.parametrize("state, status, code", [("full", 507, "storage_full"), ("read-only", 503, "storage_read_only")])
def test_teach_and_forget_on_a_full_or_read_only_disk_answer_json_and_keep_the_species(disk, tmp_path_factory,
                                                                                        state, status, code):
    client = create_app({"TESTING": True, "INSTANCE_PATH": str(disk.path / "instance"), "API_TOKEN": TOKEN,
                         "DETECTOR_CACHE": str(tmp_path_factory.getbasetemp() / "onnx-cache"),
                         "YOLO_WEIGHTS": str(YOLO_WEIGHTS), "SERVICES": ["species", "vision"]}).test_client()

    def teach(label):
        data = {"label": label, "images": [(io.BytesIO(p), f"{i}.jpg") for i, p in enumerate(PHOTOS)]}
        return client.post("/species/teach", data=data, content_type="multipart/form-data", headers=AUTH)

    assert teach("Kept Parakeet").status_code == 200
    disk.fill() if state == "full" else disk.read_only(True)
    for r in (teach("New Parakeet"), client.post("/species/forget", data={"label": "Kept Parakeet"}, headers=AUTH)):
        assert (r.status_code, r.json["code"]) == (status, code), r.json
    assert [s["label"] for s in client.get("/species/taught").json["species"]] == ["KEPT PARAKEET"]
    disk.free() if state == "full" else disk.read_only(False)
    assert client.post("/species/forget", data={"label": "Kept Parakeet"}, headers=AUTH).status_code == 200
