"""YOLOv8 classifiers for training: seed one from the detector backbone, save a ``birdsdao-cls/1`` checkpoint,
and measure size, FLOPs and latency (loading lives in ``birdsdao.vision.checkpoint``)."""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..vision.checkpoint import FORMAT, C2fSplit, load_classifier, logits_of, split_c2f  # noqa: F401 (re-exported)


def seed_classifier(nc: int, detector: Path | None, cfg: str = "yolov8n-cls.yaml") -> nn.Module:
    """A YOLOv8 classification model for ``nc`` classes, its backbone (every tensor whose name and shape match)
    copied from a detector checkpoint."""
    # Reading the detector .pt needs full unpickling: it is the official release file named by configuration,
    # never a user upload.
    from ultralytics import YOLO
    from ultralytics.nn.tasks import ClassificationModel

    yolo = YOLO(cfg, task="classify")
    if detector:
        yolo.load(str(detector))
    model = yolo.model
    ClassificationModel.reshape_outputs(model, nc)
    model.yaml["nc"] = nc
    return model


def save_classifier(path: Path, model: nn.Module, names: list[str], imgsz: int, extra: dict | None = None) -> None:
    from .common import atomic_torch_save

    model = _unwrap(model)
    ckpt = {
        "format": FORMAT,
        "yaml": _plain(model.yaml),
        "split_c2f": any(isinstance(m, C2fSplit) for m in model.modules()),
        "names": list(names),
        "imgsz": int(imgsz),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": _plain(extra or {}),
    }
    atomic_torch_save(ckpt, path)


def _unwrap(model):
    return getattr(model, "module", model)


def _plain(obj):
    """Only dicts/lists/str/numbers survive, so the checkpoint loads with weights_only=True."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, imgsz: int) -> float:
    """Forward GFLOPs (2 x multiply-adds, torch's own counter) for one RGB image of imgsz x imgsz."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(_unwrap(model)).cpu().eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        m(torch.zeros(1, 3, imgsz, imgsz))
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def cpu_latency_ms(models: list[nn.Module], imgsz: int, runs: int = 30, warmup: int = 5) -> list[float]:
    """Median ms per single image on CPU for each model, BatchNorm fused into convs as at serving time."""
    # Timed in alternation (a, b, a, b, …): a busy shared CPU slows them alike, so their ratio stays meaningful.
    ms = []
    for model in models:
        m = copy.deepcopy(_unwrap(model)).cpu().eval()
        ms.append(m.fuse(verbose=False) if hasattr(m, "fuse") else m)
    x = torch.rand(1, 3, imgsz, imgsz)
    for _ in range(warmup):
        for m in ms:
            m(x)
    times = [[] for _ in ms]
    for _ in range(runs):
        for m, t_list in zip(ms, times):
            t = time.perf_counter()
            m(x)
            t_list.append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]
