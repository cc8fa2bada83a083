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


def app_config(instance: Path, services=("species",), **config) -> dict:
    """The configuration every test app starts from: a tmp instance folder, the offline detector, only
    ``services``; ``config`` overrides."""
    return {"TESTING": True, "INSTANCE_PATH": str(instance), "YOLO_WEIGHTS": str(YOLO_WEIGHTS),
            "SERVICES": list(services), **config}


@pytest.fixture
def make_app(tmp_path):
    """Build an app with only the services a test needs: ``make_app(services=[...], **config)``."""

    def _make(services=("species",), **config):
        return create_app(app_config(tmp_path / "instance", services, **config))

    return _make


@pytest.fixture(scope="module")
def make_module_app(tmp_path_factory):
    """``make_app`` for module-scoped fixtures (slow services built once per file): a fresh instance folder unless
    ``instance`` names one (a restart), and one exported ONNX detector shared by the whole session."""

    def _make(services=("species",), instance: Path | None = None, **config):
        config.setdefault("DETECTOR_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))
        return create_app(app_config(instance or tmp_path_factory.mktemp("instance"), services, **config))

    return _make


@pytest.fixture
def app(make_app, request):
    """The app a test module describes in ``APP = {"services": [...], "KEY": value}`` (default: species only)."""
    return make_app(**getattr(request.module, "APP", {}))


@pytest.fixture
def client(app):
    return app.test_client()
