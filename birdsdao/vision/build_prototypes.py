"""Build the few-shot prototype artifact from a folder of labelled bird photos (one sub-folder per
BIRDS-525 label): ``python -m birdsdao.vision.build_prototypes [--data DIR] [--out FILE]``.

Each photo and its mirror image count as two samples; a class prototype is their mean feature. The output
is a float16 ``.npz`` (no pickle) with ``labels``, ``vectors``, ``counts`` and the source models' sha256."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DEFAULTS, PROJECT_ROOT
from .backbone import ImageNetModel, INatBackbone, prototype_features
from .classifier import Prototypes
from .detector import sha256_of
from .imaging import to_model_input, to_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def load_models(config: dict = DEFAULTS) -> tuple[INatBackbone, ImageNetModel]:
    return INatBackbone(config["INAT_MODEL"], config.get("LITERT_THREADS")), ImageNetModel(config["IMAGENET_MODEL"], config.get("LITERT_THREADS"))


def folder_features(root: Path, inat: INatBackbone, imagenet: ImageNetModel, *, flip: bool = True):
    """→ (features (n, D), label per row, image file name per row, is_flipped per row)."""
    feats, labels, names, flipped = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        crops = np.stack([to_model_input(to_rgb(Image.open(p))) for p in files])
        views = [(crops, False)] + ([(np.ascontiguousarray(crops[:, :, ::-1]), True)] if flip else [])
        for batch, is_flip in views:
            feats.append(prototype_features(inat.embed(batch), imagenet.run(batch)[0]))
            labels += [folder.name] * len(files)
            names += [p.name for p in files]
            flipped += [is_flip] * len(files)
    return np.concatenate(feats), np.array(labels), np.array(names), np.array(flipped)


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
    inat, imagenet = load_models()
    feats, labels, _, _ = folder_features(Path(args.data), inat, imagenet)
    protos = class_means(feats, labels)
    out = Path(args.out)
    tmp = out.with_name(out.stem + ".tmp.npz")
    protos.save(tmp, inat_sha256=sha256_of(DEFAULTS["INAT_MODEL"]), imagenet_sha256=sha256_of(DEFAULTS["IMAGENET_MODEL"]))
    tmp.replace(out)
    print(f"{len(protos.keys)} prototypes from {len(labels)} samples → {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
