"""The one training loop behind ``train`` and ``prune``: AdamW + cosine decay, optional L1 on BatchNorm scales
and distillation, a resumable checkpoint and held-out top-1/top-5 every epoch."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .common import atomic_torch_save
from .models import logits_of


def bn_l1_subgradient(model: nn.Module, lam: float) -> None:
    """Network slimming (Liu et al. 2017): add d/dγ of lam·Σ|γ| to every BatchNorm scale's gradient."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.weight.grad is not None:
            m.weight.grad.add_(lam * torch.sign(m.weight.detach()))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(teacher ‖ student) on logits softened by ``temperature``, times T² so its
    gradient keeps the scale of the hard-label loss whatever T is."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


@torch.inference_mode()
def predict_logits(model: nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        outs.append(logits_of(model, x.to(device)).float().cpu())
        ys.append(torch.as_tensor(y))
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(ys)


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == y[:, None]).any(1)
    return int(hits.sum()) / len(y)  # exact: 27/30 reads 0.9, not float32's 0.8999999761581421


def fit(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float, device, ckpt_path: Path,
        weight_decay: float = 5e-4, sparsity: float = 0.0, label_smoothing: float = 0.1,
        resume: bool = False, desc: str = "train", bn_lr_scale: float = 1.0,
        teacher: nn.Module | None = None, distill_temperature: float = 4.0, distill_weight: float = 0.5,
        on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` in place and return the per-epoch history; with a ``teacher`` (frozen) the loss is
    ``(1 - distill_weight) · CE + distill_weight · distillation_loss`` on the same augmented batch."""
    # The last epoch's weights are kept: picking the best epoch by the held-out split would tune on the test
    # images (there is no third split here).
    model.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    # BatchNorm scales and biases get no weight decay (the sparsity penalty, when on, is the only pull on γ).
    # Adam moves each weight by about lr per step whatever the gradient's size, so the L1 pull can only
    # drive γ to zero within a short sparsity phase if γ gets a larger step (bn_lr_scale).
    gammas = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    decay, no_decay, bn_gamma = [], [], []
    for p in model.parameters():
        p.requires_grad_(True)
        (bn_gamma if id(p) in gammas else no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0},
                             {"params": bn_gamma, "weight_decay": 0.0, "lr": lr * bn_lr_scale}], lr=lr)
    steps = max(1, epochs * len(train_loader))
    warm = min(len(train_loader), steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    state = {"epoch": 0, "history": []}
    if resume and Path(ckpt_path).exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state.update(epoch=ck["epoch"], history=ck["history"])
        print(f"resumed {desc} at epoch {state['epoch']}/{epochs}", flush=True)
    for epoch in range(state["epoch"], epochs):
        model.train()
        total, kd_total, n = 0.0, 0.0, 0
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False)
        for x, y in bar:
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits = logits_of(model, x)
            loss = loss_fn(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    target = logits_of(teacher, x)
                kd = distillation_loss(logits, target, distill_temperature)
                loss = (1 - distill_weight) * loss + distill_weight * kd
                kd_total += kd.item() * len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sparsity:
                bn_l1_subgradient(model, sparsity)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{total / n:.3f}")
        logits, ys = predict_logits(model, val_loader, device)
        row = {"epoch": epoch + 1, "train_loss": total / max(n, 1),
               **({"train_kd": kd_total / max(n, 1)} if teacher is not None else {}),
               "val_loss": loss_fn(logits, ys).item() if len(ys) else float("nan"),
               "top1": topk_accuracy(logits, ys, 1), "top5": topk_accuracy(logits, ys, 5)}
        state["history"].append(row)
        print(f"{desc} epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.3f} "
              f"val top-1 {row['top1']:.3f} top-5 {row['top5']:.3f}", flush=True)
        state["epoch"] = epoch + 1
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "epoch": state["epoch"], "history": state["history"]}, ckpt_path)
        if on_epoch:
            on_epoch(row)
    return {"history": state["history"]}
