"""``prune``: network slimming — L1 on the BatchNorm scales, one global threshold (``--ratio``), physical channel
removal, fine-tuning; reports size, speed and held-out accuracy before and after (see README.md)."""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from .common import pick_device, seed_everything, summary, write_json, write_labels

HELP = "sparsity-train (L1 on BN scales), remove low-|γ| channels, fine-tune; report size/speed/accuracy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model.pt written by `train`")
    p.add_argument("--data", type=Path, default=None,
                   help="train/val tree (default: the split/ folder beside --model, i.e. the parent's own split)")
    p.add_argument("--ratio", type=float, default=0.4, help="fraction of prunable channels removed (global)")
    p.add_argument("--max-layer-ratio", type=float, default=0.8, help="never remove more than this from one layer")
    p.add_argument("--sparsity", type=float, default=1e-3, help="λ of the L1 penalty λ·Σ|γ|")
    p.add_argument("--sparse-epochs", type=int, default=2)
    p.add_argument("--bn-lr-scale", type=float, default=10.0,
                   help="learning-rate multiplier for BN scales in the sparsity phase (lets the L1 pull act in few epochs)")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the sparsity phase (warm-up, cosine)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="peak learning rate of the fine-tuning phase (warm-up, cosine to 0); None = the same as --lr")
    p.add_argument("--distill", type=float, default=0.0, metavar="T",
                   help="fine-tune with knowledge distillation from the unpruned parent at temperature T "
                        "(KL on logits softened by T, Hinton et al. 2015); 0 = hard labels only, the original recipe; "
                        "4 is the measured setting (see the description above)")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="with --distill: loss = (1-w)·cross-entropy + w·T²·KL(parent ‖ pruned)")
    p.add_argument("--control", action="store_true",
                   help="also put an unpruned copy of the parent through the same two phases without the L1 "
                        "penalty and without pruning, and report its accuracy: the extra epochs' own effect")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--name", default="prune")
    p.add_argument("--resume", action="store_true", help="resume the sparsity or fine-tuning phase")


def prune_by_bn_scale(model, imgsz: int, ratio: float, max_layer_ratio: float = 0.8) -> dict:
    """Remove the ``ratio`` of channels whose |γ| (averaged over channels tied together by residuals) is
    smallest across the whole network; the class layer keeps its outputs. Returns channel counts."""
    import torch
    import torch_pruning as tp

    from .models import split_c2f

    split_c2f(model)
    model.cpu().eval()
    before = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=torch.zeros(1, 3, imgsz, imgsz),
        importance=tp.importance.BNScaleImportance(normalizer=None),  # raw |γ|: one global threshold
        global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=max_layer_ratio,
        ignored_layers=[model.model[-1].linear],
        output_transform=lambda out: out[1] if isinstance(out, (tuple, list)) else out)
    pruner.step()
    after = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return {"bn_channels_before": before, "bn_channels_after": after}


def profile(model, loader, device, imgsz) -> tuple[dict, object]:
    """Size and held-out accuracy, plus the per-image top-1 hits (for the paired comparison)."""
    from .engine import predict_logits, topk_accuracy
    from .models import count_params, gflops

    logits, ys = predict_logits(model.to(device), loader, device)
    hits = logits.argmax(1) == ys
    return {"params": count_params(model), "gflops": round(gflops(model, imgsz), 4),
            "top1": topk_accuracy(logits, ys, 1), "top5": topk_accuracy(logits, ys, 5)}, hits


def paired_delta_ci(hits_a, hits_b, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of top-1(b) − top-1(a) in points, resampling the same images for both models
    (the paired spread is much narrower than each accuracy's own on a few hundred images)."""
    import torch

    diff = hits_b.float() - hits_a.float()
    if len(diff) == 0:
        return [float("nan"), float("nan")]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (n_boot, len(diff)), generator=g)
    means = 100 * diff[idx].mean(1)
    return [round(float(means.quantile(0.025)), 2), round(float(means.quantile(0.975)), 2)]


def run(args) -> dict:
    import torch

    from .data import load_split_tree, loaders
    from .engine import fit
    from .models import cpu_latency_ms, load_classifier, save_classifier

    seed_everything(args.seed)
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    parent, ckpt = load_classifier(args.model)
    names, imgsz = ckpt["names"], ckpt["imgsz"]
    data = args.data or Path(args.model).parent / "split"
    train, val, found = load_split_tree(data)
    if sorted(found) != sorted(names):
        raise ValueError(f"{data} has other species than {args.model} was trained on")
    tr, va = loaders(train, val, names, imgsz, args.batch, args.seed)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    parent_profile, parent_hits = profile(parent, va, device, imgsz)
    report = {"parent": parent_profile}
    print(f"parent: {report['parent']}", flush=True)
    finetune_kw = dict(epochs=args.finetune_epochs, lr=args.finetune_lr or args.lr, device=device, resume=args.resume)
    if args.distill:
        finetune_kw.update(teacher=copy.deepcopy(parent), distill_temperature=args.distill,
                           distill_weight=args.distill_weight)

    model = copy.deepcopy(parent)
    sparse = fit(model, tr, va, epochs=args.sparse_epochs, lr=args.lr, device=device, sparsity=args.sparsity,
                 bn_lr_scale=args.bn_lr_scale, ckpt_path=out / "sparse_state.pt", resume=args.resume, desc="sparsity")
    report["sparse"], _ = profile(model, va, device, imgsz)
    report["sparse"]["history"] = sparse["history"]
    gammas = torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    report["gamma_quantiles_after_sparsity"] = {q: round(float(gammas.quantile(q)), 4) for q in (0.1, 0.3, 0.5, 0.9)}
    print(f"|γ| quantiles after sparsity training: {report['gamma_quantiles_after_sparsity']}", flush=True)
    report["channels"] = prune_by_bn_scale(model, imgsz, args.ratio, args.max_layer_ratio)
    report["pruned"], _ = profile(model, va, device, imgsz)
    print(f"pruned, before fine-tuning: {report['pruned']}", flush=True)
    tuned = fit(model, tr, va, ckpt_path=out / "finetune_state.pt", desc="fine-tune", **finetune_kw)
    report["finetuned"], tuned_hits = profile(model, va, device, imgsz)
    report["finetuned"]["history"] = tuned["history"]
    save_classifier(out / "model.pt", model, names, imgsz,
                    extra={"pruned_from": str(args.model), "ratio": args.ratio, "sparsity": args.sparsity,
                           "distill": args.distill})
    if args.control:
        # Same schedule, same data order, no L1 pull and nothing removed: what the extra epochs alone give.
        ctrl = copy.deepcopy(parent)
        fit(ctrl, tr, va, epochs=args.sparse_epochs, lr=args.lr, device=device, bn_lr_scale=args.bn_lr_scale,
            ckpt_path=out / "control_sparse_state.pt", resume=args.resume, desc="control 1")
        fit(ctrl, tr, va, ckpt_path=out / "control_finetune_state.pt", desc="control 2", **finetune_kw)
        report["control"], control_hits = profile(ctrl, va, device, imgsz)
    write_labels(out, names)
    p, f = report["parent"], report["finetuned"]
    p["cpu_latency_ms"], f["cpu_latency_ms"] = (round(v, 2) for v in cpu_latency_ms([parent, model], imgsz, args.latency_runs))
    report["ratios"] = {"params": f["params"] / p["params"], "gflops": f["gflops"] / p["gflops"],
                        "cpu_latency": f["cpu_latency_ms"] / p["cpu_latency_ms"], "top1_delta_points": 100 * (f["top1"] - p["top1"]),
                        "top1_delta_ci95": paired_delta_ci(parent_hits, tuned_hits, seed=args.seed)}
    if args.control:
        report["ratios"]["top1_delta_vs_control_points"] = 100 * (f["top1"] - report["control"]["top1"])
        report["ratios"]["top1_delta_vs_control_ci95"] = paired_delta_ci(control_hits, tuned_hits, seed=args.seed)
    report.update(species=len(names), val_images=len(va.dataset), imgsz=imgsz, ratio=args.ratio,
                  sparsity=args.sparsity, distill=args.distill, distill_weight=args.distill_weight, seconds=round(time.perf_counter() - t0, 1))
    write_json(out / "metrics.json", report)
    summary("prune", {
        "params": f"{p['params']:,} -> {f['params']:,} ({100 * (1 - report['ratios']['params']):.1f}% fewer)",
        "GFLOPs": f"{p['gflops']:.4f} -> {f['gflops']:.4f}",
        "CPU latency (ms, 1 image)": f"{p['cpu_latency_ms']:.2f} -> {f['cpu_latency_ms']:.2f} "
                                    f"(x{report['ratios']['cpu_latency']:.2f})",
        "held-out top-1": f"{p['top1']:.3f} -> pruned {report['pruned']['top1']:.3f} -> fine-tuned {f['top1']:.3f}",
        "top-1 change (points)": f"{report['ratios']['top1_delta_points']:+.1f} "
                                 f"(paired 95% CI {report['ratios']['top1_delta_ci95']})",
        "held-out top-5": f"{p['top5']:.3f} -> {f['top5']:.3f}",
        **({"unpruned control top-1": f"{report['control']['top1']:.3f} (same extra epochs; pruned "
                                      f"{report['ratios']['top1_delta_vs_control_points']:+.1f} points, paired 95% CI "
                                      f"{report['ratios']['top1_delta_vs_control_ci95']})"} if args.control else {}),
        "model": out / "model.pt", "metrics": out / "metrics.json"})
    return report
