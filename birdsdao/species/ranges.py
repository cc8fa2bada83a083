"""The location prior: where a photo was taken → one multiplicative weight per species, from the published
range facts in ``data/ranges.csv`` (AVONET, see data/README.md), and the allowlisted regions a client may name.

Rule (per range row; a genus/family class has one row per member species and takes the best):
    south = MIGRANT_SOUTH_DEG for AVONET Migration 3, x PARTIAL_SHARE for 2, else 0  (min_lat moves south)
    reach = SPREAD x sqrt(range_km2 / pi) + PAD_KM + south in km   (a disc as large as the range, widened)
    band  = |longitude difference| in km at the place - (SPREAD x range_km2 / latitude span / 2 + PAD_KM)
    out   = max(0, min(distance to the centroid - reach, band), km outside [min_lat, max_lat])
    w     = FLOOR + (1 - FLOOR) x exp(-(out / FALLOFF_KM)^2)
A species whose range covers the place gets 1.0; one placed far away decays smoothly to FLOOR (never 0:
vagrants and escaped cage birds happen); a species without data keeps 1.0. The band catches ranges long
from north to south (coasts) that the disc misses; the latitude limits cut both where the range ends.
Known limits of centroid data: a Holarctic species whose centroid lies in Eurasia (Common Tern, Greater
Scaup) and introduced populations (Starling and House Sparrow in America) are down-weighted where they do
live. Season: AVONET's ranges are not per season, so the photo's date is reported but not used here.
Parameters measured on natural-val/natural-dev and BIRDS-525 Asian species (bench/bench_location.py).
"""
from __future__ import annotations

import csv
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANGES_FILE = Path(__file__).resolve().parent / "data" / "ranges.csv"
EARTH_KM = 6371.0
KM_PER_DEGREE = math.pi * EARTH_KM / 180

SPREAD = 2.0
PAD_KM = 500.0
# AVONET Migration 3 (migratory) birds are also found this far south of the mapped range (passage, winter);
# Migration 2 (partial migrants) for PARTIAL_SHARE of it.
MIGRANT_SOUTH_DEG = 20.0
PARTIAL_SHARE = 0.5
FALLOFF_KM = 1000.0
FLOOR = 0.05


@dataclass(frozen=True)
class Region:
    name: str
    english: str
    chinese: str
    lat: float
    lon: float

    def to_dict(self) -> dict:
        return {"name": self.name, "english": self.english, "chinese": self.chinese, "lat": self.lat, "lon": self.lon}


# A representative point for each region a client or the deployment (REGION) may name: coarse on purpose,
# the prior's reach is hundreds of kilometres. Names are the allowlist; anything else is refused.
REGIONS: dict[str, Region] = {r.name: r for r in (
    Region("north-america-east", "Eastern North America", "北美东部", 40.7, -74.0),
    Region("north-america-west", "Western North America", "北美西部", 37.8, -122.4),
    Region("central-america", "Central America and the Caribbean", "中美洲及加勒比", 15.0, -87.0),
    Region("south-america", "South America", "南美洲", -15.0, -55.0),
    Region("europe", "Europe", "欧洲", 50.0, 10.0),
    Region("africa", "Sub-Saharan Africa", "撒哈拉以南非洲", -1.0, 30.0),
    Region("middle-east", "Middle East and North Africa", "中东及北非", 30.0, 35.0),
    Region("north-asia", "Siberia and Central Asia", "北亚及中亚", 55.0, 90.0),
    Region("china", "China (east)", "中国（东部）", 31.2, 114.0),
    Region("japan-korea", "Japan and Korea", "日本及朝鲜半岛", 36.5, 133.0),
    Region("south-asia", "South Asia", "南亚", 22.0, 79.0),
    Region("southeast-asia", "Southeast Asia", "东南亚", 10.0, 106.0),
    Region("australia", "Australia", "澳大利亚", -28.0, 145.0),
    Region("new-zealand", "New Zealand", "新西兰", -41.3, 174.8),
)}


def haversine_km(lat, lon, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    p1, p2 = math.radians(lat), np.radians(lats)
    dphi, dlmb = p2 - p1, np.radians(lons - lon)
    a = np.sin(dphi / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


class RangeTable:
    """The rows of ranges.csv as arrays, grouped by species id."""

    def __init__(self, species_ids: list[str], min_lat, max_lat, lat, lon, km2, migration):
        order = np.argsort(np.asarray(species_ids, dtype=object), kind="stable")
        ids = [species_ids[i] for i in order]
        self.min_lat, self.max_lat, self.lat, self.lon, self.km2, migration = (
            np.asarray(a, dtype=np.float64)[order] for a in (min_lat, max_lat, lat, lon, km2, migration))
        south = MIGRANT_SOUTH_DEG * np.where(migration == 3, 1.0, np.where(migration == 2, PARTIAL_SHARE, 0.0))
        self.min_lat = self.min_lat - south
        self.species: list[str] = []
        starts = []
        for i, sid in enumerate(ids):
            if not self.species or self.species[-1] != sid:
                self.species.append(sid)
                starts.append(i)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.index = {sid: i for i, sid in enumerate(self.species)}
        # A range long from north to south (a coast) is narrow for its area: the band of its latitudes,
        # as wide as area / length, reaches places the disc misses.
        span_km = np.maximum(self.max_lat - self.min_lat, 1.0) * KM_PER_DEGREE
        self.half_width = SPREAD * self.km2 / span_km / 2 + PAD_KM
        self.reach = SPREAD * np.sqrt(self.km2 / math.pi) + PAD_KM + south * KM_PER_DEGREE

    @classmethod
    def load(cls, path: str | Path = RANGES_FILE) -> "RangeTable":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        cols = ("min_lat", "max_lat", "centroid_lat", "centroid_lon", "range_km2")
        migration = [float(r["migration"]) if r["migration"] not in ("", "NA") else 0.0 for r in rows]
        return cls([r["species_id"] for r in rows], *([float(r[c]) for r in rows] for c in cols), migration)

    def species_weights(self, lat: float, lon: float) -> np.ndarray:
        """(len(self.species),) weight of each species with data at (lat, lon)."""
        dist = haversine_km(lat, lon, self.lat, self.lon)
        lat_out = np.maximum(0.0, np.maximum(self.min_lat - lat, lat - self.max_lat)) * KM_PER_DEGREE
        dlon = np.abs((lon - self.lon + 180.0) % 360.0 - 180.0)
        band_out = dlon * KM_PER_DEGREE * math.cos(math.radians(lat)) - self.half_width
        out = np.maximum(np.maximum(np.minimum(dist - self.reach, band_out), 0.0), lat_out)
        row_w = FLOOR + (1 - FLOOR) * np.exp(-((out / FALLOFF_KM) ** 2))
        return np.maximum.reduceat(row_w, self.starts) if len(row_w) else row_w

    def columns(self, keys) -> np.ndarray:
        """Each key's row in ``species_weights`` (-1 without range data): computed once per list of keys."""
        return np.asarray([self.index.get(key, -1) for key in keys], dtype=np.int64)

    def weights(self, lat: float, lon: float, keys, columns: np.ndarray | None = None) -> np.ndarray:
        """(len(keys),) weights aligned to ``keys`` (species ids); 1.0 for keys without range data."""
        cols = self.columns(keys) if columns is None else columns
        per_species = self.species_weights(lat, lon)
        return np.where(cols >= 0, per_species[np.maximum(cols, 0)], 1.0) if len(per_species) else np.ones(len(cols))


class LocationPrior:
    """Prior vectors for one fixed list of species ids, cached per place rounded to 0.1 degree (~11 km:
    far finer than the ranges), so repeated requests from one place cost a dictionary look-up."""

    def __init__(self, table: RangeTable, keys, cache_size: int = 256):
        self.table, self.keys = table, tuple(keys)
        self._columns = table.columns(self.keys)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[float, float], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def vector(self, lat: float, lon: float) -> np.ndarray:
        key = (round(float(lat), 1), round(float(lon), 1))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        vec = self.table.weights(key[0], key[1], self.keys, self._columns)
        vec.setflags(write=False)  # shared between requests
        with self._lock:
            self._cache[key] = vec
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vec
