"""What the caption metrics (``python -m birdsdao.train score captions``) give the reference captions of the 30
natural-dev photos (``bench/natural_dev_captions.jsonl``) against baselines a real captioner must beat:

- ``species-only``: the species name alone in a sentence ("A Killdeer." / "一只双领鸻。"), what a detector plus
  the name table can say with no description of pose or setting;
- ``shuffled``: each photo given the next photo's reference captions (right style, wrong bird);
- ``self``: the references themselves (every metric at its maximum);
- ``server (retrieval-only)``: what this server says with no generative model — each photo through ``/detect``
  and ``/get_response`` with ``prompt_type=caption`` and its ``photo_id`` (counts, species, confidence: no pose
  or setting, since nothing here sees them). ``--no-server`` skips it.

The species-only line scores ~0 on BLEU and CIDEr however right the name is: both penalise a caption far
shorter than the references (BLEU's brevity penalty, CIDEr-D's length Gaussian), which is what "describe the
photo" asks for; METEOR and ROUGE-L give it a little for the name.

    python bench/bench_captions.py [--tokenize char|jieba]

A model's captions are scored the same way: ``python -m birdsdao.train score captions --refs
bench/natural_dev_captions.jsonl --hyps captions.jsonl`` with one ``{"id", "en", "zh"}`` object per photo.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao.train.__main__ import main  # noqa: E402

REFS = Path(__file__).with_name("natural_dev_captions.jsonl")


def baselines(rows: list[dict]) -> dict[str, list[dict]]:
    ids = [r["id"] for r in rows]
    return {
        "self": rows,
        "species-only": [{"id": r["id"], "en": f"A {r['species']}.", "zh": f"一只{r['species_zh']}。"} for r in rows],
        "shuffled": [{**r, "id": i} for r, i in zip(rows, ids[1:] + ids[:1])],
    }


def server_captions(rows: list[dict], instance: str) -> list[dict]:
    """The retrieval-only backend's caption of each photo, through the real routes."""
    from birdsdao import create_app

    shared = ROOT.parent / "shared"
    app = create_app({"INSTANCE_PATH": instance, "SERVICES": ["species", "vision", "llm"],
                      "YOLO_WEIGHTS": str(shared / "weights" / "yolov8n.pt"), "REGION": None})
    client, out = app.test_client(), []
    for r in rows:
        with open(shared / "datasets" / r["image"], "rb") as fh:
            photo_id = client.post("/detect", data={"image": (fh, "p.jpg"), "annotate": 0}).get_json()["photo_id"]
        text = client.post("/get_response", data={"user_input": "描述这张照片", "prompt_type": "caption",
                                                  "photo_id": photo_id}).get_json()["response"]
        zh, _, en = text.partition("\n\n")
        out.append({"id": r["id"], "zh": zh.strip(), "en": en.strip()})
    return out


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenize", choices=("char", "jieba"), default="char")
    p.add_argument("--no-server", action="store_true", help="only the baselines (no models loaded)")
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in REFS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-captions-") as tmp:
        paths = []
        hyps_by_name = baselines(rows)
        if not args.no_server:
            hyps_by_name["server (retrieval-only)"] = server_captions(rows, str(Path(tmp) / "instance"))
        for name, hyps in hyps_by_name.items():
            path = Path(tmp) / f"{name.split()[0]}.jsonl"
            path.write_text("".join(json.dumps(h, ensure_ascii=False) + "\n" for h in hyps), encoding="utf-8")
            paths.append(str(path))
        return main(["score", "captions", "--refs", str(REFS), "--hyps", *paths, "--tokenize", args.tokenize,
                     "--out", tmp])


if __name__ == "__main__":
    run()
