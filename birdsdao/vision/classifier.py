"""Species ranking over the union vocabulary: the iNat model's own logits fused with few-shot prototypes
(BIRDS-525 from ``weights/``, plus whatever users taught), with honest softmax confidences.

Fusion: a confidence-weighted mixture p = w * p_inat + (1 - w) * p_proto, where p_inat is the softmax of the
iNat logits over its 964 species, p_proto the softmax of ``scale`` x cosine similarity to the prototypes, and
w = a*max(p_inat)^k / (a*max(p_inat)^k + (1-a)*max(p_proto)^k) per crop: the head that is surer of its
answer speaks louder. (A fixed mixture had to choose between BIRDS-525-style crops, which want the
prototypes, and field photos of iNat-only species, which want the iNat head; see bench/bench_accuracy.py.)
A mixture of two distributions is itself one, so confidences are probabilities."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbone import ImageNetModel, INatBackbone, l2n, prototype_features, softmax
from .vocabulary import Entry, Vocabulary


@dataclass(frozen=True)
class Prototypes:
    """Class means of ``prototype_features``; keys are BIRDS-525 labels (artifact) or vocabulary keys."""

    keys: tuple[str, ...]
    vectors: np.ndarray  # (k, D) float32, unit rows
    counts: np.ndarray  # (k,) images behind each mean (to merge in taught photos with the right weight)

    @classmethod
    def load(cls, path: str | Path) -> "Prototypes":
        with np.load(path, allow_pickle=False) as data:  # never unpickle: plain arrays only
            return cls(tuple(str(k) for k in data["labels"]), data["vectors"].astype(np.float32), data["counts"])

    def save(self, path: str | Path, **meta: str) -> None:
        extra = {k: np.array(v) for k, v in meta.items()}
        np.savez_compressed(path, labels=np.array(self.keys), vectors=self.vectors.astype(np.float16),
                            counts=self.counts.astype(np.int32), **extra)


@dataclass
class CropFeatures:
    inat_logits: np.ndarray  # (n, 965)
    proto: np.ndarray  # (n, D)
    imagenet_bird: np.ndarray  # (n,) probability mass of ImageNet's bird classes
    trained: np.ndarray | None = None  # (n, k) probabilities of a configured SPECIES_MODEL, else None

    def take(self, rows) -> "CropFeatures":
        idx = np.asarray(rows)
        return CropFeatures(self.inat_logits[idx], self.proto[idx], self.imagenet_bird[idx],
                            None if self.trained is None else self.trained[idx])


@dataclass(frozen=True)
class Guess:
    entry: Entry
    confidence: float

    def to_dict(self) -> dict:
        return {**self.entry.names, "confidence": round(self.confidence, 4)}


class _State:
    """An immutable snapshot: ranking reads one while teach/forget builds the next (swap under a lock)."""

    def __init__(self, vocab: Vocabulary, inat_rows: np.ndarray, proto_rows: np.ndarray, proto_vectors: np.ndarray,
                 trained_rows: np.ndarray):
        self.vocab, self.inat_rows, self.proto_rows, self.proto_vectors = vocab, inat_rows, proto_rows, proto_vectors
        self.trained_rows = trained_rows  # vocabulary row of each output of the configured species model


class SpeciesClassifier:
    def __init__(self, inat: INatBackbone, imagenet: ImageNetModel, vocab: Vocabulary, base: Prototypes,
                 label_to_key: dict[str, str], *, alpha: float, scale: float, power: float = 2.0,
                 trained=None, trained_entries: list[Entry] = ()):
        """``trained``: a species model from ``python -m birdsdao.train`` (``predict(images) -> probs``, see
        birdsdao/train/classifiers.py); when given, it names the species and the fusion below is not used.
        ``trained_entries``: one vocabulary entry per output of it (several outputs may share one)."""
        self.inat, self.imagenet = inat, imagenet
        self.trained, self.trained_entries = trained, list(trained_entries)
        self.alpha, self.scale, self.power = alpha, scale, power
        self.base_vocab = vocab
        # Base prototypes re-keyed from BIRDS-525 labels to vocabulary keys; labels the catalogue merges into
        # one species (JACOBIN PIGEON is a Rock Dove breed) pool their photos into one mean.
        sums: dict[str, tuple[np.ndarray, int]] = {}
        for label, vec, count in zip(base.keys, base.vectors, base.counts):
            if label in label_to_key:
                key = label_to_key[label]
                total, n = sums.get(key, (0, 0))
                sums[key] = (total + vec * int(count), n + int(count))
        self.base = {key: (l2n(total / n), n) for key, (total, n) in sums.items()}
        self.lock = threading.Lock()
        self.state = self._build_state({}, [])

    # -- features ---------------------------------------------------------------------------------------
    def features(self, crops: np.ndarray) -> CropFeatures:
        """One batched iNat call for all crops, then the ImageNet model per crop."""
        inat = self.inat.features(crops)
        imnet_emb, imnet_bird = self.imagenet.run(crops)
        trained = None
        if self.trained is not None:
            from PIL import Image

            trained = self.trained.predict([Image.fromarray(c) for c in crops])
        return CropFeatures(inat.logits, prototype_features(inat.embeddings, imnet_emb), imnet_bird, trained)

    # -- ranking ------------------------------------------------------------------------------------------
    def probabilities(self, feats: CropFeatures, prior: np.ndarray | None = None) -> tuple[np.ndarray, _State]:
        """``prior``: location weights per base-vocabulary entry (species/ranges.py), or None."""
        probs, state = self._fused(feats)
        if prior is not None:
            probs = _apply_prior(probs, prior)
        return probs, state

    def _fused(self, feats: CropFeatures) -> tuple[np.ndarray, _State]:
        state = self.state  # one snapshot for the whole call
        n, v = len(feats.proto), len(state.vocab)
        probs = np.zeros((n, v), dtype=np.float64)
        if feats.trained is not None:  # a configured species model replaces the fusion
            np.add.at(probs.T, state.trained_rows, feats.trained.T.astype(np.float64))
            return probs, state
        p_inat = softmax(feats.inat_logits[:, :-1].astype(np.float64))  # background excluded
        rows = state.inat_rows[:-1]
        valid = rows >= 0
        if not len(state.proto_rows):
            np.add.at(probs.T, rows[valid], p_inat[:, valid].T)
            return probs, state
        p_proto = softmax(self.scale * (feats.proto @ state.proto_vectors.T).astype(np.float64))
        w_inat = self.alpha * p_inat.max(1, keepdims=True) ** self.power
        w_proto = (1 - self.alpha) * p_proto.max(1, keepdims=True) ** self.power
        w = w_inat / (w_inat + w_proto)
        np.add.at(probs.T, rows[valid], (w * p_inat[:, valid]).T)
        np.add.at(probs.T, state.proto_rows, ((1 - w) * p_proto).T)
        return probs, state

    def rank(self, feats: CropFeatures, top_k: int, prior: np.ndarray | None = None) -> list[list[Guess]]:
        probs, state = self.probabilities(feats, prior)
        out = []
        for row in probs:
            best = np.argsort(-row)[:top_k]
            out.append([Guess(state.vocab.entries[i], float(row[i])) for i in best])
        return out

    # -- taught species -------------------------------------------------------------------------------------
    def set_taught(self, taught: dict[str, np.ndarray], new_entries: list[Entry]) -> None:
        """taught: vocabulary key → (m, D) features of the user's photos; new_entries: species not in the
        base vocabulary. Rebuilds the snapshot and swaps it in."""
        state = self._build_state(taught, new_entries)
        with self.lock:
            self.state = state

    def _build_state(self, taught: dict[str, np.ndarray], new_entries: list[Entry]) -> _State:
        vocab = Vocabulary(list(self.base_vocab.entries), dict(self.base_vocab.index))
        for entry in new_entries:
            vocab.add(entry)
        trained_rows = np.asarray([vocab.add(entry) for entry in self.trained_entries], dtype=np.int64)
        keys = list(self.base) + [k for k in taught if k not in self.base]
        vectors, rows = [], []
        for key in keys:
            if key not in vocab.index:
                continue
            vec, count = self.base.get(key, (None, 0))
            total = vec * count if vec is not None else 0
            if key in taught:
                total = total + taught[key].sum(0)
                count += len(taught[key])
            vectors.append(l2n(np.asarray(total, np.float32)))
            rows.append(vocab.index[key])
        inat_rows = vocab.inat_matrix(self.inat.num_outputs)
        proto = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 1), np.float32)
        return _State(vocab, inat_rows, np.asarray(rows, dtype=np.int64), proto, trained_rows)

    def vocabulary_size(self) -> int:
        return len(self.state.vocab)


def _apply_prior(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """THE place where the location prior meets the ranking (issue #15; the fusion owner tunes this rule):
    each row times the prior, renormalised. The prior covers the base vocabulary, whose entries always come
    first; species taught since have no range data and get 1.0."""
    weights = np.ones(probs.shape[1], dtype=np.float64)
    n = min(len(prior), len(weights))
    weights[:n] = prior[:n]
    out = probs * weights
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=probs.copy(), where=total > 0)
