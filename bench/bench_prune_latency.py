"""CPU latency of a pruned classifier vs its parent, timed in alternation in the same process (eager torch
with BN fused, and onnxruntime when ``--onnx`` names both exports). Prints ms and the ratio.

    python bench/bench_prune_latency.py runs/m100/model.pt runs/m100-prune/model.pt [--runs 200] [--threads 1]
        [--onnx runs/onnx-m100/model.onnx runs/onnx-m100-prune/model.onnx]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from birdsdao.train.models import count_params, cpu_latency_ms, load_classifier

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parent", type=Path)
    ap.add_argument("pruned", type=Path)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch/onnxruntime intra-op threads (default: library's)")
    ap.add_argument("--onnx", nargs=2, type=Path, default=None, help="parent.onnx pruned.onnx to time as well")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (a, ca), (b, _) = load_classifier(args.parent), load_classifier(args.pruned)
    imgsz = ca["imgsz"]
    ta, tb = cpu_latency_ms([a, b], imgsz, runs=args.runs, warmup=10)
    print(f"imgsz {imgsz}, {args.runs} alternating runs, torch threads {torch.get_num_threads()}")
    print(f"params        parent {count_params(a):>10,}  pruned {count_params(b):>10,}  ratio {count_params(b) / count_params(a):.3f}")
    print(f"torch (ms)    parent {ta:10.2f}  pruned {tb:10.2f}  ratio {tb / ta:.3f}")
    if args.onnx:
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in args.onnx]
        x = np.random.rand(1, 3, imgsz, imgsz).astype(np.float32)
        times = [[], []]
        for i in range(args.runs + 10):
            for s, t_list in zip(sessions, times):
                t = time.perf_counter()
                s.run(None, {"images": x})
                if i >= 10:
                    t_list.append((time.perf_counter() - t) * 1000)
        oa, ob = (statistics.median(t) for t in times)
        print(f"onnxrt (ms)   parent {oa:10.2f}  pruned {ob:10.2f}  ratio {ob / oa:.3f}")


if __name__ == "__main__":
    main()
