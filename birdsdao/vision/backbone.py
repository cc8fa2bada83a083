"""The iNat MobileNetV2 LiteRT model as a feature extractor: one batched call gives, per 224x224 crop, the
1280-d ``AvgPool`` embedding and the 965 pre-softmax logits (computed in float from that embedding with the
model's own last-layer weights, so ranks are not flattened by the uint8 softmax output)."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

EMBEDDING_TENSOR = "AvgPool/AvgPool"
LOGITS_WEIGHTS_PREFIX = "Logits/weights_quant"  # (965, 1280) uint8 weights of the final 1x1 conv
LOGITS_BIAS = "Logits/biases"  # (965,) int32 bias, scale = input scale * weight scale
INPUT_SIZE = 224


def dequantize(tensor: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if not scale:
        return tensor.astype(np.float32)
    return (tensor.astype(np.float32) - zero) * scale


def make_interpreter(model_path: str, num_threads: int | None, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_path": str(model_path)}
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    with warnings.catch_warnings():
        # preserve_all_tensors warns that it is "for debugging"; it is how the embedding stays readable
        # after invoke (otherwise the arena may reuse its buffer), at the cost of a few MB.
        warnings.simplefilter("ignore", UserWarning)
        return Interpreter(experimental_preserve_all_tensors=preserve, **kwargs)


@dataclass
class Features:
    embeddings: np.ndarray  # (n, 1280) float32, dequantized AvgPool activations
    logits: np.ndarray  # (n, 965) float32, pre-softmax iNat logits (last index = background)


class INatBackbone:
    """Thread-safe (one lock) batched runner of the iNat model. ``max_batch`` crops per invoke."""

    def __init__(self, model_path: str, num_threads: int | None = None, max_batch: int = 8):
        self.model_path = str(model_path)
        self.max_batch = max_batch
        self.lock = threading.Lock()
        self.interp = make_interpreter(model_path, num_threads, preserve=True)
        self.interp.allocate_tensors()
        self._batch = 1
        self.input = self.interp.get_input_details()[0]
        details = {d["name"]: d for d in self.interp.get_tensor_details()}
        self.emb_detail = details[EMBEDDING_TENSOR]
        weights = next(d for name, d in details.items() if name.startswith("Logits/MatMul;" + LOGITS_WEIGHTS_PREFIX))
        w = dequantize(self.interp.get_tensor(weights["index"]), weights)
        bias = dequantize(self.interp.get_tensor(details[LOGITS_BIAS]["index"]), details[LOGITS_BIAS])
        self.w = w.T.copy()  # (1280, 965)
        self.b = bias
        self.num_outputs = w.shape[0]

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self.interp.resize_tensor_input(self.input["index"], [n, INPUT_SIZE, INPUT_SIZE, 3])
            self.interp.allocate_tensors()
            self._batch = n

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(n, 224, 224, 3) uint8 RGB → (n, 1280) float32 embeddings, in as few invokes as possible."""
        out = []
        with self.lock:
            for start in range(0, len(crops), self.max_batch):
                chunk = np.ascontiguousarray(crops[start : start + self.max_batch], dtype=np.uint8)
                self._resize(len(chunk))
                self.interp.set_tensor(self.input["index"], chunk)
                self.interp.invoke()
                raw = self.interp.get_tensor(self.emb_detail["index"]).reshape(len(chunk), -1)
                out.append(dequantize(raw, self.emb_detail))
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.w + self.b

    def features(self, crops: np.ndarray) -> Features:
        emb = self.embed(crops)
        return Features(emb, self.logits(emb))


# ImageNet (1001 outputs, 0 = background) indices that are birds: cock … great grey owl, black grouse …
# black swan, white stork … albatross. tests/test_vision_models.py checks them against the labels file.
IMAGENET_BIRD_RANGES = ((8, 25), (81, 101), (128, 147))
IMAGENET_EMBEDDING_KEY = "GlobalPool/Mean"
IMAGENET_LOGITS_KEY = "SpatialSqueeze"


def imagenet_bird_indices() -> np.ndarray:
    return np.concatenate([np.arange(lo, hi + 1) for lo, hi in IMAGENET_BIRD_RANGES])


class ImageNetModel:
    """The ImageNet MobileNetV2: per crop, a 1280-d embedding (complements the iNat one in the prototype
    features) and the probability mass of ImageNet's bird classes (the "is this a bird at all" signal).
    Its graph has a fixed batch of 1 (resizing fails in XNNPACK), so crops go one invoke each."""

    def __init__(self, model_path: str, num_threads: int | None = None):
        self.lock = threading.Lock()
        self.interp = make_interpreter(model_path, num_threads, preserve=True)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]
        details = self.interp.get_tensor_details()
        self.emb_detail = next(d for d in details if IMAGENET_EMBEDDING_KEY in d["name"] and len(d["shape"]) == 4
                               and d["shape"][-1] == 1280)
        self.logit_detail = next(d for d in details if IMAGENET_LOGITS_KEY in d["name"] and len(d["shape"]) == 2)
        self.bird_idx = imagenet_bird_indices()

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 224, 224, 3) uint8 → (embeddings (n, 1280), bird probability (n,))."""
        embs, birds = [], []
        with self.lock:
            for crop in crops:
                self.interp.set_tensor(self.input["index"], np.ascontiguousarray(crop[None], dtype=np.uint8))
                self.interp.invoke()
                embs.append(dequantize(self.interp.get_tensor(self.emb_detail["index"]).reshape(-1), self.emb_detail))
                logits = dequantize(self.interp.get_tensor(self.logit_detail["index"]).reshape(-1), self.logit_detail)
                probs = softmax(logits)
                birds.append(float(probs[self.bird_idx].sum()))
        return (np.stack(embs) if embs else np.zeros((0, 1280), np.float32)), np.asarray(birds, np.float32)


def load_backbones(config: dict) -> tuple[INatBackbone, ImageNetModel]:
    """Both MobileNets as the config names them: the one place the server and build_prototypes open them."""
    threads = config["LITERT_THREADS"]
    return INatBackbone(config["INAT_MODEL"], threads), ImageNetModel(config["IMAGENET_MODEL"], threads)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def l2n(a: np.ndarray) -> np.ndarray:
    return a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-12)


def prototype_features(inat_emb: np.ndarray, imagenet_emb: np.ndarray) -> np.ndarray:
    """The few-shot feature: both models' embeddings, each unit-normalised, concatenated, renormalised."""
    return l2n(np.concatenate([l2n(inat_emb), l2n(imagenet_emb)], axis=-1)).astype(np.float32)
