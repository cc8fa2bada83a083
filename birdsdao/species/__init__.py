"""Species names, cards and name resolution: ``get_service("species")`` is a ``SpeciesCatalog``."""
from __future__ import annotations

from .catalog import DATA_FILE, Species, SpeciesCatalog

__all__ = ["Species", "SpeciesCatalog", "build"]


def build(config, services) -> SpeciesCatalog:
    """Load the generated catalogue once per process (``SPECIES_DATA`` overrides the bundled file)."""
    return SpeciesCatalog.load(config["SPECIES_DATA"] or DATA_FILE)
