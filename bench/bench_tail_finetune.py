"""Would fine-tuning the iNat MobileNetV2's last layers on the support photos give a better few-shot
embedding than the frozen model the server uses?

    python bench/bench_tail_finetune.py [--epochs 2] [--lr 3e-4] [--folds 1,2,3,4] [--species N]

The LiteRT model is int8. Its ``expanded_conv_15``, ``expanded_conv_16`` and ``Conv_1`` are dequantised into
float torch layers (the pooled output is checked against the model's own ``AvgPool`` before training) and fed
with the model's ``expanded_conv_14`` output, so only these layers run in torch. Per birds525-dev fold they are
trained with a cosine classifier (additive margin 0.3, scale 30) on the 3 support photos per species x 4
views (photo, 86% zoom, their mirrors); then the server's prototype head (iNat + ImageNet embeddings, class
means of photo + mirror) is scored on the held-out photo with the original and the fine-tuned layers.
Measured (all 525 species, 2 epochs, 11 min on 2 cores): +0.8 / +0.4 / -1.3 / -0.6 points on folds 1-4
(mean -0.2), so the server keeps the frozen model.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

from birdsdao.config import DEFAULTS  # noqa: E402
from birdsdao.vision.backbone import ImageNetModel, dequantize, l2n, make_interpreter  # noqa: E402
from birdsdao.vision.imaging import to_model_input, to_rgb  # noqa: E402

FEED = "MobilenetV2/expanded_conv_14/add"
POOL = "AvgPool/AvgPool"


def views(path: Path) -> list[np.ndarray]:
    from PIL import Image

    img = to_rgb(Image.open(path))
    w, h = img.size
    out = [to_model_input(img), to_model_input(img.crop((int(w * .07), int(h * .07), int(w * .93), int(h * .93))))]
    return out + [np.ascontiguousarray(v[:, ::-1]) for v in out]


def tflite_tensors(interp) -> dict[str, np.ndarray]:
    """The float weights and biases of the layers after FEED, keyed like Tail's parameters."""
    want = {}
    for block in ("15", "16"):
        for part, kind in (("expand", "Conv2D_Fold"), ("depthwise", "depthwise_Fold"), ("project", "Conv2D_Fold")):
            want[f"b{block}.{part}.w"] = f"MobilenetV2/expanded_conv_{block}/{part}/{kind}"
            want[f"b{block}.{part}.b"] = f"MobilenetV2/expanded_conv_{block}/{part}/"
    want["conv1.w"], want["conv1.b"] = "MobilenetV2/Conv_1/Conv2D_Fold", "MobilenetV2/Conv_1/"
    out = {}
    for d in interp.get_tensor_details():
        for key, prefix in want.items():
            # Names join several ops with ';' and neighbours share prefixes: match the start of the name only.
            is_weight = key.endswith(".w") and d["dtype"] == np.uint8 and len(d["shape"]) == 4
            is_bias = key.endswith(".b") and d["dtype"] == np.int32 and d["name"].endswith("BatchNorm_Fold/bias")
            if (is_weight or is_bias) and d["name"].startswith(prefix):
                out[key] = dequantize(interp.get_tensor(d["index"]), d)
    missing = sorted(set(want) - set(out))
    if missing:
        raise SystemExit(f"tensors not found in the iNat model: {missing}")
    return out


def make_tail(tensors):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, hidden, cout):
            super().__init__()
            self.expand = nn.Conv2d(cin, hidden, 1)
            self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)  # stride 1: SAME = symmetric
            self.project = nn.Conv2d(hidden, cout, 1)
            self.residual = cin == cout

        def forward(self, x):
            h = self.project(F.relu6(self.depthwise(F.relu6(self.expand(x)))))
            return x + h if self.residual else h

    class Tail(nn.Module):
        def __init__(self):
            super().__init__()
            self.b15, self.b16, self.conv1 = Block(160, 960, 160), Block(160, 960, 320), nn.Conv2d(320, 1280, 1)

        def forward(self, x):
            return F.relu6(self.conv1(self.b16(self.b15(x)))).mean((2, 3))

    tail = Tail()
    with torch.no_grad():
        for name, param in tail.named_parameters():
            key = name.replace("weight", "w").replace("bias", "b")
            value = tensors[key]
            if key.endswith(".w"):  # TFLite OHWI (depthwise: 1HWC) → torch OIHW (depthwise: C1HW)
                value = value.transpose(3, 0, 1, 2) if "depthwise" in key else value.transpose(0, 3, 1, 2)
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return tail


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--folds", default="1,2,3,4")
    parser.add_argument("--species", type=int, default=0, help="first N species only (0: all 525)")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    root = SHARED / "datasets" / "birds525-dev"
    folders = sorted(d for d in root.iterdir() if d.is_dir())[: args.species or None]
    files = [p for d in folders for p in sorted(d.iterdir())]
    classes = {d.name: i for i, d in enumerate(folders)}
    y = np.array([classes[p.parent.name] for p in files])
    fold = np.array([int(p.stem) for p in files])

    interp = make_interpreter(DEFAULTS["INAT_MODEL"], None, preserve=True)
    interp.allocate_tensors()
    details = {d["name"]: d for d in interp.get_tensor_details()}
    feed, pool = details[FEED], details[POOL]
    imagenet = ImageNetModel(DEFAULTS["IMAGENET_MODEL"])
    start = time.perf_counter()
    mids, pooled, imn = [], [], []
    for path in files:
        vs = views(path)
        for v in vs:
            interp.set_tensor(interp.get_input_details()[0]["index"], v[None])
            interp.invoke()
            mids.append(dequantize(interp.get_tensor(feed["index"])[0], feed))
            pooled.append(dequantize(interp.get_tensor(pool["index"]).reshape(-1), pool))
        imn.append(imagenet.run(np.stack([vs[0], vs[2]]))[0])
    mid = torch.from_numpy(np.stack(mids)).permute(0, 3, 1, 2).reshape(len(files), 4, 160, 7, 7).contiguous()
    pooled = np.stack(pooled).reshape(len(files), 4, -1)
    imn = np.stack(imn)  # (n, 2, 1280): photo, mirror
    print(f"LiteRT features of {len(files)} photos x 4 views in {time.perf_counter() - start:.0f}s")

    base = make_tail(tflite_tensors(interp)).eval()

    def embed(tail, x):
        with torch.no_grad():
            return torch.cat([tail(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()

    check = embed(base, mid[:64, 0])
    cos = (l2n(check) * l2n(pooled[:64, 0])).sum(1)
    print(f"float tail vs the model's AvgPool: min cosine {cos.min():.4f} over {len(cos)} photos")
    if cos.min() < 0.99:
        raise SystemExit("the float conversion does not reproduce the model; not training on it")

    def prototype_top1(tail, train, test):
        feats = [l2n(np.concatenate([l2n(embed(tail, mid[:, v])), l2n(imn[:, i])], 1)) for i, v in enumerate((0, 2))]
        support = np.concatenate([feats[0][train], feats[1][train]])
        owner = np.concatenate([y[train], y[train]])
        means = np.zeros((len(classes), support.shape[1]))
        np.add.at(means, owner, support)
        return float(((feats[0][test] @ l2n(means).T).argmax(1) == y[test]).mean())

    deltas = []
    for f in (int(x) for x in args.folds.split(",")):
        train, test = fold != f, fold == f
        before = prototype_top1(base, train, test)
        tail = copy.deepcopy(base).train()
        x = mid[train].reshape(-1, 160, 7, 7)
        labels = torch.from_numpy(np.repeat(y[train], 4))
        init = np.zeros((len(classes), 1280))
        np.add.at(init, labels.numpy(), l2n(embed(base, x)))
        weights = torch.nn.Parameter(torch.from_numpy(l2n(init)).float())  # imprinted from the class means
        opt = torch.optim.AdamW([{"params": tail.parameters(), "lr": args.lr, "weight_decay": 0},
                                 {"params": [weights], "lr": args.lr * 10, "weight_decay": 0}])
        for _ in range(args.epochs):
            for idx in torch.randperm(len(x)).split(64):
                cos_t = F.normalize(tail(x[idx]), dim=1) @ F.normalize(weights, dim=1).T
                loss = F.cross_entropy(30.0 * (cos_t - 0.3 * F.one_hot(labels[idx], len(classes))), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        after = prototype_top1(tail.eval(), train, test)
        deltas.append(after - before)
        print(f"fold test={f}: prototype top-1 frozen {before:.3f} → fine-tuned {after:.3f} ({100 * (after - before):+.1f} points)")
    print(f"mean change {100 * np.mean(deltas):+.2f} points over {len(deltas)} folds ({len(classes)} species)")


if __name__ == "__main__":
    main()
