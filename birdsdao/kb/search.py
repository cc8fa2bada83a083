"""Retrieval: BM25 over jieba tokens as a sparse matrix, and the fusion of BM25 with vector hits (see README.md)."""
from __future__ import annotations

import re

import numpy as np
from scipy import sparse

from ..config import DEFAULTS
from ..segment import search_words

MODES = ("vector", "bm25", "rrf", "weighted")
# Compared by bench/bench_kb_recall.py; why rrf is the default: README.md.
DEFAULT_MODE = DEFAULTS["KB_SEARCH_MODE"]
DEFAULT_BM25_WEIGHT = DEFAULTS["KB_BM25_WEIGHT"]
DEFAULT_LANG_BALANCE = DEFAULTS["KB_LANG_BALANCE"]
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def is_cjk_text(text: str) -> bool:
    """Mostly Chinese (CJK characters at least as many as Latin words)?"""
    return len(_CJK.findall(text)) >= len(_LATIN_WORD.findall(text))


def balance_languages(hits: list[tuple[int, float]], cjk: list[bool], amount: float) -> list[tuple[int, float]]:
    """Dense hits with each language's scores shifted up by ``amount`` × (best overall − best in that
    language), re-sorted: the best passage in the other language then competes with the best in the question's
    own, whatever the embedder's preference for its own language. ``cjk[i]``: is hit i's passage Chinese."""
    if amount <= 0 or not hits or all(cjk) or not any(cjk):
        return hits
    top = max(s for _, s in hits)
    best = {lang: max(s for (_, s), c in zip(hits, cjk) if c == lang) for lang in (True, False)}
    shifted = [(row, s + amount * (top - best[c])) for (row, s), c in zip(hits, cjk)]
    return sorted(shifted, key=lambda item: -item[1])
RRF_K = 60
CANDIDATES = 50  # hits taken from each side before fusion

_WORD = re.compile(r"\w", re.UNICODE)
# English function words and Chinese particles that match everywhere and rank nothing.
STOPWORDS = frozenset(
    "a an the of to in on at for is are was were be by and or with what which who whom how where when why "
    "does do did it its this that these those from as about can i you me my your 的 了 是 在 吗 呢 什么 哪 哪里 "
    "哪些 怎么 如何 一种 一个 有 和 与 及 它 它们 这 那 为 会 能 多少 请问".split())


def tokenize(text: str) -> list[str]:
    """jieba search-mode tokens, lower-cased, punctuation and stop words dropped."""
    return [t for t in (w.strip().lower() for w in search_words(text))
            if t and _WORD.search(t) and t not in STOPWORDS]


class Vocabulary:
    """term → column; append-only so stored count matrices stay valid as documents come and go."""

    def __init__(self, terms: list[str] | None = None):
        self.terms = list(terms or [])
        self.index = {t: i for i, t in enumerate(self.terms)}

    def copy(self) -> "Vocabulary":
        return Vocabulary(self.terms)

    def counts(self, token_lists: list[list[str]]) -> sparse.csr_matrix:
        """Rows of term counts for new texts (adds unseen terms)."""
        data, indices, indptr = [], [], [0]
        for tokens in token_lists:
            row: dict[int, int] = {}
            for t in tokens:
                col = self.index.get(t)
                if col is None:
                    col = self.index[t] = len(self.terms)
                    self.terms.append(t)
                row[col] = row.get(col, 0) + 1
            indices.extend(row)
            data.extend(row.values())
            indptr.append(len(indices))
        return sparse.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
                                 shape=(len(token_lists), max(len(self.terms), 1)))


def pad_columns(matrix: sparse.csr_matrix, width: int) -> sparse.csr_matrix:
    if matrix.shape[1] == width:
        return matrix
    return sparse.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], width))


class BM25:
    """Okapi BM25 weights precomputed per (chunk, term); scoring a query sums a handful of columns."""

    def __init__(self, counts: sparse.csr_matrix, vocab: Vocabulary, k1: float = 1.5, b: float = 0.75):
        self.vocab = vocab
        n = counts.shape[0]
        counts = pad_columns(counts.tocsr(), max(len(vocab.terms), 1))
        if n == 0:
            self.weights = sparse.csc_matrix(counts.shape, dtype=np.float32)
            return
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        avg = lengths.mean() or 1.0
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        row_norm = k1 * (1 - b + b * lengths / avg)
        tf = counts.data
        rows = np.repeat(np.arange(n), np.diff(counts.indptr))
        data = idf[counts.indices] * tf * (k1 + 1) / (tf + row_norm[rows])
        # CSC: a query term is one contiguous column slice.
        self.weights = sparse.csr_matrix((data.astype(np.float32), counts.indices, counts.indptr),
                                         shape=counts.shape).tocsc()

    def scores(self, query: str) -> np.ndarray:
        cols = [self.vocab.index[t] for t in dict.fromkeys(tokenize(query)) if t in self.vocab.index]
        if not cols or self.weights.shape[0] == 0:
            return np.zeros(self.weights.shape[0], np.float32)
        return np.asarray(self.weights[:, cols].sum(axis=1)).ravel()

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        s = self.scores(query)
        return _top(s, k)


def _top(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    positive = np.flatnonzero(scores > 0)
    if positive.size == 0:
        return []
    if positive.size > k:
        positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
    order = positive[np.argsort(-scores[positive], kind="stable")]
    return [(int(i), float(scores[i])) for i in order]


def fuse(mode: str, vector: list[tuple[int, float]], bm25: list[tuple[int, float]], k: int,
         bm25_weight: float = DEFAULT_BM25_WEIGHT) -> list[tuple[int, float]]:
    """Combine two ranked lists of (row, score). ``rrf``: 1/(60+rank) from the vector list plus ``bm25_weight``
    × 1/(60+rank) from the BM25 list; ``weighted``: cosine plus ``bm25_weight`` × BM25 normalised by its best
    score. A query in one language over a document in another has no words in common with it: BM25's list is
    then noise, and a weight below 1 keeps it from pushing the embedder's hits out of the top k."""
    if mode == "vector":
        return vector[:k]
    if mode == "bm25":
        return bm25[:k]
    fused: dict[int, float] = {}
    if mode == "rrf":
        for ranked, weight in ((vector, 1.0), (bm25, bm25_weight)):
            for rank, (row, _) in enumerate(ranked):
                fused[row] = fused.get(row, 0.0) + weight / (RRF_K + rank + 1)
    elif mode == "weighted":
        best = bm25[0][1] if bm25 else 1.0
        for row, score in vector:
            fused[row] = score
        floor = min((s for _, s in vector), default=0.0)
        for row, score in bm25:
            fused[row] = fused.get(row, floor) + bm25_weight * score / best
    else:
        raise ValueError(f"unknown search mode {mode!r}; known: {MODES}")
    return sorted(fused.items(), key=lambda item: -item[1])[:k]
