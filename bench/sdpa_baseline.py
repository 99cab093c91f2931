"""PyTorch SDPA dense baseline for spaattn_bench: the cuDNN and flash back-ends on the shapes
of docs/benchmarks.md, timed like bench/timing.cu (warm-up, CUDA events around each call, calls queued
back to back, median of >= 10 calls), written as JSON that `spaattn_bench --baseline` reads.

Example: python3 bench/sdpa_baseline.py --json sdpa.json
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (name, S, H): the shapes of spaattn_bench (docs/benchmarks.md), batch 1.
SHAPES = [("S=32768,H=24", 32768, 24), ("S=76800,H=40", 76800, 40), ("S=119056,H=24", 119056, 24)]
BACKENDS = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]


def time_calls(fn, warmup=3, iters=10, warmup_ms=300.0):
    """As bench/timing.cu: warm-up (>= warmup calls and warmup_ms), then the timed calls queued
    back to back with an event pair each and one synchronisation, and their median."""
    spent, done = 0.0, 0
    while done < warmup or spent < warmup_ms:
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        spent += start.elapsed_time(stop)
        done += 1
    events = []
    for _ in range(max(iters, 10)):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        events.append((start, stop))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def mark(path, kind, label):
    if path:
        with open(path, "a") as f:
            f.write(f"{time.time():.3f} {kind} {label}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--quick", action="store_true", help="first shape only")
    ap.add_argument("--shape", default="", help="only the shapes whose name contains this text")
    ap.add_argument("--head-dim", default="128", help="head dims, comma-separated (e.g. 128,64)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--marks", default="",
                    help="append '<unix seconds> begin|end <label>' around each timed measurement "
                         "(warm-up included), for scripts/power_summary.py")
    args = ap.parse_args()
    shapes = [s for s in (SHAPES[:1] if args.quick else SHAPES) if args.shape in s[0]]
    results = []
    for name, s, h, d in ((*sh, int(d)) for sh in shapes for d in args.head_dim.split(",")):
        gen = torch.Generator(device="cuda").manual_seed(0)
        # [b, H, S, d], random (never zeros), bf16.
        q, k, v = (torch.rand(1, h, s, d, device="cuda", generator=gen, dtype=torch.float32)
                   .mul_(2).sub_(1).to(torch.bfloat16) for _ in range(3))
        for backend, kind in BACKENDS:
            label = f"sdpa {backend} d={d} {name}"
            mark(args.marks, "begin", label)
            try:
                with sdpa_kernel(kind):
                    ms = time_calls(lambda: F.scaled_dot_product_attention(q, k, v), iters=args.iters)
            except RuntimeError as e:
                print(f"{name} {backend}: not run ({str(e).splitlines()[0]})", file=sys.stderr)
                continue
            finally:
                mark(args.marks, "end", label)
            tflops = 4.0 * s * s * d * h / (ms * 1e9)
            print(f"{name} {backend}: {ms:.2f} ms, {tflops:.1f} TFLOP/s", file=sys.stderr)
            results.append({"shape": name, "S": s, "H": h, "d": d, "backend": backend,
                            "ms": ms, "tflops": tflops})
        del q, k, v
        torch.cuda.empty_cache()
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
