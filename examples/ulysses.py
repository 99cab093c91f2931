"""spaattn with Ulysses sequence parallelism over torch.distributed (docs/distributed.md).

    torchrun --nproc-per-node 2 examples/ulysses.py

Uses NCCL and one GPU per rank when CUDA devices are present, else gloo on the CPU. Every rank
holds a contiguous shard of the sequence (video tokens, then padded text tokens); a run of
Re-ttention steps with classifier-free guidance as two entries goes through UlyssesAttention,
and rank 0 checks the gathered output against one process's SparseAttention on the whole
tensors.
"""

import os

import torch
import torch.distributed as dist

import spaattn
from spaattn.distributed import UlyssesAttention, gather, shard

GRID = (4, 16, 16)  # latent (T, H, W): 1,024 video tokens
TEXT, LENGTHS = 64, [64, 20]  # 64 text tokens after the video, the second item's padded at 20
HEADS, HEAD_DIM, STEPS = 8, 64, 6


def main() -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    options = dict(sparsity=0.75, dense_steps=1, ref_period=2, block_size=64, grid=GRID)
    # One SparseAttention per rank, made alike on every rank: it keeps its heads' state.
    attention = UlyssesAttention(spaattn.SparseAttention("rettention", **options))
    seq = GRID[0] * GRID[1] * GRID[2] + TEXT
    generator = torch.Generator().manual_seed(0)  # the same whole inputs on every rank
    inputs = [torch.randn(2, seq, HEADS, HEAD_DIM, generator=generator).to(device, dtype)
              for _ in range(6)]  # q, k, v of the cond and of the uncond entry
    reference = spaattn.SparseAttention("rettention", **options) if dist.get_rank() == 0 else None
    worst = 0.0
    with torch.inference_mode():
        for step in range(STEPS):
            for entry in (0, 1):
                q, k, v = inputs[3 * entry: 3 * entry + 3]
                call = dict(layer=0, step=step, entry=entry, num_text=TEXT, text_lengths=LENGTHS)
                # This rank's shard of the sequence, [2, seq / N, 8, 64], as a model holds it.
                out = attention(shard(q), shard(k), shard(v), **call)
                whole = gather(out)  # only to compare; a model keeps working on its shard
                if reference is not None:
                    expected = reference.forward(q, k, v, **call)
                    worst = max(worst, (whole.float() - expected.float()).abs().max().item())
            if reference is not None:
                print(f"step {step}: {attention.last_stats.kind}")
    if reference is not None:
        print(f"{dist.get_world_size()} ranks ({dist.get_backend()}): largest difference from one "
              f"process {worst:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
