"""The recognizer's vocabulary: the union of the iNat model's 964 species and the prototype species
(BIRDS-525 + taught), each entry carrying its display names and its place in the taxonomy (genus, family)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Entry:
    key: str  # the catalogue's species id, or "taught:<LABEL>" for a species only the user taught
    names: dict
    inat_indices: tuple[int, ...] = ()
    taught: bool = False
    # From the catalogue (species data): species | subspecies | hybrid | genus | family | not_a_taxon
    rank: str = "species"
    genus: str | None = None
    family: str | None = None
    family_zh: str | None = None
    parent: str | None = None  # a subspecies' species key
    members: tuple[str, ...] = ()  # a genus/family class's species keys

    def to_dict(self) -> dict:
        return {**self.names, "taught": self.taught}

    @property
    def scientific(self) -> str:
        return self.names.get("scientific_name") or ""


@dataclass
class Vocabulary:
    """Entries in a fixed order, found by key through ``index``."""

    entries: list[Entry] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_catalog(cls, catalog, num_inat: int) -> "Vocabulary":
        vocab = cls()
        for sp in catalog.all():
            vocab.add(Entry(sp.id, sp.names(), tuple(sp.inat_indices), rank=sp.rank, genus=sp.genus, family=sp.family,
                            family_zh=sp.family_zh, parent=sp.parent, members=sp.members))
        return vocab

    def add(self, entry: Entry) -> int:
        if entry.key in self.index:
            return self.index[entry.key]
        self.index[entry.key] = len(self.entries)
        self.entries.append(entry)
        return self.index[entry.key]

    def __len__(self) -> int:
        return len(self.entries)

    def inat_matrix(self, num_inat: int):
        """(num_inat,) entry row per iNat output, -1 where none (background)."""
        rows = np.full(num_inat, -1, dtype=np.int64)
        for row, entry in enumerate(self.entries):
            for i in entry.inat_indices:
                if 0 <= i < num_inat:
                    rows[i] = row
        return rows


@dataclass(frozen=True)
class Taxonomy:
    """Row-level groups of a vocabulary: each subspecies' parent species row, each coarse class's member
    species rows, and the species rows of every genus and family (for answers at a higher rank)."""

    parent: np.ndarray  # (V,) the row a row's probability is counted under (itself, or its parent species)
    members: dict[int, np.ndarray]  # coarse class row → rows of the species inside it
    children: dict[int, np.ndarray]  # species row → rows of its subspecies / domestic forms
    genus_rows: dict[str, np.ndarray]
    family_rows: dict[str, np.ndarray]

    @classmethod
    def of(cls, vocab: Vocabulary) -> "Taxonomy":
        entries, index = vocab.entries, vocab.index
        parent = np.array([index.get(e.parent, i) if e.parent else i for i, e in enumerate(entries)], dtype=np.int64)
        genus, family = {}, {}
        for i, e in enumerate(entries):
            if e.rank == "species" and not e.taught:
                genus.setdefault(e.genus, []).append(i)
                if e.family:
                    family.setdefault(e.family, []).append(i)
        members = {i: np.asarray([index[m] for m in e.members if m in index], dtype=np.int64)
                   for i, e in enumerate(entries) if e.members}
        children = {}
        for i, p in enumerate(parent):
            if p != i:
                children.setdefault(int(p), []).append(i)
        as_arrays = lambda d: {k: np.asarray(v, dtype=np.int64) for k, v in d.items()}  # noqa: E731
        return cls(parent, {k: v for k, v in members.items() if len(v)}, as_arrays(children), as_arrays(genus),
                   as_arrays(family))

    def group_of(self, vocab: Vocabulary, row: int, rank: str) -> tuple[str | None, np.ndarray]:
        """(the genus or family name of ``row``, the species rows in it)."""
        entry = vocab.entries[row]
        name = entry.genus if rank == "genus" and entry.rank == "species" else entry.family if rank == "family" else None
        table = self.genus_rows if rank == "genus" else self.family_rows
        return name, table.get(name, np.zeros(0, np.int64))


def group_names(vocab: Vocabulary, rank: str, name: str, rows: np.ndarray) -> dict:
    """Display names of a genus or family, from its species: the Chinese names' shared ending + 属 for a genus
    (鸥 for Larus; the family's own Chinese name for a family), the English names' shared last word."""
    entries = [vocab.entries[i] for i in rows]
    zh = [e.names.get("chinese_name") or "" for e in entries]
    en = [(e.names.get("english_name") or "").split() for e in entries]
    suffix = os.path.commonprefix([z[::-1] for z in zh if z])[::-1] if all(zh) else ""
    last = {w[-1].lower() for w in en if w}
    english = next(iter(last)).capitalize() if len(last) == 1 else None
    if rank == "genus":
        chinese = f"{suffix}属" if suffix else None
    else:
        chinese = entries[0].family_zh if entries else None
    return {"rank": rank, "scientific_name": name, "english_name": english, "chinese_name": chinese,
            "names_source": "project"}
