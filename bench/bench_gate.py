"""The "not a bird" gate: false-bird rate on scikit-image's non-bird sample photos and synthetic images, miss
rate on BIRDS-525 photos (every 5th species, image 4). Species accuracy: bench/bench_species.py.

    python bench/bench_gate.py
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from birdsdao import create_app  # noqa: E402

SHARED = ROOT.parent / "shared"


def skimage_photos() -> dict[str, bytes]:
    """scikit-image's bundled sample pictures (none shows a bird: cat, astronaut, rocket, coffee, ...)."""
    import importlib.util

    folder = Path(importlib.util.find_spec("skimage").origin).parent / "data"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".png", ".jpg", ".gif")}


def synthetic_non_birds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "gradient": np.tile(np.linspace(0, 255, 640).astype(np.uint8), (480, 1)),
        "grey": np.full((480, 640, 3), 128, np.uint8),
    }
    out = {}
    for name, arr in arrays.items():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out[name] = buf.getvalue()
    return out


def gate(app, vision):
    client = app.test_client()

    def is_bird(data: bytes, name: str) -> bool:
        r = client.post("/detect", data={"image": (io.BytesIO(data), name), "annotate": "0"})
        return r.status_code == 200 and r.get_json()["is_bird"]

    non_birds = {**skimage_photos(), **synthetic_non_birds()}
    false_bird = [name for name, data in non_birds.items() if is_bird(data, name)]
    print(f"[gate] false 'bird' on non-bird images: {len(false_bird)}/{len(non_birds)} {false_bird}")
    birds = sorted((SHARED / "datasets" / "birds525-dev").iterdir())[::5]
    missed = [d.name for d in birds if not is_bird((d / "4.jpg").read_bytes(), "4.jpg")]
    print(f"[gate] missed birds: birds525-dev sample (every 5th species, image 4) {len(missed)}/{len(birds)} {missed[:10]}")


def main():
    app = create_app({"INSTANCE_PATH": "/tmp/birdsdao-bench-gate", "SERVICES": ["species", "vision"],
                      "YOLO_WEIGHTS": str(SHARED / "weights" / "yolov8n.pt")})
    with app.app_context():
        vision = app.extensions["birdsdao"].get("vision")
    gate(app, vision)


if __name__ == "__main__":
    main()
