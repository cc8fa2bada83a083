"""Bird boxes with YOLOv8 (COCO class 14): ONNX Runtime on a cached export, Ultralytics' torch predictor as
the fallback (see README.md)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
BIRD_CLASS = 14


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def scaled(self, factor: float) -> "Box":
        return Box(self.x1 * factor, self.y1 * factor, self.x2 * factor, self.y2 * factor, self.confidence)

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in self.xyxy], "box_confidence": round(self.confidence, 4)}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression over (n, 4) xyxy boxes; returns kept indices, best first."""
    order = scores.argsort()[::-1]
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / (areas[i] + areas[order[1:]] - inter + 1e-9)
        order = order[1:][overlap <= iou]
    return keep


class OnnxBirdDetector:
    """YOLOv8 exported to ONNX: letterbox to a fixed square, one session.run, decode + NMS in numpy."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: str, imgsz: int, conf: float, iou: float, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        # Spinning worker threads burn the other core while a 2-core server also runs LiteRT and Flask.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.imgsz, self.conf, self.iou = imgsz, conf, iou
        self.path = str(onnx_path)

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, float, tuple[int, int]]:
        w, h = image.size
        ratio = self.imgsz / max(w, h)
        nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
        canvas = np.full((self.imgsz, self.imgsz, 3), 114, dtype=np.uint8)  # Ultralytics' letterbox grey
        left, top = (self.imgsz - nw) // 2, (self.imgsz - nh) // 2
        canvas[top : top + nh, left : left + nw] = np.asarray(image.resize((nw, nh), Image.Resampling.BILINEAR))
        tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        return tensor, ratio, (left, top)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: tensor})[0]  # (1, 84, anchors)

    def postprocess(self, raw: np.ndarray, ratio: float, pad: tuple[int, int], size: tuple[int, int]) -> list[Box]:
        pred = raw[0]
        scores = pred[4 + BIRD_CLASS]
        mask = scores >= self.conf
        if not mask.any():
            return []
        cx, cy, bw, bh = pred[0][mask], pred[1][mask], pred[2][mask], pred[3][mask]
        boxes = np.stack([cx - bw / 2 - pad[0], cy - bh / 2 - pad[1], cx + bw / 2 - pad[0], cy + bh / 2 - pad[1]], 1) / ratio
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, size[0])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, size[1])
        scores = scores[mask]
        return [Box(*map(float, boxes[i]), float(scores[i])) for i in nms(boxes, scores, self.iou)]

    def __call__(self, image: Image.Image) -> list[Box]:
        tensor, ratio, pad = self.preprocess(image)
        return self.postprocess(self.infer(tensor), ratio, pad, image.size)


class TorchBirdDetector:
    """Ultralytics' own predictor (the fallback, and the reference the ONNX path is tested against)."""

    backend = "torch"

    def __init__(self, weights: str, imgsz: int, conf: float, iou: float):
        from ultralytics import YOLO

        self.model = YOLO(weights, task="detect")
        self.imgsz, self.conf, self.iou = imgsz, conf, iou
        self.lock = threading.Lock()  # Ultralytics predictors keep per-call state: not thread-safe
        self.path = str(weights)

    def __call__(self, image: Image.Image) -> list[Box]:
        with self.lock:
            result = self.model.predict(
                np.asarray(image)[:, :, ::-1], imgsz=self.imgsz, conf=self.conf, iou=self.iou,
                classes=[BIRD_CLASS], verbose=False,
            )[0]
        xyxy = result.boxes.xyxy.cpu().numpy()
        confs = result.boxes.conf.cpu().numpy()
        return [Box(*map(float, xyxy[i]), float(confs[i])) for i in range(len(confs))]


def export_onnx(weights: str, imgsz: int, cache_dir: Path) -> Path:
    """Export once per (weights sha256, imgsz); later starts reuse the cached file."""
    digest = sha256_of(weights)[:16]
    target = cache_dir / f"yolo-{digest}-{imgsz}.onnx"
    if target.exists():
        return target
    from ultralytics import YOLO

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Export writes beside the .pt; work on a private copy so a read-only weights folder is fine.
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        copy = Path(tmp) / "model.pt"
        shutil.copyfile(weights, copy)
        with warnings.catch_warnings():  # torch's tracer warnings are noise for a one-off build step
            warnings.simplefilter("ignore")
            exported = YOLO(str(copy), task="detect").export(format="onnx", imgsz=imgsz, simplify=True, verbose=False)
        os.replace(exported, target)
    return target


def build_detector(weights: str, *, imgsz: int, conf: float, iou: float, backend: str, cache_dir: Path,
                   threads: int | None = None):
    """``backend``: "onnx" (fall back to torch on failure, logged) or "torch"."""
    if backend == "onnx" and Path(weights).is_file():
        try:
            return OnnxBirdDetector(export_onnx(weights, imgsz, cache_dir), imgsz, conf, iou, threads)
        except Exception:  # no exporter / runtime: the torch path still answers, only slower
            log.exception("ONNX detector unavailable; using the torch predictor")
    return TorchBirdDetector(weights, imgsz, conf, iou)
