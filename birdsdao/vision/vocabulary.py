"""The recognizer's vocabulary: the union of the iNat model's 964 species and the prototype species
(BIRDS-525 + taught), each entry carrying its display names. Names come from the species catalogue
(``services.get("species")``); ``TableCatalog`` below is a stand-in with the same methods, read from the
shared reference tables, for servers built without the catalogue service (it goes once the catalogue is on
main)."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

NAME_KEYS = ("label", "scientific_name", "english_name", "chinese_name", "chinese_name_source")


@dataclass
class Entry:
    key: str  # the catalogue's species id, or "taught:<LABEL>" for a species only the user taught
    names: dict
    inat_indices: tuple[int, ...] = ()
    taught: bool = False

    def to_dict(self) -> dict:
        return {**self.names, "taught": self.taught}


@dataclass(frozen=True)
class _TableSpecies:
    id: str
    label: str
    scientific_name: str
    english_name: str
    chinese_name: str | None
    chinese_name_source: str | None
    birds525_label: str | None
    inat_indices: tuple[int, ...]

    def names(self) -> dict:
        return {k: getattr(self, k) for k in NAME_KEYS}


class TableCatalog:
    """Temporary: the subset of ``SpeciesCatalog`` the vision service uses, from the two CSV tables."""

    def __init__(self, data_dir: str | Path):
        data_dir = Path(data_dir)
        self._by_id: dict[str, _TableSpecies] = {}
        self._by_label: dict[str, _TableSpecies] = {}
        self._by_inat: dict[int, _TableSpecies] = {}
        with open(data_dir / "inat_bird_species_reference.csv", encoding="utf-8") as fh:
            inat_rows = [r for r in csv.DictReader(fh) if r["label"] != "background"]
        with open(data_dir / "birds525_species_reference.csv", encoding="utf-8") as fh:
            b525_rows = list(csv.DictReader(fh))
        b525 = {r["label"]: r for r in b525_rows}
        for row in inat_rows:
            label = row["birds525_label"] or None
            chinese = row["chinese_name"] or (b525[label]["chinese_name"] if label else "") or None
            sp = _TableSpecies(
                id=row["scientific_name"], label=label or _make_label(row["english_name"]),
                scientific_name=row["scientific_name"], english_name=row["english_name"], chinese_name=chinese,
                chinese_name_source="published" if chinese else None, birds525_label=label,
                inat_indices=(int(row["index"]),),
            )
            self._add(sp)
        for row in b525_rows:
            if row["label"] in self._by_label:
                continue
            if row["scientific_name"] in self._by_id and row["match"] != "none":  # same species, other label
                self._by_label[row["label"]] = self._by_id[row["scientific_name"]]
                continue
            chinese = row["chinese_name"] or None
            sp = _TableSpecies(
                id=row["scientific_name"] if row["scientific_name"] not in self._by_id else row["label"],
                label=row["label"], scientific_name=row["scientific_name"], english_name=row["english_name"],
                chinese_name=chinese, chinese_name_source="published" if chinese else None,
                birds525_label=row["label"], inat_indices=(),
            )
            self._add(sp)

    def _add(self, sp: _TableSpecies) -> None:
        if sp.id in self._by_id:  # two iNat outputs for one name: keep both indices on one species
            old = self._by_id[sp.id]
            sp = _TableSpecies(**{**old.__dict__, "inat_indices": old.inat_indices + sp.inat_indices})
        self._by_id[sp.id] = sp
        self._by_label[sp.label] = sp
        for i in sp.inat_indices:
            self._by_inat[i] = sp

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self):
        return list(self._by_id.values())

    def get(self, species_id: str):
        return self._by_id.get(species_id)

    def by_label(self, label: str):
        return self._by_label.get(label)

    def by_inat_index(self, index: int):
        return self._by_inat.get(index)

    def resolve(self, text: str):
        text = text.strip()
        return self._by_label.get(_make_label(text)) or self._by_id.get(text)


def _make_label(name: str) -> str:
    return name.upper().replace("'", "").strip()


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
