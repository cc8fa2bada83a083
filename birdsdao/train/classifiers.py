"""Every species model the server can use, behind one interface for ``evaluate``:
``labels`` (one per output; several outputs may share a label) and ``predict(images) -> probabilities``.

- ``TorchSpecies``: a ``birdsdao-cls/1`` checkpoint from ``train``/``prune`` (loaded weights-only);
- ``OnnxSpecies``: an ONNX export of one (``export``), labels from ``labels.txt`` beside it;
- ``InatLiteRT``: the default MobileNetV2 iNat bird model. Its outputs are named by the BIRDS-525 label of
  the same species where the reference table has one, else by the iNat label, so it can be scored on a
  BIRDS-525 folder set without the species catalogue. Confidences come from a softmax over its logits
  (the quantized softmax output is mostly ties).

Each sees a photo through ``data.eval_view``, the view of the held-out split in ``train``/``prune``, so
``evaluate`` and the server score an image exactly as training validated on it.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .common import SHARED, read_labels
from .data import eval_batch, eval_view

INAT_REFERENCE = SHARED / "data" / "inat_bird_species_reference.csv"


class TorchSpecies:
    kind = "torch"

    def __init__(self, path: Path, device: str = "cpu"):
        import torch

        from .models import load_classifier

        self.model, ckpt = load_classifier(path)
        self.device = torch.device(device or "cpu")
        self.model.to(self.device)
        self.labels, self.imgsz = list(ckpt["names"]), ckpt["imgsz"]

    def predict(self, images) -> np.ndarray:
        import torch

        from .models import logits_of

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

    def __init__(self, path: Path, reference: Path = INAT_REFERENCE):
        from ..vision.backbone import make_interpreter

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
            raise SystemExit(f"{reference} has {len(self.labels)} rows, the model {self.logits['shape'][-1]} outputs")

    def predict(self, images) -> np.ndarray:
        from ..vision.backbone import _dequantize, softmax

        out = []
        for im in images:  # this graph has batch 1
            self.interp.set_tensor(self.input["index"], eval_view(im, self.imgsz)[None])
            self.interp.invoke()
            out.append(_dequantize(self.interp.get_tensor(self.logits["index"]), self.logits))
        return softmax(np.concatenate(out))


def open_species_model(path: Path, labels: Path | None = None, device: str = "cpu"):
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        return InatLiteRT(path)
    if suffix == ".onnx":
        return OnnxSpecies(path, labels)
    if suffix == ".pt":
        return TorchSpecies(path, device)
    raise SystemExit(f"{path}: unknown species model type (want .pt from train/prune, .onnx or .tflite)")
