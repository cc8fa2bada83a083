"""Species accuracy on field photos and on BIRDS-525 crops: each head alone, the server's rule, and today's
former rule, top-1/top-5 at species level; calibration; answers at genus/family; flock context; the mirror
view's cost; teaching. One command (about 10 minutes on 2 cores):

    python bench/bench_species.py [--skip-teach]

Sets: natural-dev (30) and natural-val (244) field photos through the server's own observe() (detector →
crops → features), main bird = the most confident box; BIRDS-525, 4 folds (prototypes from 3 photos per
species + mirrors, test on the 4th), ranked over the whole vocabulary. A coarse BIRDS-525 class (CROW) counts
as right when the answer is a species inside it. Tune on these sets only (never on photos kept back).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao import create_app  # noqa: E402
from birdsdao.vision.backbone import l2n, softmax  # noqa: E402
from birdsdao.vision.classifier import CropFeatures, Fusion  # noqa: E402
from birdsdao.vision.imaging import decode_image, to_model_input, to_rgb  # noqa: E402
from birdsdao.vision.naming import answer_at_rank, flock_context  # noqa: E402
from birdsdao.vision.classifier import top_guesses  # noqa: E402

SHARED = ROOT.parent / "shared"
FORMER = Fusion(alpha=0.5, alpha_shared=0.5, power=2.0, scale=40.0, generic_min_share=float("inf"), sharpen=1.0, spread=0.0)


def species_level(entry) -> str:
    return " ".join(entry.scientific.split()[:2]).lower() if entry.scientific else entry.key


class Scorer:
    """Top-k at species level; a coarse class as truth accepts any species inside it."""

    def __init__(self, state):
        self.state = state
        self.level = [species_level(e) for e in state.vocab.entries]
        self.accept = {}
        for row, members in state.taxonomy.members.items():
            self.accept[row] = {self.level[m] for m in members}

    def right(self, truth_row: int, pred_row: int) -> bool:
        return self.level[pred_row] == self.level[truth_row] or self.level[pred_row] in self.accept.get(truth_row, ())

    def topk(self, probs: np.ndarray, truths: list[int]) -> tuple[float, float, np.ndarray]:
        t1, t5, right1 = 0, 0, []
        for row, truth in zip(probs, truths):
            seen = []
            for j in np.argsort(-row)[:12]:
                if self.level[j] not in [self.level[s] for s in seen]:
                    seen.append(j)
            ok1 = self.right(truth, seen[0])
            t1 += ok1
            t5 += any(self.right(truth, j) for j in seen[:5])
            right1.append(ok1)
        return t1 / len(truths), t5 / len(truths), np.array(right1)


def ece_table(probs, right, bins=10):
    conf = probs.max(1)
    edges = np.linspace(0, 1, bins + 1)
    ece, rows = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - right[m].mean())
            rows.append(f"    ({lo:.1f}, {hi:.1f}]  n={m.sum():4d}  mean confidence {conf[m].mean():.3f}  accuracy {right[m].mean():.3f}")
    return ece, rows


def view_features(clf, crops):
    """Per image: single-view features of it and of its mirror (mirror off), as the prototype builder sees them."""
    return clf.features(crops, mirror_below=0.0), clf.features(np.ascontiguousarray(crops[:, :, ::-1]), mirror_below=0.0)


def mirrored(a: CropFeatures, b: CropFeatures, below: float) -> CropFeatures:
    """What classifier.features gives with the mirror view (crops whose top iNat probability is below
    ``below``), rebuilt from the two single views."""
    unsure = (softmax(a.inat_logits[:, :-1]).max(1) < below)[:, None]
    half = a.proto.shape[1] // 2
    inat = np.where(unsure, l2n(a.proto[:, :half]) + l2n(b.proto[:, :half]), a.proto[:, :half])
    proto = l2n(np.concatenate([l2n(inat), l2n(a.proto[:, half:])], 1)).astype(np.float32)
    logits = np.where(unsure, (a.inat_logits + b.inat_logits) / 2, a.inat_logits)
    return CropFeatures(logits, proto, a.imagenet_bird)


class Bench:
    def __init__(self):
        self.app = create_app({"INSTANCE_PATH": "/tmp/birdsdao-bench-species", "SERVICES": ["species", "vision"],
                               "YOLO_WEIGHTS": str(SHARED / "weights" / "yolov8n.pt")})
        with self.app.app_context():
            self.vision = self.app.extensions["birdsdao"].get("vision")
        self.clf = self.vision.classifier
        self.server = self.clf.fusion
        self.catalog = self.vision.catalog
        self.shipped_base = dict(self.clf.base)
        self.rules = {"iNat head alone": dataclasses.replace(self.server, alpha=1.0, alpha_shared=1.0),
                      "prototype head alone": dataclasses.replace(self.server, alpha=0.0, alpha_shared=0.0),
                      "former server rule (no mirror)": FORMER,
                      "server rule": self.server}

    def probs(self, feats, fusion, prior=None):
        self.clf.fusion = fusion
        try:
            return self.clf.probabilities(feats, prior)[0]
        finally:
            self.clf.fusion = self.server

    # -- BIRDS-525 folds -----------------------------------------------------------------------------------
    def birds525(self):
        root = SHARED / "datasets" / "birds525-dev"
        files = sorted(p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
        labels = np.array([p.parent.name for p in files])
        fold = np.array([int(p.stem) for p in files])
        crops = np.stack([to_model_input(to_rgb(Image.open(p))) for p in files])
        start = time.perf_counter()
        single, flipped = view_features(self.clf, crops)
        tta = mirrored(single, flipped, self.clf.mirror_below)
        print(f"[birds525] features of {len(files)} photos + mirrors in {time.perf_counter() - start:.0f} s")
        keys = np.array([self.catalog.by_label(label).id for label in labels])
        self.b525 = (keys, fold, single, flipped, tta)
        results, calib = {}, {}
        for f in sorted(set(fold.tolist())):
            self.set_base(keys, fold != f, single, flipped)
            state = self.clf.state
            scorer = Scorer(state)
            truths = [state.vocab.index[k] for k in keys[fold == f]]
            for name, fusion in self.rules.items():
                feats = (single if fusion is FORMER else tta).take(np.where(fold == f)[0])
                p = self.probs(feats, fusion)
                t1, t5, right = scorer.topk(p, truths)
                results.setdefault(name, []).append((t1, t5))
                if fusion is self.server:
                    calib.setdefault("p", []).append(p.max(1)), calib.setdefault("r", []).append(right)
        self.restore()
        return {k: tuple(np.mean(v, 0)) for k, v in results.items()}, results, calib

    def set_base(self, keys, mask, single, flipped):
        base = {}
        for key in np.unique(keys[mask]):
            m = mask & (keys == key)
            vec = l2n(np.concatenate([single.proto[m], flipped.proto[m]]).mean(0))
            base[str(key)] = (vec, int(2 * m.sum()))
        self.clf.base = base
        self.clf.set_taught({}, [])

    def restore(self):
        self.clf.base = dict(self.shipped_base)
        self.clf.set_taught({}, [])

    # -- field photos ----------------------------------------------------------------------------------------
    def natural(self, split):
        root = SHARED / "datasets" / split
        inat_truth = {}
        if split == "natural-val":
            for r in csv.DictReader(open(SHARED / "datasets" / "natural-val-labels.csv", encoding="utf-8")):
                inat_truth[r["folder"]] = int(r["inat_index"])
        state = self.clf.state
        by_english = {}
        for i, e in enumerate(state.vocab.entries):
            by_english.setdefault(norm(e.names.get("english_name")), i)
        for label in self.catalog.all():
            for alias in label.aliases:
                by_english.setdefault(norm(alias), state.vocab.index[label.id])
        photos = sorted(p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
        out = []
        timings = {True: [], False: []}
        for p in photos:
            folder = p.parent.name
            if folder in inat_truth:
                truth = int(state.inat_rows[inat_truth[folder]])
            else:
                truth = by_english[norm(folder.replace("_", " "))]
            image, _ = decode_image(p.read_bytes(), max_pixels=40_000_000, max_side=1600)
            per_mirror = {}
            below = self.clf.mirror_below
            for mirror in (False, True):
                self.clf.mirror_below = below if mirror else 0.0
                start = time.perf_counter()
                boxes, feats = self.vision.observe(image)
                timings[mirror].append((time.perf_counter() - start) * 1000)
                per_mirror[mirror] = (boxes, feats)
            self.clf.mirror_below = below
            out.append((folder, truth, per_mirror))
        return out, timings

    def natural_table(self, items):
        scorer = Scorer(self.clf.state)
        res = {}
        for name, fusion in self.rules.items():
            mirror = fusion is not FORMER
            main = [main_row(boxes, feats) for _, _, pm in items for boxes, feats in [pm[mirror]]]
            feats = concat([f for f in main if f is not None])
            truths = [t for (_, t, _), f in zip(items, main) if f is not None]
            p = self.probs(feats, fusion)
            t1, t5, right = scorer.topk(p, truths)
            missing = sum(f is None for f in main)
            res[name] = (t1 * len(truths) / len(items), t5 * len(truths) / len(items), p, right, truths, missing)
        return res


def norm(text) -> str:
    return "".join(ch for ch in (text or "").lower() if ch.isalnum())


def main_row(boxes, feats):
    if not boxes:
        return None
    confs = [b.confidence if b else 0.0 for b in boxes]
    return feats.take([int(np.argmax(confs))])


def concat(items: list[CropFeatures]) -> CropFeatures:
    return CropFeatures(np.concatenate([f.inat_logits for f in items]), np.concatenate([f.proto for f in items]),
                        np.concatenate([f.imagenet_bird for f in items]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-teach", action="store_true")
    args = parser.parse_args()
    bench = Bench()
    s = bench.server
    print(f"server rule: alpha {s.alpha} (shared {s.alpha_shared}), power {s.power}, prototype scale {s.scale}, coarse-class share "
          f"{s.generic_min_share}, sharpen {s.sharpen}, spread {s.spread}, location prior power {s.prior_power}, "
          f"taught boost {s.taught_boost}, "
          f"mirror view below iNat top probability {bench.clf.mirror_below}")
    b525, per_fold, calib = bench.birds525()
    nat = {}
    for split in ("natural-dev", "natural-val"):
        items, timings = bench.natural(split)
        nat[split] = (items, bench.natural_table(items), timings)

    print("\n== top-1 / top-5 at species level ==")
    print(f"{'rule':34s} {'natural-dev':>14s} {'natural-val':>14s} {'BIRDS-525 folds':>16s}")
    for name in bench.rules:
        d, v = nat["natural-dev"][1][name], nat["natural-val"][1][name]
        print(f"{name:34s} {d[0]:6.3f}/{d[1]:.3f} {v[0]:6.3f}/{v[1]:.3f} {b525[name][0]:8.3f}/{b525[name][1]:.3f}")
    print("  BIRDS-525 per fold, server rule: " + ", ".join(f"{t1:.3f}" for t1, _ in per_fold["server rule"]))
    missing = nat["natural-val"][1]["server rule"][5]
    print(f"  natural-val photos with no bird found (counted wrong): {missing}")

    print("\n== calibration of the top-1 confidence (server rule) ==")
    val = nat["natural-val"][1]["server rule"]
    ece, rows = ece_table(val[2], val[3])
    print(f"  natural-val expected calibration error {ece:.3f}; reliability:")
    print("\n".join(rows))
    ece_b, _ = ece_table(np.concatenate(calib["p"])[:, None] * np.array([[1.0]]), np.concatenate(calib["r"]))
    print(f"  BIRDS-525 folds expected calibration error {ece_b:.3f}")

    print("\n== answers at the rank that is sure enough (natural-val, server rule) ==")
    state = bench.clf.state
    scorer = Scorer(state)
    answer_min = float(bench.vision.config["ANSWER_MIN_CONFIDENCE"])
    counts = {}
    for row, truth in zip(val[2], val[4]):
        best = top_guesses(row, state.vocab, 1)[0]
        ans = answer_at_rank(row, state, best, answer_min)
        rank = ans["rank"] + (" (uncertain)" if ans.get("uncertain") else "")
        if ans["rank"] == "species":
            ok = scorer.right(truth, state.vocab.index[best.entry.key])
        else:
            _, rows_in = state.taxonomy.group_of(state.vocab, state.vocab.index[best.entry.key], ans["rank"])
            ok = any(scorer.right(truth, r) for r in rows_in)
        n, k = counts.get(rank, (0, 0))
        counts[rank] = (n + 1, k + ok)
    for rank, (n, k) in counts.items():
        print(f"  answered at {rank:22s} {n:4d} photos, right at that rank {k / n:.3f}")

    print("\n== flock context (every box of natural photos with 2+ birds; truth = the photo's species) ==")
    cfg = bench.vision.config
    for split in ("natural-dev", "natural-val"):
        items = nat[split][0]
        before = after = total = photos = 0
        for _, truth, pm in items:
            boxes, feats = pm[True]
            if len(boxes) < 2:
                continue
            photos += 1
            p, _ = bench.clf.probabilities(feats)
            areas = [b.area if b else None for b in boxes]
            q = flock_context(p, feats.proto, areas, confident=float(cfg["FLOCK_CONFIDENT"]),
                              min_similarity=float(cfg["FLOCK_MIN_SIMILARITY"]), strength=float(cfg["FLOCK_STRENGTH"]))
            before += sum(scorer.right(truth, j) for j in p.argmax(1))
            after += sum(scorer.right(truth, j) for j in q.argmax(1))
            total += len(boxes)
        print(f"  {split}: {photos} photos, {total} boxes: top-1 right without {before}/{total}, with flock context {after}/{total}")

    print("\n== mirror view: accuracy above; cost per photo (observe = detector + crops + both models) ==")
    for split in ("natural-dev", "natural-val"):
        t = nat[split][2]
        print(f"  {split}: median {np.median(t[False]):.1f} ms without, {np.median(t[True]):.1f} ms with "
              f"(x{np.median(t[True]) / np.median(t[False]):.2f})")

    if not args.skip_teach:
        teach(bench, nat["natural-val"][0])


def teach(bench, field_items):
    """50 BIRDS-525 species (every 10th label): (1) leave the species' shipped prototype out, teach photos 1-3,
    test photo 4, against the prototype head alone on held-out photos; (2) shipped prototypes kept, teach
    photos 1-3 of the same species: its rank on photo 4 must never fall."""
    keys, fold, single, flipped, tta = bench.b525
    chosen = sorted(set(keys.tolist()))[::10][:50]
    clf = bench.clf
    state = clf.state
    scorer = Scorer(state)
    taught_top1 = proto_top1 = 0
    falls = rises = 0
    for key in chosen:
        row = state.vocab.index[key]
        train = np.where((keys == key) & (fold != 4))[0]
        test = tta.take(np.where((keys == key) & (fold == 4))[0])
        feats = tta.proto[train]
        # (1) left out, then taught
        clf.base = {k: v for k, v in bench.shipped_base.items() if k != key}
        clf.set_taught({key: feats}, [])
        taught_top1 += scorer.right(row, int(clf.probabilities(test)[0].argmax()))
        proto_alone = dataclasses.replace(bench.server, alpha=0.0, alpha_shared=0.0, taught_boost=1.0)  # the head, no teaching boost
        proto_top1 += scorer.right(row, int(bench.probs(test, proto_alone).argmax()))
        # (2) shipped prototype kept: rank before vs after teaching, without the taught boost (the rule under
        # test is that taught photos of a known species stay out of the head weights)
        clf.base = dict(bench.shipped_base)
        clf.set_taught({}, [])
        no_boost = dataclasses.replace(bench.server, taught_boost=1.0)
        before = rank_of(bench.probs(test, no_boost)[0], row)
        clf.set_taught({key: feats}, [])
        after = rank_of(bench.probs(test, no_boost)[0], row)
        falls += after > before
        rises += after < before
    # (3) species only the iNat head named (no shipped prototype), taught from 3 of their natural-val photos:
    # their rank on the other photos, without the boost (they enter the head weights: may that lower them?)
    by_truth = {}
    for _, truth, pm in field_items:
        f = main_row(*pm[True])
        if f is not None:
            by_truth.setdefault(truth, []).append(f)
    inat_only = [(t, fs) for t, fs in by_truth.items()
                 if state.vocab.entries[t].key not in bench.shipped_base and len(fs) >= 4]
    clf.base = dict(bench.shipped_base)
    no_boost = dataclasses.replace(bench.server, taught_boost=1.0)
    inat_falls = inat_rises = inat_tests = 0
    for truth, fs in inat_only:
        tests = concat(fs[3:])
        clf.set_taught({}, [])
        before = [rank_of(r, truth) for r in bench.probs(tests, no_boost)]
        clf.set_taught({state.vocab.entries[truth].key: concat(fs[:3]).proto}, [])
        after = [rank_of(r, truth) for r in bench.probs(tests, no_boost)]
        inat_falls += sum(a > b for a, b in zip(after, before))
        inat_rises += sum(a < b for a, b in zip(after, before))
        inat_tests += len(before)
    clf.set_taught({}, [])
    # The same 50 taught at once (their shipped prototypes left out): does teaching cost the field photos?
    clf.base = {k: v for k, v in bench.shipped_base.items() if k not in chosen}
    clf.set_taught({k: tta.proto[np.where((keys == k) & (fold != 4))[0]] for k in chosen}, [])
    main = [main_row(*pm[True]) for _, _, pm in field_items]
    feats = concat([f for f in main if f is not None])
    truths = [t for (_, t, _), f in zip(field_items, main) if f is not None]
    field_top1 = scorer.topk(clf.probabilities(feats)[0], truths)[0] * len(truths) / len(field_items)
    bench.restore()
    n = len(chosen)
    print(f"\n== teaching ({n} BIRDS-525 species) ==")
    print(f"  shipped prototype left out, taught from 3 photos, 4th photo: taught species top-1 {taught_top1 / n:.3f}; "
          f"the prototype head alone (taught prototype, whole vocabulary) {proto_top1 / n:.3f}")
    print(f"  known species taught 3 more photos (no boost): rank on the 4th photo fell {falls}/{n}, rose {rises}/{n}")
    print(f"  species only the iNat head named, taught 3 of their natural-val photos (no boost): {len(inat_only)} "
          f"species, rank on their other {inat_tests} photos fell {inat_falls}, rose {inat_rises}")
    print(f"  natural-val top-1 with those {n} species taught instead of shipped: {field_top1:.3f}")


def rank_of(row: np.ndarray, target: int) -> int:
    return int((row > row[target]).sum())


if __name__ == "__main__":
    main()
