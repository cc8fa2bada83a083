"""Species ranking over the union vocabulary: the iNat head and the few-shot prototype head fused into one
distribution, coarse classes resolved to their species, subspecies counted under their species, an optional
location prior, and a calibrating sharpening (the rule and why: birdsdao/vision/README.md)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbone import ImageNetModel, INatBackbone, l2n, prototype_features, softmax
from .vocabulary import Entry, Taxonomy, Vocabulary


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
        idx = np.asarray(rows, dtype=np.int64)
        return CropFeatures(self.inat_logits[idx], self.proto[idx], self.imagenet_bird[idx],
                            None if self.trained is None else self.trained[idx])


@dataclass
class Guess:
    entry: Entry
    confidence: float
    subspecies: dict | None = None  # the subspecies that held most of this species' probability, if any

    def to_dict(self) -> dict:
        out = {**self.entry.names, "confidence": round(self.confidence, 4)}
        if self.subspecies:
            out["subspecies"] = {k: self.subspecies.get(k) for k in ("scientific_name", "english_name", "chinese_name")}
        return out


class _State:
    """An immutable snapshot: ranking reads one while teach/forget builds the next (swap under a lock)."""

    def __init__(self, vocab: Vocabulary, inat_rows: np.ndarray, proto_rows: np.ndarray, proto_vectors: np.ndarray,
                 in_weights_mask: np.ndarray, trained_rows: np.ndarray, taught_rows: np.ndarray):
        self.vocab, self.inat_rows, self.proto_rows, self.proto_vectors = vocab, inat_rows, proto_rows, proto_vectors
        # per prototype: whether it counts in the head weights; False for photos a user taught to a species that
        # already had a prototype (so teaching more of a known species can only raise it: README)
        self.in_weights_mask = in_weights_mask
        self.entry_rows = np.unique(proto_rows)  # vocabulary rows that have at least one prototype
        self.column = np.searchsorted(self.entry_rows, proto_rows)  # prototype → its column in entry_rows
        self.taxonomy = Taxonomy.of(vocab)
        self.trained_rows = trained_rows  # vocabulary row of each output of the configured species model
        self.taught_rows = taught_rows  # vocabulary rows of the species users taught (boosted)
        # per prototype column: whether the iNat head also names that species (itself or its parent species)
        named = np.zeros(len(vocab), dtype=bool)
        named[inat_rows[inat_rows >= 0]] = True
        self.inat_names = (named | named[self.taxonomy.parent])[self.entry_rows]


@dataclass(frozen=True)
class Fusion:
    """The few parameters of the rule (config keys FUSION_ALPHA, FUSION_ALPHA_SHARED, FUSION_POWER, PROTOTYPE_SCALE,
    GENERIC_MIN_SHARE, CONFIDENCE_SHARPEN, CONFIDENCE_SPREAD, LOCATION_PRIOR_POWER, TAUGHT_BOOST), chosen in
    bench/bench_species.py and bench/bench_location.py."""

    alpha: float = 0.6
    alpha_shared: float = 0.9
    power: float = 2.0
    scale: float = 40.0
    generic_min_share: float = 0.05
    sharpen: float = 1.7
    spread: float = 0.02
    prior_power: float = 0.5
    taught_boost: float = 4.0


class SpeciesClassifier:
    def __init__(self, inat: INatBackbone, imagenet: ImageNetModel, vocab: Vocabulary, base: Prototypes,
                 label_to_key: dict[str, str], fusion: Fusion, *, mirror_below: float = 0.8,
                 trained=None, trained_entries: list[Entry] = ()):
        """``trained``: a configured species model (``predict(images) -> probs``, see vision/species_model.py);
        when given, it names the species and the fusion is not used. ``trained_entries``: one vocabulary entry
        per output of it."""
        self.inat, self.imagenet = inat, imagenet
        self.trained, self.trained_entries = trained, list(trained_entries)
        self.fusion, self.mirror_below = fusion, mirror_below
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
    def features(self, crops: np.ndarray, mirror_below: float | None = None) -> CropFeatures:
        """One batched iNat call for all crops; crops whose top iNat probability is below ``mirror_below``
        (default: the configured one) are read again mirrored, in one more batch, and the two views averaged
        (test-time augmentation where it pays: vision/README.md). Then the ImageNet model per crop."""
        below = self.mirror_below if mirror_below is None else mirror_below
        inat = self.inat.features(crops)
        emb, logits = l2n(inat.embeddings), inat.logits
        unsure = np.where(softmax(logits[:, :-1]).max(1) < below)[0] if len(crops) else np.zeros(0, np.int64)
        if len(unsure):
            mirrored = self.inat.features(np.ascontiguousarray(crops[unsure][:, :, ::-1]))
            emb[unsure] = emb[unsure] + l2n(mirrored.embeddings)
            logits[unsure] = (logits[unsure] + mirrored.logits) / 2
        imnet_emb, imnet_bird = self.imagenet.run(crops)
        trained = None
        if self.trained is not None:
            from PIL import Image

            trained = self.trained.predict([Image.fromarray(c) for c in crops])
        return CropFeatures(logits, prototype_features(emb, imnet_emb), imnet_bird, trained)

    # -- ranking ------------------------------------------------------------------------------------------
    def probabilities(self, feats: CropFeatures, prior: np.ndarray | None = None) -> tuple[np.ndarray, _State]:
        """(n, V) probabilities over the vocabulary (coarse classes and subspecies already folded into their
        species), and the snapshot they index. ``prior``: (V,) location weights, or None."""
        probs, state, _ = self.probabilities_with_subspecies(feats, prior)
        return probs, state

    def probabilities_with_subspecies(self, feats: CropFeatures, prior: np.ndarray | None = None):
        """``probabilities`` plus, per crop, {species row: its subspecies row that held at least a third of the
        species' probability} (American Barn Swallow under Barn Swallow), for the answer's detail."""
        state = self.state  # one snapshot for the whole call
        if feats.trained is not None:  # a configured species model replaces the fusion (the prior still applies)
            probs = np.zeros((len(feats.trained), len(state.vocab)), dtype=np.float64)
            np.add.at(probs.T, state.trained_rows, feats.trained.T.astype(np.float64))
            if prior is not None:
                probs = _apply_prior(probs, prior ** self.fusion.prior_power)
            return probs, state, [{} for _ in probs]
        fused = self._fuse(feats, state)
        probs = self._fold(fused, state.taxonomy)
        if prior is not None:
            probs = _apply_prior(probs, prior ** self.fusion.prior_power)
        f = self.fusion
        probs = probs ** f.sharpen
        if len(state.taught_rows) and f.taught_boost != 1:
            # A species a user taught is one they meet: like a local checklist, it weighs more.
            probs[:, state.taught_rows] *= f.taught_boost
        probs = probs / probs.sum(1, keepdims=True)
        probs = (1 - f.spread) * probs + f.spread / probs.shape[1]
        return probs, state, _dominant_subspecies(fused, state.taxonomy)

    def _fuse(self, feats: CropFeatures, state: _State) -> np.ndarray:
        """w * p_inat + (1 - w) * p_proto, w = a*max(p_inat)^k / (a*max(p_inat)^k + (1-a)*max(p_proto)^k), where
        a is ``alpha_shared`` when the prototype head's top species is one the iNat head names too, else ``alpha``."""
        f = self.fusion
        n, v = len(feats.proto), len(state.vocab)
        probs = np.zeros((n, v), dtype=np.float64)
        p_inat = softmax(feats.inat_logits[:, :-1].astype(np.float64))  # background excluded
        rows = state.inat_rows[:-1]
        valid = rows >= 0
        if not len(state.proto_rows):
            np.add.at(probs.T, rows[valid], p_inat[:, valid].T)
            return probs
        sims = (feats.proto @ state.proto_vectors.T).astype(np.float64)
        # An entry's prototype score is its best prototype's (base photos or a user's taught photos).
        best = np.full((n, len(state.entry_rows)), -np.inf)
        np.maximum.at(best.T, state.column, sims.T)
        p_proto = softmax(f.scale * best)
        # The head weights see only the prototypes that existed before a known species was taught more.
        in_weights = state.in_weights_mask if state.in_weights_mask.any() else np.ones_like(state.in_weights_mask)
        known = np.full((n, len(state.entry_rows)), -np.inf)
        np.maximum.at(known.T, state.column[in_weights], sims[:, in_weights].T)
        known[:, np.isinf(known).all(0)] = -1.0  # columns with no prototype in the weights: a cosine no crop beats
        p_known = softmax(f.scale * known)
        weight_proto = p_known.max(1, keepdims=True)
        # Where both heads know the prototype head's pick, the field-trained iNat head is the one to trust on
        # field photos; the prototypes carry full weight where only they can name the species.
        alpha = np.where(state.inat_names[p_known.argmax(1)], f.alpha_shared, f.alpha)[:, None]
        w_inat = alpha * p_inat.max(1, keepdims=True) ** f.power
        w_proto = (1 - alpha) * weight_proto ** f.power
        w = w_inat / (w_inat + w_proto)
        np.add.at(probs.T, rows[valid], (w * p_inat[:, valid]).T)
        probs[:, state.entry_rows] += (1 - w) * p_proto
        return probs

    def _fold(self, probs: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
        """A coarse class (CROW = Corvus) hands its probability to its species in proportion to theirs when
        they hold at least ``generic_min_share`` of it; subspecies count under their species."""
        out = probs.copy()
        for row, members in taxonomy.members.items():
            inside = probs[:, members]
            total = inside.sum(1)
            move = total >= self.fusion.generic_min_share * probs[:, row]
            if not move.any():
                continue
            share = inside[move] / np.maximum(total[move, None], 1e-300)
            out[np.ix_(move, members)] += share * probs[move, row][:, None]
            out[move, row] = 0.0
        folded = np.zeros_like(out)
        np.add.at(folded.T, taxonomy.parent, out.T)
        return folded

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
        inat_rows = vocab.inat_matrix(self.inat.num_outputs)
        vectors, rows, in_weights = [], [], []
        for key, (vec, _count) in self.base.items():
            if key in vocab.index:
                vectors.append(vec), rows.append(vocab.index[key]), in_weights.append(True)
        n_base = len(rows)
        for key, feats in taught.items():
            if key not in vocab.index:
                continue
            row = vocab.index[key]
            # Only a species without a shipped prototype enters the head weights (bench_species.py: taught
            # from 3 photos it then ranks top as often as the prototype head; kept out, 2 in 50 fewer).
            is_new = key not in self.base
            vectors.append(l2n(np.asarray(feats, np.float32).mean(0))), rows.append(row), in_weights.append(is_new)
        proto = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 1), np.float32)
        taught_rows = np.unique(np.asarray(rows[n_base:], dtype=np.int64))
        return _State(vocab, inat_rows, np.asarray(rows, dtype=np.int64), proto, np.asarray(in_weights, bool),
                      trained_rows, taught_rows)

    def vocabulary_size(self) -> int:
        return len(self.state.vocab)


def top_guesses(row: np.ndarray, vocab: Vocabulary, top_k: int) -> list[Guess]:
    best = np.argsort(-row)[:top_k]
    return [Guess(vocab.entries[i], float(row[i])) for i in best]


def _dominant_subspecies(fused: np.ndarray, taxonomy: Taxonomy) -> list[dict[int, int]]:
    out = [{} for _ in fused]
    for species, children in taxonomy.children.items():
        best = children[fused[:, children].argmax(1)]
        total = fused[:, species] + fused[:, children].sum(1)
        for i, child in enumerate(best):
            if fused[i, child] * 3 >= total[i] > 0:
                out[i][species] = int(child)
    return out


def _apply_prior(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Where the location prior meets the ranking (vision/README.md, step 5):
    each row times the prior, renormalised. The prior covers the base vocabulary, whose entries always come
    first; species taught since have no range data and get 1.0."""
    weights = np.ones(probs.shape[1], dtype=np.float64)
    n = min(len(prior), len(weights))
    weights[:n] = prior[:n]
    out = probs * weights
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=probs.copy(), where=total > 0)
