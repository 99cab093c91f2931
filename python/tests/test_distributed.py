"""Ulysses sequence parallelism (spaattn.distributed) in 2 processes with the gloo backend on the
CPU: each rank's output shard equals the one-process SparseAttention result on the whole tensors,
for every method over a run of steps with dense warm-up, Re-ttention reference and sparse steps,
text padding and two entries (cond / uncond) per step; and invalid calls raise on every rank
before any communication.

The two ranks run once for the whole module (one spawn, a few seconds): each rank computes both
the distributed result and the one-process reference on the whole tensors, and writes what it
found to a file the tests read. float32 on the CPU: the local heads run the same per-head
computation as the whole tensors, so the shards agree to ATOL (measured: exactly).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import traceback
from typing import Any

import pytest
import spaattn

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

WORLD = 2
ATOL = 1e-5
GRID = (2, 8, 16)  # 256 video tokens, 4 blocks of 64
TEXT = 32
LENGTHS = [32, 9]  # the second batch item's text is padded after 9 tokens
HEADS = 4
STEPS = 5
LAYERS = 2
OPTIONS: dict[str, dict[str, Any]] = {
    "dense": {},
    "sparse": {"sparsity": 0.75, "dense_steps": 1, "mask_period": 2},
    "rectified": {"sparsity": 0.75, "dense_steps": 1, "mask_period": 2},
    "rettention": {"sparsity": 0.75, "dense_steps": 1, "ref_period": 2},
    "rectified_rettention": {"sparsity": 0.75, "dense_steps": 1, "ref_period": 2},
}


def _inputs(shape: tuple[int, ...], layer: int, step: int, entry: int) -> list[Any]:
    """q, k, v of one call: a layer's base inputs drifting a little from step to step, as a
    denoising run's do (entries differ as cond and uncond do)."""
    base = torch.Generator().manual_seed(100 * layer + entry)
    drift = torch.Generator().manual_seed(10_000 + 100 * step + 10 * layer + entry)
    return [torch.randn(shape, generator=base) + 0.1 * torch.randn(shape, generator=drift)
            for _ in range(3)]


def _run_method(method: str, rank: int, layout: str = "bshd", batch: int = 2,
                placement: str = "suffix") -> dict[str, Any]:
    """A run of STEPS steps x LAYERS layers x 2 entries; the largest difference between this
    rank's shard and the reference's, and the kind of every call on both sides."""
    from spaattn.distributed import UlyssesAttention, shard

    seq = GRID[0] * GRID[1] * GRID[2] + TEXT
    shape = (batch, seq, HEADS, 64) if layout == "bshd" else (batch, HEADS, seq, 64)
    lengths = LENGTHS[:batch]
    options = dict(OPTIONS[method], block_size=64, grid=GRID, neighbours=False)
    whole = spaattn.SparseAttention(method, **options)
    parallel = UlyssesAttention(spaattn.SparseAttention(method, **options))
    worst, kinds, local_kinds, density = 0.0, [], [], 1.0
    for step in range(STEPS):
        for layer in range(LAYERS):
            for entry in (0, 1):
                q, k, v = _inputs(shape, layer, step, entry)
                call = {"layer": layer, "step": step, "entry": entry, "num_text": TEXT,
                        "text_lengths": lengths, "text_placement": placement, "layout": layout}
                expected = whole.forward(q, k, v, **call)
                out = parallel.forward(*(shard(x, layout=layout) for x in (q, k, v)), **call)
                assert out.shape == shard(q, layout=layout).shape and out.dtype == q.dtype
                worst = max(worst, (out - shard(expected, layout=layout)).abs().max().item())
                kinds.append(whole.last_stats.kind)
                density = min(density, whole.last_stats.density)
                local_kinds.append(parallel.last_stats.kind)
    return {"worst": worst, "kinds": kinds, "local_kinds": local_kinds, "density": density,
            "states": (parallel.attention.state_count, whole.state_count)}


def _expect_error(call: Any) -> str:
    try:
        call()
    except (TypeError, ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def _errors(rank: int) -> dict[str, Any]:
    """Invalid calls, each raising on every rank before any collective: a later valid call and
    a barrier still complete."""
    from spaattn.distributed import UlyssesAttention, gather, shard

    found: dict[str, Any] = {}
    parallel = UlyssesAttention(spaattn.SparseAttention("rectified", block_size=64, grid=GRID))
    q = torch.randn(1, 144, 3, 64)  # 3 heads on 2 ranks
    found["heads"] = _expect_error(lambda: parallel.forward(q, q, q, num_text=TEXT))
    q = torch.randn(1, 144, HEADS, 64)
    found["grid"] = _expect_error(lambda: parallel.forward(q, q, q, num_text=TEXT + 2))
    found["layout"] = _expect_error(lambda: parallel.forward(q, q, q, layout="sbhd"))
    found["seq"] = _expect_error(lambda: shard(torch.randn(1, 289, HEADS, 64)))
    found["type"] = _expect_error(lambda: UlyssesAttention(object()))  # type: ignore[arg-type]
    out = parallel.forward(q, q, q, num_text=TEXT)
    whole = gather(q)
    expected = spaattn.SparseAttention("rectified", block_size=64, grid=GRID).forward(
        whole, whole, whole, num_text=TEXT)
    found["after"] = (out - shard(expected)).abs().max().item()
    found["gather"] = bool(torch.equal(shard(gather(q)), q))
    dist.barrier()
    return found


def _worker(rank: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results: dict[str, Any] = {}
    try:
        with torch.inference_mode():
            for method in spaattn.METHODS:
                results[method] = _run_method(method, rank)
            # bhsd, text before the video, batch 1 (the exchanges' zero-copy views).
            results["bhsd_prefix"] = _run_method("rectified_rettention", rank, layout="bhsd",
                                                 batch=1, placement="prefix")
            results["bshd_batch1"] = _run_method("rettention", rank, batch=1)
            results["errors"] = _errors(rank)
    except Exception:  # reported by the tests, with the rank
        results["failure"] = traceback.format_exc()
    finally:
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ulysses")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    results = [torch.load(pathlib.Path(folder, f"rank{r}.pt")) for r in range(WORLD)]
    for rank, result in enumerate(results):
        assert "failure" not in result, f"rank {rank}:\n{result['failure']}"
    return results


def _schedule(method: str) -> list[str]:
    """The kind of each step's calls: dense warm-up, then the method's schedule."""
    if method == "dense":
        return ["dense"] * STEPS
    if method in ("sparse", "rectified"):
        return ["dense"] + ["sparse"] * (STEPS - 1)
    return ["dense"] + ["reference" if s % 2 else "sparse" for s in range(1, STEPS)]


@pytest.mark.parametrize("method", spaattn.METHODS)
def test_every_method_over_a_run_matches_one_process(ranks, method):
    for rank, result in enumerate(ranks):
        found = result[method]
        assert found["worst"] <= ATOL, f"rank {rank}: largest difference {found['worst']}"
        expected = [kind for kind in _schedule(method) for _ in range(LAYERS * 2)]
        assert found["kinds"] == expected
        assert found["local_kinds"] == expected
        assert found["states"][0] == found["states"][1]  # one state per (layer, entry)
        assert (found["density"] < 0.75) == (method != "dense"), found["density"]


@pytest.mark.parametrize("case", ["bhsd_prefix", "bshd_batch1"])
def test_layouts_text_placement_and_batch_of_one(ranks, case):
    for rank, result in enumerate(ranks):
        assert result[case]["worst"] <= ATOL, f"rank {rank}: {result[case]['worst']}"
        assert "sparse" in result[case]["kinds"] and "reference" in result[case]["kinds"]


def test_invalid_calls_raise_on_every_rank_before_any_communication(ranks):
    for result in ranks:
        errors = result["errors"]
        assert errors["heads"] == ("ValueError: q: expected a number of heads divisible by the "
                                   "group's size 2, got 3")
        assert errors["seq"] == "ValueError: S: expected a multiple of the group's size 2, got 289"
        assert errors["layout"] == "ValueError: layout: expected 'bshd' or 'bhsd', got 'sbhd'"
        assert errors["type"] == ("TypeError: attention: expected a spaattn.SparseAttention, got "
                                  "object")
        assert errors["grid"].startswith(("ValueError", "RuntimeError")), errors["grid"]
        assert errors["after"] <= ATOL and errors["gather"]
    assert ranks[0]["errors"]["grid"] == ranks[1]["errors"]["grid"]


def _tiny_wan(heads: int) -> Any:
    diffusers = pytest.importorskip("diffusers")
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, rope_max_seq_len=32,
    )


@pytest.mark.parametrize(("degrees", "heads", "message"), [
    ({"ring_degree": 2}, 2, "enable_parallelism: expected ring_degree 1 (spaattn's methods need "
                            "whole rows of the softmax; use ulysses_degree), got 2"),
    ({"ulysses_degree": 2}, 3, "enable_parallelism: expected ulysses_degree dividing the model's "
                               "3 attention heads, got 2"),
    ({"ulysses_degree": 2}, 2, "enable_parallelism: spaattn's diffusers processors do not run "
                               "under context parallelism yet"),
], ids=["ring", "heads", "ulysses"])
def test_diffusers_context_parallelism_is_refused_with_a_clear_error(degrees, heads, message):
    """A transformer with diffusers' context parallelism (enable_parallelism records its config
    on the model): refused by apply() before anything changes, and at the first forward when
    it is enabled after apply()."""
    import spaattn.diffusers
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    config = ParallelConfig(context_parallel_config=ContextParallelConfig(**degrees))
    model = _tiny_wan(heads)
    processors = [block.attn1.processor for block in model.blocks]
    model._parallel_config = config
    with pytest.raises(ValueError, match=re.escape(message)):
        spaattn.diffusers.apply(model)
    assert [block.attn1.processor for block in model.blocks] == processors
    model = _tiny_wan(heads)
    handle = spaattn.diffusers.apply(model, steps="manual")
    model._parallel_config = config
    inputs = {"hidden_states": torch.randn(1, 4, 2, 16, 16),
              "encoder_hidden_states": torch.randn(1, 10, 32), "timestep": torch.tensor([500])}
    with torch.inference_mode(), pytest.raises(ValueError, match=re.escape(message)):
        model(**inputs)
    handle.remove()
