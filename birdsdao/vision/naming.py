"""From a crop's probabilities to what the user reads: the top species, the answer at the rank the evidence
supports (species, else genus, else family), the look-alike to tell apart, and a photo's birds read together."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classifier import Guess, top_guesses
from .vocabulary import group_names


@dataclass
class Reading:
    species: list[Guess]
    answer: dict
    lookalike: dict | None = None
    flock_adjusted: bool = False

    def to_dict(self) -> dict:
        out = {"species": [g.to_dict() for g in self.species], "answer": self.answer}
        if self.lookalike:
            out["lookalike"] = self.lookalike
        if self.flock_adjusted:
            out["flock_context"] = True
        return out


def read_detection(row: np.ndarray, state, top_k: int, catalog, *, answer_min: float, lookalike_gap: float,
                   subspecies: dict[int, int] | None = None) -> Reading:
    """``subspecies``: species row → the subspecies row that held most of it (shown as detail)."""
    species = top_guesses(row, state.vocab, max(top_k, 2))
    for guess in species:
        child = (subspecies or {}).get(state.vocab.index[guess.entry.key])
        if child is not None:
            guess.subspecies = state.vocab.entries[child].names
    best = species[0]
    return Reading(species[:top_k], answer_at_rank(row, state, best, answer_min),
                   lookalike(species[0], species[1], catalog, lookalike_gap))


def answer_at_rank(row: np.ndarray, state, best: Guess, answer_min: float) -> dict:
    """The species when it holds ``answer_min``; otherwise the smallest group (genus, then family) of the top
    species whose species together hold it, with the top species as "most likely" (as field guides say
    "a gull, most likely Herring Gull")."""
    top = {**best.entry.names, "confidence": round(best.confidence, 4)}
    if best.confidence >= answer_min:
        return {"rank": "species", **top}
    row_of_best = state.vocab.index[best.entry.key]
    for rank in ("genus", "family"):
        name, rows = state.taxonomy.group_of(state.vocab, row_of_best, rank)
        if name and len(rows) > 1 and row_of_best in rows:
            mass = float(row[rows].sum())
            if mass >= answer_min:
                return {**group_names(state.vocab, rank, name, rows), "confidence": round(mass, 4), "most_likely": top}
    return {"rank": "species", **top, "uncertain": True}


def lookalike(first: Guess, second: Guess, catalog, gap: float) -> dict | None:
    """Both species and how to tell them apart (from the species cards) when the top two are within ``gap``."""
    if first.confidence - second.confidence > gap or second.confidence <= 0:
        return None
    how = getattr(catalog, "how_to_tell", None)
    return {"species": [first.to_dict(), second.to_dict()],
            "how_to_tell": how(first.entry.key, second.entry.key) if how else None}


def flock_context(probs: np.ndarray, proto: np.ndarray, areas: list, *, confident: float, min_similarity: float,
                  strength: float) -> np.ndarray:
    """Birds in one photo are usually one or few species: a confident bird raises its species for each
    uncertain bird of similar size (within 4x, or the whole image) and look (cosine of features)."""
    probs = probs.copy()
    n = len(probs)
    if n < 2 or strength <= 0:
        return probs
    conf, top = probs.max(1), probs.argmax(1)
    sims = proto @ proto.T
    for i in np.where(conf < confident)[0]:
        support = np.zeros(probs.shape[1])
        for j in np.where(conf >= confident)[0]:
            similar_size = areas[i] is None or areas[j] is None or 0.25 <= areas[i] / max(areas[j], 1e-9) <= 4
            if j != i and sims[i, j] >= min_similarity and similar_size:
                support[top[j]] += conf[j]
        if support.any():
            raised = probs[i] * (1 + strength * support)
            probs[i] = raised / raised.sum()
    return probs
