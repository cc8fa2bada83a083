"""``export``: a trained or pruned classifier (``model.pt`` from train/prune) to ONNX, checked against the
torch model with onnxruntime on random and real-looking inputs. Input ``images``: float32 N×3×S×S RGB in
0..1 (short side resized to S, centre crop); output ``probs``: N×classes. ``labels.txt`` is written beside."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from .common import summary, write_json, write_labels

HELP = "export a trained/pruned classifier to ONNX (onnxruntime-checked), labels.txt beside it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model.pt written by train or prune")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 12)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |torch − onnxruntime| probability")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--name", default="export")


def run(args) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from .models import load_classifier, logits_of

    if args.opset < 12:
        raise ValueError("--opset must be >= 12")
    model, ckpt = load_classifier(args.model)
    imgsz, names = ckpt["imgsz"], ckpt["names"]
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"

    class Probs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch.softmax(logits_of(self.m, x), 1)

    wrapped = Probs(model).eval()
    x = torch.rand(2, 3, imgsz, imgsz)
    tmp = onnx_path.with_name(".model.onnx.tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter (as Ultralytics uses) needs no onnxscript; torch flags it as legacy.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapped, (x,), str(tmp), opset_version=args.opset, input_names=["images"],
                          output_names=["probs"], dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}},
                          dynamo=False)
    tmp.replace(onnx_path)
    write_labels(out, names)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    check = torch.rand(3, 3, imgsz, imgsz)
    with torch.inference_mode():
        ref = wrapped(check).numpy()
    got = session.run(None, {"images": check.numpy()})[0]
    diff = float(np.abs(ref - got).max())
    same_top1 = bool((ref.argmax(1) == got.argmax(1)).all())
    if diff > args.atol or not same_top1:
        raise ValueError(f"onnxruntime differs from torch: max |Δp| {diff:.2e} (allowed {args.atol:.0e})")
    info = {"onnx": str(onnx_path), "labels": str(out / "labels.txt"), "imgsz": imgsz, "classes": len(names),
            "opset": args.opset, "max_abs_diff": diff, "bytes": onnx_path.stat().st_size}
    write_json(out / "export.json", info)
    summary("export", {"onnx": onnx_path, "labels": out / "labels.txt", "input": f"images float32 N×3×{imgsz}×{imgsz} (0..1 RGB)",
                       "output": f"probs N×{len(names)}", "max |torch − onnxruntime|": f"{diff:.2e}",
                       "size": f"{info['bytes'] / 1e6:.2f} MB",
                       "use it in the server": f"BIRDSDAO_SPECIES_MODEL={onnx_path} (labels.txt is read from beside it)"})
    return info
