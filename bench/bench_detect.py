"""Speed of one /detect call (Flask test client, whole path: decode → detect → crop → classify, no
annotation and with it) against a naive ``YOLO("yolov8n.pt").predict(path)`` at default settings, same
photos, same run; plus bird-box recall at the configured input size vs Ultralytics at 640, and the resident
memory the loaded vision models add.

    python bench/bench_detect.py [--repeat 3] [--imgsz 320]
"""
from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stats(ms: list[float]) -> str:
    return f"median {np.median(ms):6.1f} ms  p95 {np.percentile(ms, 95):6.1f} ms"


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=None)
    args = parser.parse_args()
    photos = sorted(p for d in sorted((SHARED / "datasets" / "natural-dev").iterdir()) if d.is_dir() for p in d.iterdir())
    weights = str(SHARED / "weights" / "yolov8n.pt")

    base = rss_mb()
    from birdsdao import create_app

    config = {"INSTANCE_PATH": "/tmp/birdsdao-bench-detect", "SERVICES": ["species", "vision"], "YOLO_WEIGHTS": weights}
    if args.imgsz:
        config["DETECTOR_IMGSZ"] = args.imgsz
    app = create_app(config)
    loaded = rss_mb()
    client = app.test_client()
    with app.app_context():
        vision = app.extensions["birdsdao"].get("vision")
    print(f"vision service: detector {vision.detector.backend} imgsz {vision.detector.imgsz}; "
          f"RSS before create_app {base:.0f} MB, after {loaded:.0f} MB (+{loaded - base:.0f} MB for imports + models)")

    from ultralytics import YOLO

    naive = YOLO(weights)
    naive.predict(str(photos[0]), verbose=False)  # warm-up, as the server warms up at start

    def detect(p: Path, annotate: str):
        t = time.perf_counter()
        r = client.post("/detect", data={"image": (io.BytesIO(p.read_bytes()), p.name), "annotate": annotate})
        assert r.status_code == 200
        return (time.perf_counter() - t) * 1000, r.get_json()

    t_naive, t_ours, t_ours_ann = [], [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits both alike
        for p in photos:
            t = time.perf_counter()
            naive.predict(str(p), verbose=False)
            t_naive.append((time.perf_counter() - t) * 1000)
            t_ours.append(detect(p, "0")[0])
            t_ours_ann.append(detect(p, "1")[0])
    print(f"naive YOLO('yolov8n.pt').predict(path), default settings: {stats(t_naive)}")
    print(f"/detect (detect + classify, annotate=0):                 {stats(t_ours)}  ratio {np.median(t_ours) / np.median(t_naive):.2f}x")
    print(f"/detect (annotate=1):                                    {stats(t_ours_ann)}  ratio {np.median(t_ours_ann) / np.median(t_naive):.2f}x")

    # Recall of bird boxes: reference = Ultralytics at 640 (conf 0.25), box matched at IoU >= 0.5.
    ref_total = hit = 0
    for p in photos:
        ref = naive.predict(str(p), classes=[14], verbose=False)[0].boxes.xyxy.cpu().numpy().tolist()
        ours = [d["box"] for d in detect(p, "0")[1]["detections"] if d["box_confidence"] is not None]
        ref_total += len(ref)
        hit += sum(any(iou(r, o) >= 0.5 for o in ours) for r in ref)
    print(f"bird-box recall vs Ultralytics@640: {hit}/{ref_total} = {hit / max(ref_total, 1):.3f}")


if __name__ == "__main__":
    main()
