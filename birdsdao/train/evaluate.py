"""``evaluate``: score a species model (``.pt`` from train/prune, ``.onnx``, or the default LiteRT iNat model)
on a folder-per-species data set — top-1/top-5, per-species accuracy, the most frequent confusions and
calibration (ECE + reliability diagram) — or a detector on a YOLO data yaml (mAP50, Ultralytics' val)."""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

from birdsdao.config import DEFAULTS

from .common import DEFAULT_DETECTOR, INAT_REFERENCE, summary, write_json, write_jsonl

HELP = "top-1/top-5, per-species accuracy, confusions, calibration (or detector mAP50)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path(DEFAULTS["INAT_MODEL"]),
                   help="species model: .pt (train/prune), .onnx (export) or .tflite (LiteRT iNat; the default); "
                        "a detector .pt with --data *.yaml")
    p.add_argument("--labels", type=Path, default=None, help="labels.txt for an .onnx model (default: beside it)")
    p.add_argument("--data", required=True, type=Path,
                   help="folder per species (a train/val tree: its val/ is used) or a YOLO data .yaml")
    p.add_argument("--index", type=int, default=None,
                   help="only image number N of each species (e.g. 4: the held-out image of `train`)")
    p.add_argument("--species", type=int, default=None, help="only the first N species")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bins", type=int, default=15, help="confidence bins for ECE / the reliability diagram")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--name", default="evaluate")


# --- metrics (plain numpy so they are easy to test) ---

def aggregate_by_label(probs: np.ndarray, output_labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Sum the probabilities of outputs that share a label (e.g. an iNat subspecies and its species)."""
    names = sorted(set(output_labels))
    col = {n: i for i, n in enumerate(names)}
    agg = np.zeros((probs.shape[0], len(names)), dtype=np.float64)
    np.add.at(agg.T, [col[l] for l in output_labels], probs.T)
    return agg, names


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over equal-width confidence bins; also the bins themselves."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if m.any():
            acc, c = float(correct[m].mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            table.append({"lo": float(lo), "hi": float(hi), "count": int(m.sum()), "accuracy": acc, "confidence": c})
    return float(ece), table


def score_predictions(probs: np.ndarray, names: list[str], truth: list[str], bins: int = 15) -> dict:
    """All the species metrics from label-level probabilities ``probs`` (N × len(names))."""
    order = np.argsort(-probs, axis=1)
    top = [[names[j] for j in row[:5]] for row in order]
    pred = [t[0] for t in top]
    correct = np.array([p == t for p, t in zip(pred, truth)])
    conf = probs[np.arange(len(pred)), order[:, 0]]
    per = {}
    for t, ok in zip(truth, correct):
        n, k = per.get(t, (0, 0))
        per[t] = (n + 1, k + int(ok))
    ece, table = expected_calibration_error(conf, correct.astype(float), bins)
    known = set(names)
    coverable = np.array([t in known for t in truth])
    return {
        "images": len(truth), "species": len(per),
        "top1": float(correct.mean()) if len(truth) else float("nan"),
        "top5": float(np.mean([t in tt for t, tt in zip(truth, top)])) if len(truth) else float("nan"),
        # Species the model has no output for can never be right; report accuracy on the others too.
        "coverable_species": len({t for t in truth if t in known}),
        "top1_on_coverable": float(correct[coverable].mean()) if coverable.any() else float("nan"),
        "ece": ece, "reliability": table,
        "per_species": {t: {"images": n, "correct": k, "accuracy": k / n} for t, (n, k) in sorted(per.items())},
        "confusions": [{"true": t, "predicted": p, "count": c}
                       for (t, p), c in Counter((t, p) for t, p in zip(truth, pred) if t != p).most_common(20)],
        "predictions": [{"true": t, "top5": tt, "confidence": float(c)} for t, tt, c in zip(truth, top, conf)],
    }


def plot(metrics: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    per = sorted(metrics["per_species"].items(), key=lambda kv: (kv[1]["accuracy"], kv[0]))
    title = f"per-species accuracy (top-1 {metrics['top1']:.3f}, {metrics['images']} images)"
    if len(per) > 80:  # a readable figure: the 50 worst and the 30 best (metrics.json has them all)
        per = per[:50] + per[-30:]
        title += ", 50 worst + 30 best species"
    fig, ax = plt.subplots(figsize=(8, max(3, 0.13 * len(per))))
    ax.barh(range(len(per)), [v["accuracy"] for _, v in per], color="#4a7")
    ax.set_yticks(range(len(per)), [k for k, _ in per], fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    paths.append(out / "per_species_accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    rel = metrics["reliability"]
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in rel], [b["accuracy"] for b in rel],
           width=[b["hi"] - b["lo"] for b in rel], edgecolor="k", color="#69c", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {metrics['ece']:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    paths.append(out / "reliability.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def dataset_images(data: Path, index: int | None, species: int | None) -> list[tuple[Path, str]]:
    from .data import list_species

    root = Path(data) / "val" if (Path(data) / "val").is_dir() else Path(data)
    found = list_species(root, species=species)
    return [(p, label) for label, imgs in found.items() for p in imgs if index is None or p.stem == str(index)]


def run(args) -> dict:
    if str(args.data).endswith((".yaml", ".yml")):
        return evaluate_detector(args)
    from PIL import Image
    from tqdm import tqdm

    from ..vision.species_model import open_species_model

    items = dataset_images(args.data, args.index, args.species)
    if not items:
        raise ValueError(f"no images selected in {args.data}")
    model = open_species_model(args.model, args.labels, args.device, reference=INAT_REFERENCE)
    t0 = time.perf_counter()
    chunks = []
    for i in tqdm(range(0, len(items), args.batch), desc="evaluate"):
        imgs = []
        for path, _ in items[i:i + args.batch]:
            with Image.open(path) as im:
                imgs.append(im.convert("RGB"))
        chunks.append(model.predict(imgs))
    seconds = time.perf_counter() - t0
    probs, names = aggregate_by_label(np.concatenate(chunks), model.labels)
    truth = [label for _, label in items]
    metrics = score_predictions(probs, names, truth, args.bins)
    metrics.update(model=str(args.model), kind=model.kind, data=str(args.data), index=args.index,
                   ms_per_image=round(1000 * seconds / len(items), 2))
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    predictions = metrics.pop("predictions")
    write_json(out / "metrics.json", metrics)
    write_jsonl(out / "predictions.jsonl", predictions)
    pngs = plot(metrics, out)
    worst = ", ".join(f"{c['true']}→{c['predicted']}" for c in metrics["confusions"][:3]) or "none"
    summary(f"evaluate ({model.kind})", {
        "images / species": f"{metrics['images']} / {metrics['species']}",
        "top-1 / top-5": f"{metrics['top1']:.3f} / {metrics['top5']:.3f}",
        "species the model can name": f"{metrics['coverable_species']} (top-1 on those {metrics['top1_on_coverable']:.3f})",
        "ECE": f"{metrics['ece']:.3f}", "ms per image": metrics["ms_per_image"], "top confusions": worst,
        "metrics": out / "metrics.json", "plots": ", ".join(str(p) for p in pngs)})
    return metrics


def evaluate_detector(args) -> dict:
    """mAP50 / mAP50-95 with Ultralytics' validator (the detector file is a trusted, full-pickle checkpoint)."""
    from ultralytics import YOLO

    # --model defaults to the species .tflite; for a detector data set that means "the configured detector".
    model = args.model if Path(args.model).suffix == ".pt" else DEFAULT_DETECTOR
    out = (Path(args.out) / args.name).resolve()
    res = YOLO(str(model)).val(data=str(args.data), batch=args.batch, device=args.device or None,
                               project=str(out.parent), name=out.name, exist_ok=True, plots=False, verbose=False)
    metrics = {"model": str(model), "data": str(args.data), "mAP50": float(res.box.map50), "mAP50_95": float(res.box.map)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    summary("evaluate (detector)", {"mAP50": f"{metrics['mAP50']:.3f}", "mAP50-95": f"{metrics['mAP50_95']:.3f}",
                                    "metrics": out / "metrics.json"})
    return metrics
