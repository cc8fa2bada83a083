"""``train``: fine-tune a YOLOv8 species classifier seeded from the detector backbone on a folder-per-species
data set (held-out image per species), or a YOLOv8 detector on a YOLO data yaml (Ultralytics' trainer)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import DEFAULT_DETECTOR, pick_device, seed_everything, summary, write_json, write_labels

HELP = "fine-tune a YOLOv8 classifier (folder per species) or detector (YOLO data yaml)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path,
                   help="folder with one sub-folder per species (BIRDS-525 layout), a prepared train/val tree, "
                        "or a YOLO detection data .yaml")
    p.add_argument("--species", type=int, default=None, help="use only the first N species (sorted), for small runs")
    p.add_argument("--val-index", type=int, default=4, help="image number held out per species (default: 4.jpg)")
    p.add_argument("--model", default="yolov8n-cls.yaml",
                   help="Ultralytics model yaml for a classifier (default yolov8n-cls.yaml), or detector weights "
                        "for --data *.yaml")
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR,
                   help="detector checkpoint whose backbone seeds the classifier (official yolov8n.pt)")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:0 … (default: GPU if any)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default runs/)")
    p.add_argument("--name", default="train", help="sub-folder of --out for this run")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")


def run(args) -> dict:
    if str(args.data).endswith((".yaml", ".yml")):
        return train_detector(args)
    return train_classifier(args)


def prepare_split(args, out: Path):
    """The held-out split as symlinks under ``out/split`` (reused as-is on --resume)."""
    from .data import list_species, load_split_tree, make_split_tree, split_species

    split_root = out / "split"
    if args.resume and (split_root / "train").is_dir():
        return load_split_tree(split_root)
    if (Path(args.data) / "train").is_dir():  # already a train/val tree
        return load_split_tree(args.data)
    found = list_species(args.data, species=args.species)
    train, val = split_species(found, args.val_index)
    make_split_tree(split_root, train, val)
    return train, val, sorted(found)


def train_classifier(args) -> dict:
    from .data import loaders
    from .engine import fit
    from .models import count_params, save_classifier, seed_classifier

    seed_everything(args.seed)
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    train, val, names = prepare_split(args, out)
    tr, va = loaders(train, val, names, args.imgsz, args.batch, args.seed)
    device = pick_device(args.device)
    model = seed_classifier(len(names), args.detector, args.model)
    t0 = time.perf_counter()
    result = fit(model, tr, va, epochs=args.epochs, lr=args.lr, device=device, ckpt_path=out / "last_state.pt",
                 resume=args.resume, desc="train")
    last = result["history"][-1] if result["history"] else {}
    save_classifier(out / "model.pt", model, names, args.imgsz, extra={"seeded_from": str(args.detector)})
    write_labels(out, names)
    metrics = {"task": "classify", "species": len(names), "train_images": len(tr.dataset),
               "val_images": len(va.dataset), "imgsz": args.imgsz, "epochs": args.epochs,
               "params": count_params(model), "top1": last.get("top1"), "top5": last.get("top5"),
               "history": result["history"], "seconds": round(time.perf_counter() - t0, 1),
               "device": str(device)}
    write_json(out / "metrics.json", metrics)
    summary("train (classifier)", {
        "species": len(names), "train/val images": f"{len(tr.dataset)}/{len(va.dataset)}",
        "held-out top-1": f"{last.get('top1', float('nan')):.3f}", "held-out top-5": f"{last.get('top5', float('nan')):.3f}",
        "params": f"{metrics['params']:,}", "model": out / "model.pt", "labels": out / "labels.txt",
        "metrics": out / "metrics.json"})
    return metrics


def train_detector(args) -> dict:
    """Ultralytics' own detection trainer (resumable through its last.pt); writes labels + metrics beside."""
    from ultralytics import YOLO

    out = (Path(args.out) / args.name).resolve()
    model_arg = args.model if not args.model.endswith("-cls.yaml") else str(args.detector)
    last = out / "weights" / "last.pt"
    if args.resume and last.exists():
        yolo = YOLO(str(last))
        yolo.train(resume=True)
    else:
        yolo = YOLO(model_arg)
        yolo.train(data=str(args.data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device or None,
                   project=str(out.parent), name=out.name, exist_ok=True, seed=args.seed, workers=0, plots=False)
    trainer = yolo.trainer
    names = [trainer.data["names"][i] for i in sorted(trainer.data["names"])]
    write_labels(out, names)
    results = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    metrics = {"task": "detect", "classes": len(names), "imgsz": args.imgsz, "epochs": args.epochs,
               "metrics": results, "model": str(trainer.best)}
    write_json(out / "metrics.json", metrics)
    summary("train (detector)", {"classes": len(names), "mAP50": f"{results.get('metrics/mAP50(B)', float('nan')):.3f}",
                                 "model": trainer.best, "metrics": out / "metrics.json"})
    return metrics
