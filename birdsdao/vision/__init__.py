"""Photo to species: detector, species classifier, naming and annotation."""
from __future__ import annotations


def build(config, services):
    from .pipeline import VisionPipeline

    return VisionPipeline.from_config(config, services)
