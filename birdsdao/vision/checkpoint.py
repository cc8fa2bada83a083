"""Load a ``birdsdao-cls/1`` species checkpoint (tensors and plain values only, ``weights_only=True``), pruned or not."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

FORMAT = "birdsdao-cls/1"


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


def load_classifier(path: Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved classifier (pruned or not); ``weights_only=True`` so the file cannot run code."""
    from ultralytics.nn.tasks import ClassificationModel

    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (train/prune write those)")
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
