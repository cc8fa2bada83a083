"""What the caption metrics (``python -m birdsdao.train score captions``) give the reference captions of the 30
natural-dev photos (``bench/natural_dev_captions.jsonl``) against baselines a real captioner must beat:

- ``species-only``: the species name alone in a sentence ("A Killdeer." / "一只双领鸻。"), what a detector plus
  the name table can say with no description of pose or setting;
- ``shuffled``: each photo given the next photo's reference captions (right style, wrong bird);
- ``self``: the references themselves (every metric at its maximum).

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


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenize", choices=("char", "jieba"), default="char")
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in REFS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-captions-") as tmp:
        paths = []
        for name, hyps in baselines(rows).items():
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text("".join(json.dumps(h, ensure_ascii=False) + "\n" for h in hyps), encoding="utf-8")
            paths.append(str(path))
        return main(["score", "captions", "--refs", str(REFS), "--hyps", *paths, "--tokenize", args.tokenize,
                     "--out", tmp])


if __name__ == "__main__":
    run()
