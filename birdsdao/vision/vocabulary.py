"""The recognizer's vocabulary: the union of the iNat model's 964 species and the prototype species
(BIRDS-525 + taught), each entry carrying its display names from the species catalogue
(``services.get("species")``, see birdsdao/species/catalog.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

NAME_KEYS = ("label", "scientific_name", "english_name", "chinese_name", "chinese_name_source")


@dataclass
class Entry:
    key: str  # the catalogue's species id, or "taught:<LABEL>" for a species only the user taught
    names: dict
    inat_indices: tuple[int, ...] = ()
    taught: bool = False

    def to_dict(self) -> dict:
        return {**self.names, "taught": self.taught}


@dataclass
class Vocabulary:
    """Entries in a fixed order; ``inat_map[i]`` = entry row of iNat output i (background: -1)."""

    entries: list[Entry] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_catalog(cls, catalog, num_inat: int) -> "Vocabulary":
        vocab = cls()
        for sp in catalog.all():
            vocab.add(Entry(sp.id, sp.names(), tuple(sp.inat_indices)))
        vocab.num_inat = num_inat
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
        import numpy as np

        rows = np.full(num_inat, -1, dtype=np.int64)
        for row, entry in enumerate(self.entries):
            for i in entry.inat_indices:
                if 0 <= i < num_inat:
                    rows[i] = row
        return rows
