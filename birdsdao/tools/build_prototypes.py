"""``python -m birdsdao.tools.build_prototypes [--data DIR] [--out FILE]``: few-shot class prototypes (mean
features of each label's photos and their mirrors) as a float16 ``.npz``, no pickle."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DEFAULTS, PROJECT_ROOT
from ..vision.backbone import ImageNetModel, INatBackbone, load_backbones, prototype_features
from ..vision.classifier import Prototypes
from ..vision.detector import sha256_of
from ..vision.imaging import to_model_input, to_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def folder_features(root: Path, inat: INatBackbone, imagenet: ImageNetModel, *, flip: bool = True):
    """→ (features (n, D), label per row); with ``flip`` each photo gives two rows, itself and its mirror."""
    feats, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        crops = np.stack([to_model_input(to_rgb(Image.open(p))) for p in files])
        views = [crops] + ([np.ascontiguousarray(crops[:, :, ::-1])] if flip else [])
        for batch in views:
            feats.append(prototype_features(inat.embed(batch), imagenet.run(batch)[0]))
            labels += [folder.name] * len(files)
    return np.concatenate(feats), np.array(labels)


def class_means(feats: np.ndarray, labels: np.ndarray) -> Prototypes:
    keys = sorted(set(labels.tolist()))
    vectors = np.stack([feats[labels == k].mean(0) for k in keys])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    counts = np.array([(labels == k).sum() for k in keys])
    return Prototypes(tuple(keys), vectors.astype(np.float32), counts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "datasets" / "birds525-dev"))
    parser.add_argument("--out", default=DEFAULTS["PROTOTYPES"])
    args = parser.parse_args(argv)
    inat, imagenet = load_backbones(DEFAULTS)
    feats, labels = folder_features(Path(args.data), inat, imagenet)
    protos = class_means(feats, labels)
    out = Path(args.out)
    tmp = out.with_name(out.stem + ".tmp.npz")
    protos.save(tmp, inat_sha256=sha256_of(DEFAULTS["INAT_MODEL"]), imagenet_sha256=sha256_of(DEFAULTS["IMAGENET_MODEL"]))
    tmp.replace(out)
    print(f"{len(protos.keys)} prototypes from {len(labels)} samples → {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
