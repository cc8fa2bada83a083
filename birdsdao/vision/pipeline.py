"""The vision service (first cut: loads the detector and the two LiteRT models once)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class VisionPipeline:
    def __init__(self, detector, inat, imagenet, weights_name):
        self.detector = detector
        self.inat = inat
        self.imagenet = imagenet
        self.weights_name = weights_name
        self.lock = threading.Lock()

    @classmethod
    def from_config(cls, config, services):
        from ai_edge_litert.interpreter import Interpreter
        from ultralytics import YOLO

        detector = YOLO(config["YOLO_WEIGHTS"], task="detect")
        inat = Interpreter(model_path=config["INAT_MODEL"])
        inat.allocate_tensors()
        imagenet = Interpreter(model_path=config["IMAGENET_MODEL"])
        imagenet.allocate_tensors()
        pipeline = cls(detector, inat, imagenet, Path(str(config["YOLO_WEIGHTS"])).name)
        pipeline.detector.predict(np.zeros((64, 64, 3), dtype=np.uint8), verbose=False)  # warm-up
        return pipeline

    def describe(self) -> dict:
        import ultralytics

        return {"detector": self.weights_name, "ultralytics": ultralytics.__version__}
