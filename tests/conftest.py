"""Shared fixtures: a small configured app on a temporary instance folder, with the real models from
``../shared`` (or ``BIRDSDAO_SHARED``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from birdsdao import create_app
from birdsdao.config import PROJECT_ROOT

SHARED = Path(os.environ.get("BIRDSDAO_SHARED", PROJECT_ROOT.parent / "shared")).resolve()
YOLO_WEIGHTS = SHARED / "weights" / "yolov8n.pt"
BIRDS525 = SHARED / "datasets" / "birds525-dev"
NATURAL = SHARED / "datasets" / "natural-dev"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert YOLO_WEIGHTS.exists(), f"tests need ../shared beside the checkout (looked in {SHARED})"
    return SHARED


@pytest.fixture
def make_app(tmp_path):
    """Build an app with only the services a test needs: ``make_app(services=[...], **config)``."""

    def _make(services=("species",), **config):
        cfg = {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "YOLO_WEIGHTS": str(YOLO_WEIGHTS),
            "SERVICES": list(services),
        }
        cfg.update(config)
        return create_app(cfg)

    return _make
