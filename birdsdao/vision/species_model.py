"""Species models behind one interface (``labels``, ``predict(images) -> probabilities``): a trained ``.pt``,
its ``.onnx`` export, or the iNat ``.tflite``; the server's SPECIES_MODEL and ``train evaluate`` share them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def eval_view(img, size: int) -> np.ndarray:
    """The one held-out view of a photo (short side to ``size``, centre crop), RGB uint8; training validates
    on it and every model here predicts on it, so a model scores an image identically wherever it is scored."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def model_input(views: np.ndarray) -> np.ndarray:
    """uint8 ``…×H×W×3`` views → float32 ``…×3×H×W`` in 0..1 (Ultralytics' classify convention: no mean/std)."""
    return np.ascontiguousarray(np.moveaxis(views, -1, -3), dtype=np.float32) / np.float32(255)


def eval_batch(images, size: int) -> np.ndarray:
    """PIL images → the float32 N×3×S×S batch a classifier scores."""
    return model_input(np.stack([eval_view(im, size) for im in images]))


def read_labels(path: Path) -> list[str]:
    """labels.txt (line i = output i) or labels.json (the same list)."""
    path = Path(path)
    if path.suffix == ".json":
        return list(json.loads(path.read_text(encoding="utf-8")))
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class TorchSpecies:
    kind = "torch"

    def __init__(self, path: Path, device: str = "cpu"):
        import torch

        from .checkpoint import load_classifier

        self.model, ckpt = load_classifier(path)
        self.device = torch.device(device or "cpu")
        self.model.to(self.device)
        self.labels, self.imgsz = list(ckpt["names"]), ckpt["imgsz"]

    def predict(self, images) -> np.ndarray:
        import torch

        from .checkpoint import logits_of

        x = torch.from_numpy(eval_batch(images, self.imgsz)).to(self.device)
        with torch.inference_mode():
            return torch.softmax(logits_of(self.model, x).float(), 1).cpu().numpy()


class OnnxSpecies:
    """Input: float32 N×3×S×S RGB in 0..1; output: probabilities (what ``export`` writes)."""

    kind = "onnx"

    def __init__(self, path: Path, labels: Path | None = None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.imgsz = inp.name, int(inp.shape[-1])
        self.labels = read_labels(labels or Path(path).with_name("labels.txt"))

    def predict(self, images) -> np.ndarray:
        return self.session.run(None, {self.input_name: eval_batch(images, self.imgsz)})[0]


class InatLiteRT:
    kind = "litert"
    LOGITS = "Logits/MatMul;Logits/BiasAdd"

    def __init__(self, path: Path, reference: Path):
        from .backbone import make_interpreter

        self.interp = make_interpreter(str(path), None, preserve=True)  # the logits tensor stays readable
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]
        self.imgsz = int(self.input["shape"][1])
        tensors = {d["name"]: d for d in self.interp.get_tensor_details()}
        self.logits = tensors[self.LOGITS]
        with open(reference, newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
        self.labels = [r["birds525_label"] or r["label"] for r in rows]
        if len(self.labels) != int(self.logits["shape"][-1]):
            raise ValueError(f"{reference} has {len(self.labels)} rows, the model {self.logits['shape'][-1]} outputs")

    def predict(self, images) -> np.ndarray:
        from .backbone import dequantize, softmax

        out = []
        for im in images:  # this graph has batch 1
            self.interp.set_tensor(self.input["index"], eval_view(im, self.imgsz)[None])
            self.interp.invoke()
            out.append(dequantize(self.interp.get_tensor(self.logits["index"]), self.logits))
        return softmax(np.concatenate(out))


def open_species_model(path: Path, labels: Path | None = None, device: str = "cpu", reference: Path | None = None):
    """The model for ``path`` by its suffix; ``reference`` is the iNat table a ``.tflite`` is named by."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        if reference is None:
            raise ValueError(f"{path}: a .tflite species model needs its reference table")
        return InatLiteRT(path, reference)
    if suffix == ".onnx":
        return OnnxSpecies(path, labels)
    if suffix == ".pt":
        return TorchSpecies(path, device)
    raise ValueError(f"{path}: unknown species model type (want .pt from train/prune, .onnx or .tflite)")
