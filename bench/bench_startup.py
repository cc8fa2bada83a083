"""Start-up time and resident memory of one gunicorn worker with every model loaded.

    .venv/bin/python bench/bench_startup.py [--services '["vision"]']

Starts the real gunicorn (gunicorn.conf.py) on a free loopback port, waits for /healthz = 200, then reads
the worker's RSS from /proc and prints the per-service load times that /healthz reports.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", help="JSON list for BIRDSDAO_SERVICES (default: all)")
    parser.add_argument("--yolo", default=str(ROOT.parent / "shared" / "weights" / "yolov8n.pt"))
    args = parser.parse_args()
    port = free_port()
    env = dict(os.environ, BIRDSDAO_YOLO_WEIGHTS=args.yolo,
               BIRDSDAO_INSTANCE_PATH=os.environ.get("BIRDSDAO_INSTANCE_PATH", tempfile.mkdtemp()))
    if args.services:
        env["BIRDSDAO_SERVICES"] = args.services
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                             f"127.0.0.1:{port}", "server:app"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        health = None
        while time.monotonic() - start < 600:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    health = json.loads(r.read())
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        elapsed = time.monotonic() - start
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        worker = int(children[0])
        print(f"start-up to healthy /healthz: {elapsed:.1f} s")
        print(f"gunicorn master RSS: {rss_mib(proc.pid):.0f} MiB; worker RSS (models loaded): {rss_mib(worker):.0f} MiB")
        for name, info in (health or {}).get("models", {}).items():
            print(f"  {name:10s} loaded={info.get('loaded')} load_ms={info.get('load_ms')}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
