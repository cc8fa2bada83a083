"""Folder-per-species data sets (BIRDS-525 layout: ``<root>/<LABEL>/<n>.jpg``): species selection, the
held-out split (as an Ultralytics-compatible ``train/ val/`` tree of symlinks), in-memory torch datasets and
their loaders (the held-out view of a photo, ``eval_view``, lives with the models in ``vision.species_model``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..vision.species_model import eval_batch, eval_view, model_input  # noqa: F401 (shared with the server)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def list_species(root: Path, species: int | None = None, names: list[str] | None = None) -> dict[str, list[Path]]:
    """``{label: [image paths in natural order]}``; ``species`` keeps the first N labels (sorted),
    ``names`` an explicit list."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data set folder not found: {root}")
    found = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted((f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if imgs:
            found[d.name] = imgs
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(f"species not in {root}: {', '.join(missing[:5])}")
        found = {n: found[n] for n in names}
    if species:
        found = dict(list(found.items())[:species])
    if not found:
        raise ValueError(f"no species folders with images in {root}")
    return found


def split_species(found: dict[str, list[Path]], val_index: int = 4) -> tuple[dict, dict]:
    """Hold out the image whose number is ``val_index`` (``4.jpg``; else the last image) of each species;
    a species with a single image stays in train only."""
    train, val = {}, {}
    for label, imgs in found.items():
        held = [p for p in imgs if p.stem == str(val_index)] or (imgs[-1:] if len(imgs) > 1 else [])
        val[label] = held
        train[label] = [p for p in imgs if p not in held]
    return train, val


def make_split_tree(out: Path, train: dict, val: dict) -> Path:
    """``out/{train,val}/<label>/<file>`` as symlinks (what Ultralytics' classify trainer reads); returns the root."""
    root = Path(out)
    for part, table in (("train", train), ("val", val)):
        for label, imgs in table.items():
            d = root / part / label
            d.mkdir(parents=True, exist_ok=True)
            for img in imgs:
                link = d / img.name
                if not link.exists():
                    os.symlink(Path(img).resolve(), link)
    return root


def load_split_tree(root: Path) -> tuple[dict, dict, list[str]]:
    """Read back a ``train/ val/`` tree (e.g. on --resume, or a user's own)."""
    train = list_species(Path(root) / "train")
    val_dir = Path(root) / "val"
    val = list_species(val_dir) if val_dir.is_dir() else {}
    names = sorted(set(train) | set(val))
    return train, val, names


def train_transforms(imgsz: int):
    """The augmentations of a training image (a PIL image → float tensor 3×S×S in 0..1)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(imgsz, scale=(0.5, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.02),
        T.ToTensor(),
    ])


class SpeciesDataset:
    """(image tensor, class index) pairs, decoded once and kept small in memory, since the few-shot sets here
    are tiny and decoding dominated each epoch on 2 CPU cores. A training image is kept as a thumbnail with
    room for the random crops; a held-out image as its ``eval_view``, the exact array a predictor sees."""

    def __init__(self, table: dict[str, list[Path]], names: list[str], imgsz: int, train: bool):
        from PIL import Image

        index = {n: i for i, n in enumerate(names)}
        keep = int(imgsz * 1.15) + 1  # room for the random crops
        self.items = []
        for label, imgs in table.items():
            for p in imgs:
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if not train:
                        self.items.append((eval_view(im, imgsz), index[label]))
                        continue
                    if max(im.size) > 2 * keep:
                        im.thumbnail((2 * keep, 2 * keep))
                    self.items.append((im.copy(), index[label]))
        self.tf = train_transforms(imgsz) if train else _view_tensor

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        im, y = self.items[i]
        return self.tf(im), y


def _view_tensor(view: np.ndarray):
    import torch

    return torch.from_numpy(model_input(view))


def loaders(train: dict, val: dict, names: list[str], imgsz: int, batch: int, seed: int = 0):
    """Shuffled training and ordered held-out DataLoaders (what ``train`` and ``prune`` fit on)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    ds = SpeciesDataset(train, names, imgsz, train=True)
    # A final batch of one image breaks BatchNorm on small inputs (1x1 maps): drop the ragged tail.
    tr = DataLoader(ds, batch_size=batch, shuffle=True, generator=g, drop_last=len(ds) > batch)
    va = DataLoader(SpeciesDataset(val, names, imgsz, train=False), batch_size=batch)
    return tr, va
