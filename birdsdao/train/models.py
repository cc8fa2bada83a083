"""YOLOv8 classifiers as plain torch modules: seed one from the detector backbone, make C2f prunable,
save/load without unpickling code (``torch.load(weights_only=True)``), and measure size, FLOPs and latency.

Checkpoint format (``birdsdao-cls/1``): a dict of tensors and plain values only — the Ultralytics model
yaml, ``split_c2f`` (whether C2f blocks were split for pruning), class names, image size and the
``state_dict``. Loading rebuilds the architecture from the yaml and resizes every conv/BN/linear to the
saved shapes, so a pruned model needs no pickled classes.
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

FORMAT = "birdsdao-cls/1"


def seed_classifier(nc: int, detector: Path | None, cfg: str = "yolov8n-cls.yaml") -> nn.Module:
    """A YOLOv8 classification model for ``nc`` classes, its backbone copied from a detector checkpoint.

    Ultralytics' own ``load`` transfers every tensor whose name and shape match (layers 0–8 of yolov8n).
    Reading the detector ``.pt`` needs full unpickling: it is the official release file named by
    configuration, never a user upload.
    """
    from ultralytics import YOLO
    from ultralytics.nn.tasks import ClassificationModel

    yolo = YOLO(cfg, task="classify")
    if detector:
        yolo.load(str(detector))
    model = yolo.model
    ClassificationModel.reshape_outputs(model, nc)
    model.yaml["nc"] = nc
    return model


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Ultralytics' Classify head returns logits in train mode and (probs, logits) in eval mode."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        return out[1]
    return out


class C2fSplit(nn.Module):
    """C2f whose first 1x1 conv is two convs (``cv0``, ``cv1``) instead of one conv chunked in two, so that
    each half can lose channels independently (the ``chunk(2)`` in C2f needs equal halves)."""

    def __init__(self, c2f: nn.Module):
        super().__init__()
        c = c2f.c
        self.cv0 = _slice_conv_out(c2f.cv1, slice(0, c))
        self.cv1 = _slice_conv_out(c2f.cv1, slice(c, 2 * c))
        self.cv2 = c2f.cv2
        self.m = c2f.m
        for attr in ("i", "f", "type", "np"):  # Ultralytics' graph bookkeeping on each layer
            if hasattr(c2f, attr):
                setattr(self, attr, getattr(c2f, attr))

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _slice_conv_out(conv_block: nn.Module, sl: slice) -> nn.Module:
    """Copy of an Ultralytics ``Conv`` (conv + bn + act) keeping output channels ``sl``."""
    new = copy.deepcopy(conv_block)
    conv, bn = new.conv, new.bn
    conv.weight = nn.Parameter(conv.weight.data[sl].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[sl].clone())
    conv.out_channels = conv.weight.shape[0]
    bn.weight = nn.Parameter(bn.weight.data[sl].clone())
    bn.bias = nn.Parameter(bn.bias.data[sl].clone())
    bn.running_mean = bn.running_mean[sl].clone()
    bn.running_var = bn.running_var[sl].clone()
    bn.num_features = bn.weight.shape[0]
    return new


def split_c2f(model: nn.Module) -> nn.Module:
    """Replace every C2f in ``model`` by an equivalent C2fSplit (same outputs, prunable halves)."""
    from ultralytics.nn.modules.block import C2f

    for name, child in list(model.named_children()):
        if type(child) is C2f:
            setattr(model, name, C2fSplit(child))
        else:
            split_c2f(child)
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


def load_classifier(path: Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved classifier (pruned or not); ``weights_only=True`` so the file cannot run code."""
    from ultralytics.nn.tasks import ClassificationModel

    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SystemExit(f"{path}: not a {FORMAT} checkpoint (train/prune write those)")
    model = ClassificationModel(copy.deepcopy(ckpt["yaml"]), nc=len(ckpt["names"]), verbose=False)
    if ckpt["split_c2f"]:
        split_c2f(model)
    _resize_to(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.names = dict(enumerate(ckpt["names"]))
    return model.eval(), ckpt


def _resize_to(model: nn.Module, sd: dict) -> None:
    """Make every Conv2d / BatchNorm2d / Linear the shape its saved weight has (pruning changed them)."""
    for name, mod in list(model.named_modules()):
        w = sd.get(f"{name}.weight")
        if w is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            continue
        if tuple(mod.weight.shape) == tuple(w.shape):
            continue
        if isinstance(mod, nn.Conv2d):
            new = nn.Conv2d(w.shape[1] * mod.groups, w.shape[0], mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups, bias=mod.bias is not None)
        elif isinstance(mod, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w.shape[0], eps=mod.eps, momentum=mod.momentum)
        elif isinstance(mod, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0], bias=mod.bias is not None)
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


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
    """Median ms per single image on CPU for each model, BatchNorm fused into convs as at serving time.

    The models are timed in alternation (a, b, a, b, …) so that a busy shared CPU slows them alike and
    their ratio stays meaningful even when the absolute numbers do not."""
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
