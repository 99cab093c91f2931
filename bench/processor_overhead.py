"""Host cost of spaattn's diffusers processors per layer call, next to the GPU time of the call.

A Wan 2.1-shaped self-attention layer (grid 20 x 48 x 80 = 76,800 video tokens, 40 heads of 128,
bf16, batch 1) runs through spaattn's Wan processor with ``method`` at ``sparsity``. Reported per
layer call, medians over ``--iters`` calls:

- ``gpu_ms``: the GPU time of the whole call (CUDA events), spaattn's kernels and the layer's own
  projections, norms and RoPE;
- ``host_us``: host time to enqueue one call of the processor (the GPU idle before it), split
  into the processor's own Python (projections, RoPE, the operator's dispatch) and spaattn's
  call below the operator (``SparseAttention`` and the C++ planning and launches);
- ``hidden``: whether the host time is shorter than the GPU time, i.e. overlapped by it when
  calls are queued back to back (no host synchronisation happens inside a call).

Usage (a CUDA machine with torch, diffusers and spaattn built with CUDA):
    python3 bench/processor_overhead.py [--method rectified] [--sparsity 0.9] [--iters 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import spaattn
import spaattn.diffusers as sd
from spaattn.method import SparseAttention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="rectified", choices=spaattn.METHODS)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--grid", default="20,48,80", help="latent grid T,H,W after patching")
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.iters < 1:
        parser.error("--iters: expected a value >= 1")
    if not torch.cuda.is_available():
        raise SystemExit("processor_overhead: no CUDA device")
    t, h, w = (int(x) for x in args.grid.split(","))
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=128,
        in_channels=16, out_channels=16, text_dim=64, freq_dim=256, ffn_dim=256, num_layers=1,
    ).eval().to("cuda", torch.bfloat16)
    attn = model.blocks[0].attn1
    tokens = t * h * w
    hidden = torch.randn(1, tokens, args.heads * 128, device="cuda", dtype=torch.bfloat16)
    latents = torch.zeros(1, 16, t, 2 * h, 2 * w, device="cuda", dtype=torch.bfloat16)
    rotary = model.rope(latents)

    handle = sd.apply(model, method=args.method, sparsity=args.sparsity, steps="manual")
    control = model._spaattn_control
    control.info = control.adapter.forward_info(model, {"hidden_states": latents})
    processor = attn.processor

    # The time below the operator: SparseAttention._run, timed around each call.
    below: list[float] = []
    run = SparseAttention._run

    def timed_run(self, *a, **k):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        run(self, *a, **k)
        below.append(time.perf_counter() - start)

    SparseAttention._run = timed_run  # type: ignore[method-assign]
    host, gpu = [], []
    try:
        with torch.no_grad():
            for i in range(args.iters + 2):
                torch.cuda.synchronize()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                start = time.perf_counter()
                processor(attn, hidden, rotary_emb=rotary)
                host.append(time.perf_counter() - start)
                end.record()
                torch.cuda.synchronize()
                gpu.append(begin.elapsed_time(end))
                handle.next_step()  # Re-ttention: reference, then sparse steps
    finally:
        SparseAttention._run = run  # type: ignore[method-assign]
        handle.remove()
    host, below, gpu = host[2:], below[2:], gpu[2:]  # the first calls allocate and upload
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "spaattn": spaattn.__version__,
        "method": args.method,
        "sparsity": args.sparsity,
        "tokens": tokens,
        "heads": args.heads,
        "gpu_ms": statistics.median(gpu),
        "host_us": 1e6 * statistics.median(host),
        "host_below_operator_us": 1e6 * statistics.median(below),
        "host_processor_python_us": 1e6 * (statistics.median(host) - statistics.median(below)),
    }
    result["hidden"] = result["host_us"] < 1e3 * result["gpu_ms"]
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
