"""Ulysses sequence parallelism (spaattn.distributed) in 2 processes with the gloo backend on the
CPU: each rank's output shard equals the one-process SparseAttention result on the whole tensors,
for every method over a run of steps with dense warm-up, Re-ttention reference and sparse steps,
text padding and two entries (cond / uncond) per step; and invalid calls raise on every rank
before any communication.

The two ranks run once for the whole module (one spawn, a few seconds): each rank computes both
the distributed result and the one-process reference on the whole tensors, and writes what it
found to a file the tests read. float32 on the CPU: the local heads run the same per-head
computation as the whole tensors, so the shards agree to ATOL (measured: exactly).

The same spawn runs spaattn.diffusers under diffusers' context parallelism
(ContextParallelConfig(ulysses_degree=2)): tiny random Wan and Flux transformers give the
one-process model's output (Wan: exactly; Flux: 5.4e-7, as diffusers' own Ulysses attention
on it, from the shards' matrix products), and the configs spaattn cannot run are refused on
every rank.
"""

from __future__ import annotations

import datetime
import json
import math
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

# SPAATTN_DIST_BACKEND=nccl: the same tests on two GPUs (one process per GPU) in bfloat16.
BACKEND = os.environ.get("SPAATTN_DIST_BACKEND", "gloo")
if BACKEND not in ("gloo", "nccl"):
    raise ValueError(f"SPAATTN_DIST_BACKEND: expected gloo or nccl, got {BACKEND!r}")
if not (dist.is_available() and (dist.is_nccl_available() if BACKEND == "nccl"
                                 else dist.is_gloo_available())):
    pytest.skip(f"torch.distributed with the {BACKEND} backend is not available",
                allow_module_level=True)
if BACKEND == "nccl" and torch.cuda.device_count() < 2:
    pytest.skip("SPAATTN_DIST_BACKEND=nccl needs two CUDA devices", allow_module_level=True)
GPU = BACKEND == "nccl"
DTYPE = torch.bfloat16 if GPU else torch.float32

WORLD = 2
METHODS = list(spaattn.METHODS)
# The largest difference of a rank's output from the one-process output of the same device:
# float32 on the CPU (measured: 0.0); bfloat16 on the GPUs: two units in the last place of a
# bfloat16 value below 2 (2 * 2**-7; attention outputs are averages of v ~ N(0, 1)).
ATOL = 2 * 2.0**-7 if GPU else 1e-5
# Whole videos through tiny pipelines: PSNR of the N-rank video against the one-process video.
MIN_PSNR = 40.0
GRID = (2, 8, 16)  # 256 video tokens, 4 blocks of 64
TEXT = 32
LENGTHS = [32, 9]  # the second batch item's text is padded after 9 tokens
HEADS = 4
STEPS = 5
LAYERS = 2
DIFFUSERS_STEPS = 4
OPTIONS: dict[str, dict[str, Any]] = {
    "dense": {},
    "sparse": {"sparsity": 0.75, "dense_steps": 1, "mask_period": 2},
    "rectified": {"sparsity": 0.75, "dense_steps": 1, "mask_period": 2},
    "rettention": {"sparsity": 0.75, "dense_steps": 1, "ref_period": 2},
    "rectified_rettention": {"sparsity": 0.75, "dense_steps": 1, "ref_period": 2},
    "calibrated": {"sparsity": 0.75, "dense_steps": 1, "ref_period": 2},
}


def _device() -> Any:
    return torch.device("cuda", torch.cuda.current_device()) if GPU else torch.device("cpu")


def _to(x: Any) -> Any:
    """A CPU tensor made here on the rank's device (floating tensors in DTYPE); others as
    they are."""
    if not isinstance(x, torch.Tensor):
        return x
    return x.to(_device(), DTYPE if x.is_floating_point() else x.dtype)


def _inputs(shape: tuple[int, ...], layer: int, step: int, entry: int) -> list[Any]:
    """q, k, v of one call: a layer's base inputs drifting a little from step to step, as a
    denoising run's do (entries differ as cond and uncond do)."""
    base = torch.Generator().manual_seed(100 * layer + entry)
    drift = torch.Generator().manual_seed(10_000 + 100 * step + 10 * layer + entry)
    return [_to(torch.randn(shape, generator=base) + 0.1 * torch.randn(shape, generator=drift))
            for _ in range(3)]


def _run_method(method: str, rank: int, layout: str = "bshd", batch: int = 2,
                placement: str = "suffix") -> dict[str, Any]:
    """A run of STEPS steps x LAYERS layers x 2 entries; the largest difference between this
    rank's shard and the reference's, and the kind of every call on both sides."""
    from spaattn.distributed import UlyssesAttention, shard

    seq = GRID[0] * GRID[1] * GRID[2] + TEXT
    shape = (batch, seq, HEADS, 64) if layout == "bshd" else (batch, HEADS, seq, 64)
    lengths = LENGTHS[:batch]
    options = dict(OPTIONS[method], block_size=64, grid=GRID, neighbours=False,
                   measure_density=True)
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
                diff = (out.float() - shard(expected, layout=layout).float()).abs().max()
                worst = max(worst, diff.item())
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
    q = _to(torch.randn(1, 144, 3, 64))  # 3 heads on 2 ranks
    found["heads"] = _expect_error(lambda: parallel.forward(q, q, q, num_text=TEXT))
    q = _to(torch.randn(1, 144, HEADS, 64, generator=torch.Generator().manual_seed(rank)))
    found["grid"] = _expect_error(lambda: parallel.forward(q, q, q, num_text=TEXT + 2))
    found["layout"] = _expect_error(lambda: parallel.forward(q, q, q, layout="sbhd"))
    found["seq"] = _expect_error(lambda: shard(_to(torch.randn(1, 289, HEADS, 64))))
    found["type"] = _expect_error(lambda: UlyssesAttention(object()))  # type: ignore[arg-type]
    out = parallel.forward(q, q, q, num_text=TEXT)
    whole = gather(q)
    expected = spaattn.SparseAttention("rectified", block_size=64, grid=GRID).forward(
        whole, whole, whole, num_text=TEXT)
    found["after"] = (out.float() - shard(expected).float()).abs().max().item()
    found["gather"] = bool(torch.equal(shard(gather(q)), q))
    dist.barrier()
    return found


def _tiny_wan(heads: int = 2, layers: int = 1) -> Any:
    import diffusers

    torch.manual_seed(0)  # the same weights in every model and on every rank
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=layers,
        rope_max_seq_len=32,
    ).eval().to(_device(), DTYPE)


def _tiny_flux() -> Any:
    import diffusers

    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=False, axes_dims_rope=(16, 24, 24),
    ).eval().to(_device(), DTYPE)


def _moved(inputs: dict[str, Any]) -> dict[str, Any]:
    return {name: _to(x) for name, x in inputs.items()}


def _tiny_hunyuan() -> Any:
    import diffusers

    torch.manual_seed(0)
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(16, 24, 24),
    ).eval().to(_device(), DTYPE)


def _hunyuan_inputs(step: int, entry: int) -> dict[str, Any]:
    """Two batch items of grid (2, 16, 16), 512 video tokens, and 12 text tokens, the second
    item's padded after 9 (the key mask spaattn reads the lengths from)."""
    base, drift = torch.Generator().manual_seed(1), torch.Generator().manual_seed(10 + step)
    text = torch.Generator().manual_seed(entry)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    return _moved({"hidden_states": torch.randn(2, 4, 2, 32, 32, generator=base)
                   + 0.1 * torch.randn(2, 4, 2, 32, 32, generator=drift),
                   "encoder_hidden_states": torch.randn(2, 12, 32, generator=text),
                   "encoder_attention_mask": mask,
                   "pooled_projections": torch.randn(2, 16, generator=text),
                   "guidance": torch.full((2,), 6000.0),
                   "timestep": torch.full((2,), 900 - 100 * step), "return_dict": False})


def _wan_inputs(step: int, entry: int) -> dict[str, Any]:
    """One forward's inputs: grid (2, 16, 16), 512 video tokens (8 blocks of 64); the latents
    drift from step to step, the two entries (cond / uncond) have different text."""
    base, drift = torch.Generator().manual_seed(1), torch.Generator().manual_seed(10 + step)
    return _moved({"hidden_states": torch.randn(1, 4, 2, 32, 32, generator=base)
                   + 0.1 * torch.randn(1, 4, 2, 32, 32, generator=drift),
                   "encoder_hidden_states": torch.randn(
                       1, 10, 32, generator=torch.Generator().manual_seed(entry)),
                   "timestep": torch.tensor([900 - 100 * step]), "return_dict": False})


def _flux_inputs(step: int, entry: int) -> dict[str, Any]:
    """16 x 16 packed image tokens (4 blocks of 64) after 8 text tokens."""
    base, drift = torch.Generator().manual_seed(1), torch.Generator().manual_seed(10 + step)
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    text = torch.Generator().manual_seed(entry)
    return _moved({"hidden_states": torch.randn(1, 256, 16, generator=base)
                   + 0.1 * torch.randn(1, 256, 16, generator=drift),
                   "encoder_hidden_states": torch.randn(1, 8, 32, generator=text),
                   "pooled_projections": torch.randn(1, 16, generator=text),
                   "timestep": torch.tensor([0.9 - 0.1 * step]), "img_ids": img_ids,
                   "txt_ids": torch.zeros(8, 3), "return_dict": False})


def _enable(model: Any, **degrees: int) -> None:
    """diffusers' enable_parallelism with the plan spaattn gives for the model (diffusers' own
    for Wan and Flux); on the CPU diffusers picks the device as rank % the accelerators' count,
    which is 0 without an accelerator (counted as 1 here)."""
    from unittest import mock

    import spaattn.diffusers
    from diffusers.models._modeling_parallel import ContextParallelConfig

    plan = spaattn.diffusers.context_parallel_plan(model)
    count = torch.accelerator.device_count
    with mock.patch.object(torch.accelerator, "device_count", lambda: max(1, count())):
        model.enable_parallelism(config=ContextParallelConfig(**degrees), cp_plan=plan)


def _diffusers_run(make: Any, inputs: Any, method: str, before: bool) -> dict[str, Any]:
    """A run of DIFFUSERS_STEPS steps x 2 entries of a tiny transformer with spaattn, with
    ulysses_degree 2 (enabled before or after apply) and in one process (a copy of the same
    weights on each rank); then both with the stock processors put back."""
    import spaattn.diffusers

    options = {"method": method, "sparsity": 0.75, "block_size": 64, "dense_steps": 1,
               "mask_period": 2, "ref_period": 2, "neighbours": False, "steps": "manual",
               "measure_density": True}
    single, parallel = make(), make()
    if before:
        _enable(parallel, ulysses_degree=WORLD)
    handles = [spaattn.diffusers.apply(model, **options) for model in (single, parallel)]
    if not before:
        _enable(parallel, ulysses_degree=WORLD)
    worst, scale, kinds, density = 0.0, 0.0, [], 1.0
    for step in range(DIFFUSERS_STEPS):
        for entry in (0, 1):
            expected = single(**inputs(step, entry))[0].float()
            out = parallel(**inputs(step, entry))[0].float()
            worst = max(worst, (out - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())
            stats = [handle.stats() for handle in handles]
            kinds.append([[s.kind for _, s in sorted(found.items())] for found in stats])
            density = min(density, *(s.density for s in stats[1].values()))
        for handle in handles:
            handle.next_step()
    for handle in handles:
        handle.remove()
    # The stock processors put back carry the model's context parallel config (Wan, Flux);
    # HunyuanVideo's goes back to one process with spaattn's plan taken off.
    stock = (parallel(**inputs(0, 0))[0].float()
             - single(**inputs(0, 0))[0].float()).abs().max().item()
    layers = spaattn.diffusers.ADAPTERS[type(parallel).__name__].layers(parallel)
    return {"worst": worst, "scale": scale, "kinds": kinds, "density": density, "stock": stock,
            "still_parallel": parallel._parallel_config is not None,
            "stock_configs": [getattr(m.processor, "_parallel_config", None) is not None
                              for m in layers]}


def _diffusers_refusals() -> dict[str, str]:
    """apply() on transformers with diffusers' context parallelism it cannot run: the error
    on every rank, nothing changed."""
    import spaattn.diffusers

    found = {}
    for name, heads, degrees in (("ring", 2, {"ring_degree": WORLD}),
                                 ("heads", 3, {"ulysses_degree": WORLD})):
        model = _tiny_wan(heads)
        _enable(model, **degrees)
        processors = [block.attn1.processor for block in model.blocks]
        found[name] = _expect_error(lambda m=model: spaattn.diffusers.apply(m))
        assert [block.attn1.processor for block in model.blocks] == processors
    dist.barrier()
    return found


PIPELINE_STEPS = 5


def _wan_pipeline() -> tuple[Any, dict[str, Any]]:
    """A tiny random Wan 2.1 text-to-video pipeline with its VAE (no text encoder: the prompt
    embeddings are given): 9 frames of 128 x 192, 3 x 8 x 12 = 288 video tokens, classifier-free
    guidance (a cond and an uncond forward per step)."""
    import diffusers

    transformer = _tiny_wan(layers=2)
    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1],
                                     num_res_blocks=1, temperal_downsample=[False, True, True],
                                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = diffusers.WanPipeline(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae.eval(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    g = torch.Generator().manual_seed(1)
    prompt, negative = (torch.randn(1, 10, 32, generator=g) for _ in range(2))
    return pipe, {"prompt_embeds": _to(prompt), "negative_prompt_embeds": _to(negative),
                  "height": 128, "width": 192, "num_frames": 9, "guidance_scale": 5.0}


def _hunyuan_pipeline() -> tuple[Any, dict[str, Any]]:
    """A tiny random HunyuanVideo pipeline with its VAE (no text encoders): 9 frames of
    128 x 192 (288 video tokens), 12 text tokens padded after 9 (cond) and 5 (uncond), true
    classifier-free guidance."""
    import diffusers

    transformer = _tiny_hunyuan()
    vae = diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, mid_block_add_attention=False)
    pipe = diffusers.HunyuanVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae.eval(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), text_encoder_2=None,
        tokenizer_2=None)
    g = torch.Generator().manual_seed(1)
    prompt, negative = (torch.randn(1, 12, 32, generator=g) for _ in range(2))
    pooled, negative_pooled = (torch.randn(1, 16, generator=g) for _ in range(2))
    mask, negative_mask = (torch.ones(1, 12, dtype=torch.long) for _ in range(2))
    mask[:, 9:], negative_mask[:, 5:] = 0, 0
    return pipe, _moved({
        "prompt_embeds": prompt, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask,
        "negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled,
        "negative_prompt_attention_mask": negative_mask, "true_cfg_scale": 2.0,
        "guidance_scale": 6.0, "height": 128, "width": 192, "num_frames": 9})


def _video(make: Any, method: str, parallel: bool) -> tuple[torch.Tensor, float]:
    """The decoded video ([frames, 3, H, W] in [0, 1]) of a whole run of a tiny pipeline with
    spaattn (steps from the scheduler), with ulysses_degree 2 or in one process; and the
    smallest mask density of the run's calls."""
    import spaattn.diffusers

    pipe, kwargs = make()
    pipe.vae.to(_device(), DTYPE)
    pipe.set_progress_bar_config(disable=True)
    if parallel:
        _enable(pipe.transformer, ulysses_degree=WORLD)
    handle = spaattn.diffusers.apply(pipe, method=method, sparsity=0.75, block_size=64,
                                     dense_steps=1, ref_period=2, neighbours=False,
                                     measure_density=True)
    density = [1.0]
    record = pipe.scheduler.step

    def step(*args: Any, **kw: Any) -> Any:
        density.extend(s.density for s in handle.stats().values())
        return record(*args, **kw)

    pipe.scheduler.step = step
    frames = pipe(**kwargs, num_inference_steps=PIPELINE_STEPS, output_type="pt",
                  generator=torch.Generator().manual_seed(0), return_dict=False)[0]
    if (pipe.transformer._parallel_config is not None) != parallel:
        raise AssertionError(f"context parallelism: expected {parallel}")
    handle.remove()
    return frames[0].float().cpu(), min(density)


def _pipeline_psnr(make: Any, method: str) -> dict[str, Any]:
    """PSNR of a tiny pipeline's video with ulysses_degree 2 against the one-process video."""
    single, density = _video(make, method, parallel=False)
    parallel, _ = _video(make, method, parallel=True)
    mse = (parallel - single).square().mean().item()
    return {"psnr": math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
            "max_diff": (parallel - single).abs().max().item(),
            "range": (single.min().item(), single.max().item()),
            "shape": tuple(single.shape), "density": density}


def _diffusers_sections(rank: int) -> dict[str, Any]:
    """The diffusers sections of the worker (none without diffusers: their tests skip)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return {}
    sections: dict[str, Any] = {
        "wan_rectified": lambda: _diffusers_run(_tiny_wan, _wan_inputs, "rectified", False),
        "wan_rettention": lambda: _diffusers_run(_tiny_wan, _wan_inputs, "rettention", True),
        "flux_rectified_rettention": lambda: _diffusers_run(
            _tiny_flux, _flux_inputs, "rectified_rettention", False),
        "hunyuan_rectified": lambda: _diffusers_run(_tiny_hunyuan, _hunyuan_inputs,
                                                    "rectified", True),
        "hunyuan_rettention": lambda: _diffusers_run(_tiny_hunyuan, _hunyuan_inputs,
                                                     "rettention", False),
        "refusals": _diffusers_refusals,
    }
    for name, make in (("wan", _wan_pipeline), ("hunyuan", _hunyuan_pipeline)):
        for method in ("rectified", "rettention"):
            sections[f"pipeline_{name}_{method}"] = (
                lambda make=make, method=method: _pipeline_psnr(make, method))
    return sections


def _worker(rank: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)
    if GPU:
        torch.cuda.set_device(rank)
    dist.init_process_group(BACKEND, init_method=f"file://{store}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    results: dict[str, Any] = {}
    sections = {method: lambda m=method: _run_method(m, rank) for method in METHODS}
    sections.update({
        # bhsd, text before the video, batch 1 (the exchanges' zero-copy views).
        "bhsd_prefix": lambda: _run_method("rectified_rettention", rank, layout="bhsd",
                                           batch=1, placement="prefix"),
        "bshd_batch1": lambda: _run_method("rettention", rank, batch=1),
        "errors": lambda: _errors(rank),
    })
    sections.update(_diffusers_sections(rank))
    try:
        for name, section in sections.items():
            # Each section reports its own failure and the others still run, as long as the
            # ranks agree on it (spaattn checks every call on each rank before communicating,
            # so its errors come on every rank); after a section that failed on one rank only,
            # the ranks' collectives would no longer pair up, so the rest is not run.
            try:
                with torch.inference_mode():
                    results[name] = section()
                failed = 0
            except Exception:
                results[name] = {"failure": traceback.format_exc()}
                failed = 1
            flags = torch.tensor([failed, 1 - failed], device=_device())
            dist.all_reduce(flags)
            if flags.min().item() > 0:
                for rest in list(sections)[list(sections).index(name) + 1:]:
                    results[rest] = {"failure": f"not run: section {name} failed on some "
                                                "ranks only"}
                break
    finally:
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ulysses")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(pathlib.Path(folder, f"rank{r}.pt")) for r in range(WORLD)]


def _section(ranks: list[dict[str, Any]], name: str) -> list[Any]:
    """One section's result on every rank; a section that raised fails its tests only."""
    for rank, result in enumerate(ranks):
        found = result[name]
        assert not (isinstance(found, dict) and "failure" in found), (
            f"rank {rank}:\n{found['failure']}")
    return [result[name] for result in ranks]


def _schedule(method: str) -> list[str]:
    """The kind of each step's calls: dense warm-up, then the method's schedule."""
    if method == "dense":
        return ["dense"] * STEPS
    if method in ("sparse", "rectified"):
        return ["dense"] + ["sparse"] * (STEPS - 1)
    return ["dense"] + ["reference" if s % 2 else "sparse" for s in range(1, STEPS)]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_over_a_run_matches_one_process(ranks, method):
    for rank, found in enumerate(_section(ranks, method)):
        assert found["worst"] <= ATOL, f"rank {rank}: largest difference {found['worst']}"
        expected = [kind for kind in _schedule(method) for _ in range(LAYERS * 2)]
        assert found["kinds"] == expected
        assert found["local_kinds"] == expected
        assert found["states"][0] == found["states"][1]  # one state per (layer, entry)
        assert (found["density"] < 0.75) == (method != "dense"), found["density"]


@pytest.mark.parametrize("case", ["bhsd_prefix", "bshd_batch1"])
def test_layouts_text_placement_and_batch_of_one(ranks, case):
    for rank, found in enumerate(_section(ranks, case)):
        assert found["worst"] <= ATOL, f"rank {rank}: {found['worst']}"
        assert "sparse" in found["kinds"] and "reference" in found["kinds"]


def test_invalid_calls_raise_on_every_rank_before_any_communication(ranks):
    found = _section(ranks, "errors")
    for errors in found:
        assert errors["heads"] == ("ValueError: q: expected a number of heads divisible by the "
                                   "group's size 2, got 3")
        assert errors["seq"] == "ValueError: S: expected a multiple of the group's size 2, got 289"
        assert errors["layout"] == "ValueError: layout: expected 'bshd' or 'bhsd', got 'sbhd'"
        assert errors["type"] == ("TypeError: attention: expected a spaattn.SparseAttention, got "
                                  "object")
        assert errors["grid"].startswith(("ValueError", "RuntimeError")), errors["grid"]
        assert errors["after"] <= ATOL and errors["gather"]
    assert found[0]["grid"] == found[1]["grid"]


# Relative to the output's largest magnitude (measured: see the docs). In bfloat16 the shards'
# matrix products round differently from the whole sequence's: 2**-6, four units in the last
# place at the largest magnitude.
DIFFUSERS_ATOL = 2.0**-6 if GPU else 1e-5


def _diffusers_section(ranks: list[dict[str, Any]], name: str) -> list[Any]:
    pytest.importorskip("diffusers")
    return _section(ranks, name)


def _diffusers_schedule(method: str, layers: int) -> list[list[str]]:
    kinds = {"rectified": ["dense"] + ["sparse"] * (DIFFUSERS_STEPS - 1),
             "rettention": ["dense", "reference", "sparse", "reference"],
             "rectified_rettention": ["dense", "reference", "sparse", "reference"]}[method]
    return [[[kind] * layers] * 2 for kind in kinds for _ in (0, 1)]


@pytest.mark.parametrize(("case", "layers"), [
    ("wan_rectified", 1), ("wan_rettention", 1), ("flux_rectified_rettention", 2),
    ("hunyuan_rectified", 2), ("hunyuan_rettention", 2),
])
def test_diffusers_ulysses_matches_one_process(ranks, case, layers):
    """A tiny random transformer with ContextParallelConfig(ulysses_degree=2) and spaattn
    (enabled after apply for rectified, before it for rettention) gives the one-process output
    over a run of steps with two entries each, with the same schedule of dense, reference and
    sparse calls; with the stock processors put back it still matches (HunyuanVideo: back in
    one process, spaattn's plan taken off)."""
    for rank, found in enumerate(_diffusers_section(ranks, case)):
        assert found["worst"] <= DIFFUSERS_ATOL * found["scale"], (rank, found["worst"])
        assert found["stock"] <= DIFFUSERS_ATOL * found["scale"], (rank, found["stock"])
        # HunyuanVideo is back in one process: no stock processor keeps a parallel config.
        assert found["still_parallel"] == (not case.startswith("hunyuan"))
        assert found["stock_configs"] == [found["still_parallel"]] * layers
        assert found["kinds"] == _diffusers_schedule(case.split("_", 1)[1], layers)
        assert found["density"] < 0.75, found["density"]


@pytest.mark.parametrize("case", ["wan_rectified", "wan_rettention", "hunyuan_rectified",
                                  "hunyuan_rettention"])
def test_pipelines_with_ulysses_give_the_one_process_video(ranks, case):
    """A whole run of a tiny random Wan 2.1 / HunyuanVideo pipeline (VAE included) with
    ulysses_degree 2 decodes to the one-process video: PSNR >= MIN_PSNR on every rank, with
    sparse calls in the run. SPAATTN_DIST_REPORT=FILE appends the measured values as JSON."""
    found = _diffusers_section(ranks, f"pipeline_{case}")
    report = os.environ.get("SPAATTN_DIST_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"backend": BACKEND, "dtype": str(DTYPE), "case": case,
                                **found[0]}) + "\n")
    for rank, result in enumerate(found):
        assert result["psnr"] >= MIN_PSNR, (rank, result)
        assert result["density"] < 0.75, result["density"]


def test_diffusers_context_parallelism_refusals_on_every_rank(ranks):
    for result in _diffusers_section(ranks, "refusals"):
        assert result == {
            "ring": "ValueError: enable_parallelism: expected ring_degree 1 (spaattn's methods "
                    "need whole rows of the softmax; use ulysses_degree), got 2",
            "heads": "ValueError: enable_parallelism: expected ulysses_degree dividing the "
                     "model's 3 attention heads, got 2",
        }


def _tiny(name: str) -> Any:
    diffusers = pytest.importorskip("diffusers")
    if name.startswith("HunyuanVideo"):
        replace = {"image_condition_type": "token_replace"} if name.endswith("I2V") else {}
        return diffusers.HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64,
            num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
            patch_size_t=1, text_embed_dim=32, pooled_projection_dim=16,
            rope_axes_dim=(16, 24, 24), **replace)
    if name == "CogVideoX":
        return diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4,
            time_embed_dim=32, text_embed_dim=32, num_layers=1, sample_width=16,
            sample_height=16, sample_frames=5, patch_size=2, max_text_seq_length=8)
    if name == "PixArt":
        return diffusers.PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=8,
            num_layers=1, cross_attention_dim=128, sample_size=16, patch_size=2,
            caption_channels=32)
    return _tiny_wan(int(name.removeprefix("Wan")))


UNSUPPORTED = ("enable_parallelism: spaattn runs diffusers' context parallelism in Wan, Flux and "
               "HunyuanVideo transformers only, got {}; in model code of your own use "
               "spaattn.distributed.UlyssesAttention")
NO_PLAN = ("enable_parallelism: expected cp_plan=spaattn.diffusers.context_parallel_plan("
           "transformer) for HunyuanVideo, got a plan that does not split or gather at "
           "'x_embedder'")


@pytest.mark.parametrize(("model", "degrees", "message"), [
    ("Wan2", {"ring_degree": 2}, "enable_parallelism: expected ring_degree 1 (spaattn's methods "
                                 "need whole rows of the softmax; use ulysses_degree), got 2"),
    ("Wan2", {"ulysses_degree": 2, "ulysses_anything": True},
     "enable_parallelism: expected ulysses_anything=False (spaattn needs equal sequence shards "
     "and heads divisible by ulysses_degree), got True"),
    ("Wan3", {"ulysses_degree": 2}, "enable_parallelism: expected ulysses_degree dividing the "
                                    "model's 3 attention heads, got 2"),
    ("HunyuanVideo", {"ulysses_degree": 2}, NO_PLAN),
    ("HunyuanVideoI2V", {"ulysses_degree": 2},
     "enable_parallelism: expected a HunyuanVideo transformer without "
     "image_condition_type='token_replace' (its first-frame tokens are not split), got "
     "'token_replace'"),
    ("CogVideoX", {"ulysses_degree": 2}, UNSUPPORTED.format("CogVideoX")),
    ("PixArt", {"ulysses_degree": 2}, UNSUPPORTED.format("PixArt")),
    ("Wan2", {"ulysses_degree": 2}, "enable_parallelism: expected a context parallel config set "
                                    "up by enable_parallelism, got one without a device mesh"),
], ids=["ring", "anything", "heads", "hunyuan_video", "hunyuan_video_i2v", "cogvideox", "pixart",
        "no_mesh"])
def test_diffusers_context_parallelism_is_refused_with_a_clear_error(model, degrees, message):
    """A transformer whose context parallel config spaattn cannot run (the config recorded on
    the model as enable_parallelism records it, in one process): refused by apply() before
    anything changes, and at the first forward when it is recorded after apply()."""
    import spaattn.diffusers
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    config = ParallelConfig(context_parallel_config=ContextParallelConfig(**degrees))
    transformer = _tiny(model)
    modules = spaattn.diffusers.ADAPTERS[type(transformer).__name__].layers(transformer)
    processors = [module.processor for module in modules]
    transformer._parallel_config = config
    with pytest.raises(ValueError, match=re.escape(message)):
        spaattn.diffusers.apply(transformer)
    assert [module.processor for module in modules] == processors
    if model != "Wan2":
        return
    transformer = _tiny(model)
    handle = spaattn.diffusers.apply(transformer, steps="manual")
    transformer._parallel_config = config
    with torch.inference_mode(), pytest.raises(ValueError, match=re.escape(message)):
        transformer(**_wan_inputs(0, 0))
    handle.remove()


def test_context_parallel_plan_for_each_model():
    """spaattn's plan for HunyuanVideo (the video split after the patch embedding with its RoPE
    tables, the output projection's output gathered; the text whole), diffusers' own for Wan and
    Flux, and a clear error for the others."""
    import spaattn.diffusers
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    plan = spaattn.diffusers.context_parallel_plan(_tiny("HunyuanVideo"))
    video = ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)
    table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    assert plan == {"x_embedder": {0: video}, "rope": {0: table, 1: table},
                    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}
    wan = _tiny("Wan2")
    assert spaattn.diffusers.context_parallel_plan(wan) == type(wan)._cp_plan
    for name in ("CogVideoX", "PixArt"):
        model = _tiny(name)
        with pytest.raises(ValueError, match=re.escape(
                "transformer: expected a Wan, Flux or HunyuanVideo transformer (spaattn runs "
                f"context parallelism in these), got {type(model).__name__}")):
            spaattn.diffusers.context_parallel_plan(model)
