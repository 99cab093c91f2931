"""Ulysses sequence parallelism: one attention call on N GPUs against the same call on one.

    torchrun --nproc-per-node 2 bench/ulysses_bench.py [--seq 76800 --heads 40 --grid 20,60,64]
             [--method rectified --sparsity 0.9 --iters 10 --json FILE]

Every rank holds its contiguous shard of one seeded video sequence (bf16, d = 128, batch 1) and
calls spaattn.distributed.UlyssesAttention: the all-to-all of q, k and v to heads, spaattn on the
rank's H / N heads, the all-to-all of the output back. Rank 0 then runs the same calls on the
whole tensors alone. Reported, medians over --iters calls after 3 warm-up calls, each call a new
step (a fresh selection):

- ms per call on N GPUs (wall time between barriers, both all-to-alls included) and on one GPU
  (CUDA events), and the speed-up;
- the parts of the N-GPU call, each timed alone the same way: the exchanges (q, k, v to heads
  and the output back, no attention) and the attention on the local heads (the slowest rank);
  and one bare all-to-all of a shard-sized buffer, with the bandwidth it reaches (bytes leaving
  each rank for the others per second);
- the largest relative difference of the gathered output from the one-GPU output.

Without CUDA it runs on the CPU with gloo (a smoke test: use a small --seq and --grid).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

import spaattn
from spaattn.distributed import (
    UlyssesAttention,
    gather,
    heads_to_sequence,
    sequence_to_heads_many,
    shard,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=76800, help="video tokens (the grid's)")
    parser.add_argument("--grid", default="20,60,64", help="latent grid T,H,W")
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--method", default="rectified", choices=spaattn.METHODS)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", help="rank 0 also writes the results to this file")
    args = parser.parse_args()
    grid = tuple(int(x) for x in args.grid.split(","))
    if len(grid) != 3 or grid[0] * grid[1] * grid[2] != args.seq:
        parser.error(f"--grid: expected T,H,W with T*H*W = --seq {args.seq}, got {args.grid}")
    if args.iters < 1:
        parser.error("--iters: expected a value >= 1")

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32

    g = torch.Generator().manual_seed(0)
    whole = [torch.randn(1, args.seq, args.heads, 128, generator=g).to(device, dtype)
             for _ in range(3)]
    local = [shard(x).contiguous() for x in whole]
    options = dict(sparsity=args.sparsity, grid=grid)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()

    ulysses = UlyssesAttention(spaattn.SparseAttention(args.method, **options))
    times = []
    with torch.no_grad():
        for step in range(args.iters + 3):
            sync()
            start = time.perf_counter()
            out = ulysses(*local, step=step)
            sync()
            times.append(time.perf_counter() - start)
        parallel = gather(out)
        # The parts alone: the exchanges, then the attention on this rank's heads.
        exchange, local_ms = [], []
        heads = sequence_to_heads_many(local, world, None)
        for _ in range(args.iters + 3):
            sync()
            start = time.perf_counter()
            qh, kh, vh = sequence_to_heads_many(local, world, None)
            heads_to_sequence(qh, world, None)
            sync()
            exchange.append(time.perf_counter() - start)
        alone = spaattn.SparseAttention(args.method, **options)
        for step in range(args.iters + 3):
            sync()
            start = time.perf_counter()
            alone(*heads, step=step)
            if cuda:
                torch.cuda.synchronize()
            local_ms.append(time.perf_counter() - start)
        bare = []
        send = torch.empty(local[0].numel(), dtype=dtype, device=device)
        receive = torch.empty_like(send)
        for _ in range(args.iters + 3):
            sync()
            start = time.perf_counter()
            dist.all_to_all_single(receive, send)
            sync()
            bare.append(time.perf_counter() - start)
        del send, receive
        slowest = torch.tensor([statistics.median(local_ms[3:])], device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        del heads, qh, kh, vh
    many_ms = 1e3 * statistics.median(times[3:])
    exchange_ms = 1e3 * statistics.median(exchange[3:])
    local_attention_ms = 1e3 * slowest.item()
    bare_s = statistics.median(bare[3:])
    leaving = local[0].numel() * local[0].element_size() * (world - 1) / world

    if rank == 0:
        single = spaattn.SparseAttention(args.method, **options)
        one = []
        with torch.no_grad():
            for step in range(args.iters + 3):
                if cuda:
                    begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    begin.record()
                    ref = single(*whole, step=step)
                    end.record()
                    torch.cuda.synchronize()
                    one.append(begin.elapsed_time(end))
                else:
                    start = time.perf_counter()
                    ref = single(*whole, step=step)
                    one.append(1e3 * (time.perf_counter() - start))
        one_ms = statistics.median(one[3:])
        diff = ((parallel.float() - ref.float()).norm() / ref.float().norm()).item()
        result = {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "gpus": world if cuda else 0,
            "ranks": world,
            "torch": torch.__version__,
            "method": args.method,
            "sparsity": args.sparsity,
            "seq": args.seq,
            "grid": grid,
            "heads": args.heads,
            "dtype": str(dtype).removeprefix("torch."),
            "ms_parallel": many_ms,
            "ms_exchanges_alone": exchange_ms,
            "ms_local_attention_alone": local_attention_ms,
            "ms_one_all_to_all": 1e3 * bare_s,
            "all_to_all_gb_per_s": leaving / bare_s / 1e9,
            "ms_one": one_ms,
            "speedup": one_ms / many_ms,
            "rel_l2_vs_one": diff,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
