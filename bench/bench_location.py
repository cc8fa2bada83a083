"""What the location prior (issue #15) does to species accuracy, through the real /detect path.

    python bench/bench_location.py [--limit N]

Each photo goes through ``VisionPipeline.detect`` once (no location); the crop features of its birds are
kept and ranked again with and without the prior (``SpeciesClassifier.probabilities(feats, prior)``), for the
server's fusion (FUSION_ALPHA and FUSION_ALPHA_SHARED from config) and for the iNat head alone (alpha=1). Scored at species level
(first two words of the scientific name) on the main bird (the most confident box).

- natural-val (244 photos, labels from natural-val-labels.csv by iNat output) and natural-dev (30): no
  location vs eastern North America (lat 40.7, lon -74.0: where these field photos come from).
- birds525-dev, image 4 of the Asian species in ASIAN below: no location vs a Chinese position (31.2, 114.0),
  and for each its North American look-alike: rank of both. (The shipped prototypes were built from all four
  images, so this shows what the prior does to look-alikes, not held-out accuracy; that is bench_species.py's.)
Only natural-val, natural-dev and birds525-dev are used: the photos kept back are never tuned on.
"""
from __future__ import annotations

import argparse
import dataclasses
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao import create_app  # noqa: E402
from birdsdao.services import get_service  # noqa: E402

SHARED = ROOT.parent / "shared"
NA_EAST = (40.7, -74.0)
CHINA = (31.2, 114.0)
# BIRDS-525 label of an Asian species → BIRDS-525/iNat English name of a North American look-alike.
ASIAN = {
    "EURASIAN MAGPIE": "Black-billed Magpie",
    "CRESTED KINGFISHER": "Belted Kingfisher",
    "ASIAN CRESTED IBIS": "White Ibis",
    "DAURIAN REDSTART": "American Redstart",
    "EURASIAN BULLFINCH": "Pine Grosbeak",
    "CHINESE BAMBOO PARTRIDGE": "Northern Bobwhite",
    "TAIWAN MAGPIE": "Blue Jay",
    "HIMALAYAN BLUETAIL": "Eastern Bluebird",
    "EURASIAN GOLDEN ORIOLE": "Baltimore Oriole",
    "JAPANESE ROBIN": "American Robin",
    "FAIRY BLUEBIRD": "Eastern Bluebird",
}


def species_level(names: dict) -> str:
    return " ".join((names.get("scientific_name") or "").split()[:2]).lower()


def main_bird_features(vision, path: Path):
    """The crop features of the most confident bird, through the server's own decode → observe path."""
    image, _ = vision._decode(path.read_bytes())
    boxes, feats = vision.observe(image)
    if not boxes:
        return None
    confs = [b.confidence if b is not None else 0.0 for b in boxes]
    return feats.take([int(np.argmax(confs))])


def ranked_species(vision, feats, alpha: float | None, prior, k: int = 5) -> list[str]:
    """Top-k species; ``alpha``: one mixture weight for both cases (1.0: the iNat head alone), None: the server's."""
    clf = vision.classifier
    saved = clf.fusion
    if alpha is not None:
        clf.fusion = dataclasses.replace(saved, alpha=alpha, alpha_shared=alpha)
    try:
        probs, state = clf.probabilities(feats, prior)
    finally:
        clf.fusion = saved
    order = np.argsort(-probs[0])[:k]
    return [species_level(state.vocab.entries[i].names) for i in order]


def natural_sets(vision, limit):
    vocab, rows = vision.classifier.state.vocab, vision.classifier.state.inat_rows
    labels = list(csv.DictReader(open(SHARED / "datasets" / "natural-val-labels.csv", encoding="utf-8")))
    truth_val = {r["folder"]: species_level(vocab.entries[rows[int(r["inat_index"])]].names) for r in labels}
    val_root = SHARED / "datasets" / "natural-val"
    val = [(p, truth_val[p.parent.name]) for d in sorted(val_root.iterdir()) if d.is_dir() for p in sorted(d.iterdir())]
    by_english = {}
    for e in vocab.entries:
        by_english.setdefault("".join(c for c in e.names["english_name"].lower() if c.isalnum()), e)
    for line_no, line in enumerate((ROOT / "weights" / "inat_bird_labels.txt").read_text(encoding="utf-8").splitlines()):
        if "(" in line and rows[line_no] >= 0:
            key = "".join(c for c in line[line.index("(") + 1: -1].lower() if c.isalnum())
            by_english.setdefault(key, vocab.entries[rows[line_no]])
    dev_root = SHARED / "datasets" / "natural-dev"
    dev = []
    for d in sorted(dev_root.iterdir()):
        if d.is_dir():
            entry = by_english["".join(c for c in d.name.lower() if c.isalnum())]
            dev += [(p, species_level(entry.names)) for p in sorted(d.iterdir())]
    return {"natural-val": val[:limit] if limit else val, "natural-dev": dev[:limit] if limit else dev}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="photos per set (0: all)")
    args = parser.parse_args()
    app = create_app({"INSTANCE_PATH": "/tmp/birdsdao-bench-location", "SERVICES": ["species", "vision"],
                      "YOLO_WEIGHTS": str(SHARED / "weights" / "yolov8n.pt"), "REGION": None})
    with app.app_context():
        vision = get_service("vision")
    alpha = None
    prior_na = vision.location_prior.vector(*NA_EAST)
    prior_cn = vision.location_prior.vector(*CHINA)
    table = []
    for name, items in natural_sets(vision, args.limit).items():
        start = time.perf_counter()
        hits = {}
        for path, truth in items:
            feats = main_bird_features(vision, path)
            for head, a in (("server fusion", alpha), ("iNat head alone", 1.0)):
                for where, prior in (("none", None), ("E North America", prior_na)):
                    top = ranked_species(vision, feats, a, prior) if feats is not None else []
                    h = hits.setdefault((head, where), [0, 0])
                    h[0] += top[:1] == [truth]
                    h[1] += truth in top[:5]
        n = len(items)
        print(f"[{name}] {n} photos in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        for (head, where), (t1, t5) in hits.items():
            table.append((name, head, where, t1 / n, t5 / n, n))
    # BIRDS-525 Asian species with a Chinese position
    catalog = vision.catalog
    asian_rows = []
    for label, lookalike in ASIAN.items():
        sp, other = catalog.by_label(label), catalog.lookup(lookalike)
        if sp is None or other is None:
            print(f"skipped {label} / {lookalike}: not in the catalogue", file=sys.stderr)
            continue
        feats = main_bird_features(vision, SHARED / "datasets" / "birds525-dev" / label / "4.jpg")
        if feats is None:
            continue
        row = [label, lookalike]
        for where, prior in (("none", None), ("China", prior_cn)):
            probs, state = vision.classifier.probabilities(feats, prior)
            order = list(np.argsort(-probs[0]))
            ranks = [order.index(state.vocab.index[s.id]) + 1 for s in (sp, other)]
            row += [ranks[0], float(probs[0][state.vocab.index[sp.id]]), ranks[1],
                    float(probs[0][state.vocab.index[other.id]])]
        asian_rows.append(row)
    print(f"\nLocation prior (species/ranges.py) x fusion (FUSION_ALPHA={app.config['FUSION_ALPHA']}, "
          f"FUSION_ALPHA_SHARED={app.config['FUSION_ALPHA_SHARED']}); species-level accuracy, main bird")
    print(f"{'set':<12} {'head':<16} {'location':<16} {'top-1':>6} {'top-5':>6} {'n':>4}")
    for name, head, where, t1, t5, n in table:
        print(f"{name:<12} {head:<16} {where:<16} {t1:6.3f} {t5:6.3f} {n:4d}")
    print("\nBIRDS-525 image 4 of Asian species, server fusion: rank (probability) of the Asian species and of its"
          " North American look-alike, without a location and with a Chinese one (31.2, 114.0)")
    print(f"{'Asian species':<24} {'look-alike':<20} {'no location':>26} {'China':>26}")
    above = 0
    for label, look, r0, p0, q0, pq0, r1, p1, q1, pq1 in asian_rows:
        above += r1 < q1
        print(f"{label:<24} {look:<20} {r0:>4} ({p0:.3f}) vs {q0:>4} ({pq0:.3f})  {r1:>4} ({p1:.3f}) vs {q1:>4} ({pq1:.3f})")
    print(f"Asian species above its look-alike with the Chinese location: {above}/{len(asian_rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
