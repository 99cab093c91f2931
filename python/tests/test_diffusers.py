"""spaattn's diffusers processors on tiny randomly initialised HunyuanVideo, Wan, CogVideoX, Flux
and PixArt transformers (no downloaded weights): the same output as the stock processors at
density 1, runs at sparsity 0.9, step and guidance accounting, removal. CPU float32; CUDA
bfloat16 on a GPU."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import spaattn  # noqa: E402, F401
import spaattn.diffusers as sd  # noqa: E402
from diffusers.models.embeddings import get_3d_rotary_pos_embed  # noqa: E402

FRAMES, HEIGHT, WIDTH = 4, 32, 32  # latent input; 4 x 16 x 16 = 1,024 video tokens (patch 2)
GRID = (4, 16, 16)
IMAGE_H, IMAGE_W = 16, 24  # the image models' patch grid: 384 image tokens (6 blocks of 64)


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, float, str, torch.dtype], dict[str, Any]]
    num_layers: int
    grid: tuple[int, int, int] | None = GRID  # what the adapter reads off the inputs


def _hunyuan() -> torch.nn.Module:
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(16, 24, 24),
    )


def _hunyuan_inputs(batch: int, t: float, device: str, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    text_mask = torch.ones(batch, 12, dtype=torch.long)
    text_mask[-1, 9:] = 0  # padding text tokens on the last item
    inputs = dict(
        hidden_states=torch.randn(batch, 4, FRAMES, HEIGHT, WIDTH, generator=g),
        encoder_hidden_states=torch.randn(batch, 12, 32, generator=g),
        pooled_projections=torch.randn(batch, 16, generator=g),
        guidance=torch.full((batch,), 6000.0),
    )
    inputs = {k: x.to(device, dtype) for k, x in inputs.items()}
    return dict(inputs, encoder_attention_mask=text_mask.to(device),
                timestep=torch.full((batch,), t, device=device))


def _wan() -> torch.nn.Module:
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32,
    )


def _wan_inputs(batch: int, t: float, device: str, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    return dict(
        hidden_states=torch.randn(batch, 4, FRAMES, HEIGHT, WIDTH, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, 10, 32, generator=g).to(device, dtype),
        timestep=torch.full((batch,), t, device=device),
    )


def _cogvideox() -> torch.nn.Module:
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4,
        time_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=WIDTH,
        sample_height=HEIGHT, sample_frames=4 * (FRAMES - 1) + 1, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True,
    )


def _cogvideox_inputs(batch: int, t: float, device: str, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    cos, sin = get_3d_rotary_pos_embed(embed_dim=64, crops_coords=((0, 0), GRID[1:]),
                                       grid_size=GRID[1:], temporal_size=FRAMES)
    return dict(
        hidden_states=torch.randn(batch, FRAMES, 4, HEIGHT, WIDTH, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, 8, 32, generator=g).to(device, dtype),
        timestep=torch.full((batch,), t, device=device),
        image_rotary_emb=(cos.to(device), sin.to(device)),
    )


def _flux() -> torch.nn.Module:
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=True, axes_dims_rope=(16, 24, 24),
    )


def _flux_inputs(batch: int, t: float, device: str, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    rows, cols = torch.meshgrid(torch.arange(IMAGE_H), torch.arange(IMAGE_W), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    inputs = dict(  # packed latents: IMAGE_H x IMAGE_W tokens in raster order
        hidden_states=torch.randn(batch, IMAGE_H * IMAGE_W, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
        pooled_projections=torch.randn(batch, 16, generator=g),
    )
    inputs = {k: x.to(device, dtype) for k, x in inputs.items()}
    return dict(inputs, timestep=torch.full((batch,), t / 1000, device=device),
                guidance=torch.full((batch,), 3.5, device=device),
                img_ids=img_ids.to(device), txt_ids=torch.zeros(8, 3, device=device))


def _pixart() -> torch.nn.Module:
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=8,
        num_layers=2, cross_attention_dim=128, sample_size=2 * IMAGE_H, patch_size=2,
        caption_channels=32,
    )


def _pixart_inputs(batch: int, t: float, device: str, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    text_mask = torch.ones(batch, 10, dtype=torch.long)
    text_mask[-1, 7:] = 0  # padding text tokens on the last item (the dense cross-attention's)
    latents = torch.randn(batch, 4, 2 * IMAGE_H, 2 * IMAGE_W, generator=g)
    return dict(
        hidden_states=latents.to(device, dtype),
        encoder_hidden_states=torch.randn(batch, 10, 32, generator=g).to(device, dtype),
        encoder_attention_mask=text_mask.to(device),
        timestep=torch.full((batch,), t, device=device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


CASES = {
    "hunyuan_video": Case("hunyuan_video", _hunyuan, _hunyuan_inputs, 2),
    "wan": Case("wan", _wan, _wan_inputs, 2),
    "cogvideox": Case("cogvideox", _cogvideox, _cogvideox_inputs, 2),
    # Flux's packed latent tokens have no grid (raster order of the sequence).
    "flux": Case("flux", _flux, _flux_inputs, 2, grid=None),
    "pixart": Case("pixart", _pixart, _pixart_inputs, 2, grid=(1, IMAGE_H, IMAGE_W)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    torch.manual_seed(0)
    return CASES[request.param], CASES[request.param].build().eval()


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def processors(model) -> list[Any]:
    return [m.processor for m in sd._adapter(model).layers(model)]


@pytest.mark.parametrize("method", ["dense", "rectified", "sparse"])
def test_density_one_matches_the_stock_processor(case, method):
    spec, model = case
    inputs = spec.inputs(2, 900.0, "cpu", torch.float32)
    stock = run(model, inputs)
    with sd.apply(model, method=method, sparsity=0.0, block_size=64) as handle:
        out = run(model, inputs)
        stats = handle.stats()
    assert sorted(stats) == list(range(spec.num_layers))
    assert all(s.density == 1.0 for s in stats.values())
    torch.testing.assert_close(out, stock, atol=2e-5 * stock.abs().max().item(), rtol=0)


def test_sparsity_09_runs_and_removal_restores_the_stock_model(case):
    spec, model = case
    stock_processors = processors(model)
    inputs = spec.inputs(1, 900.0, "cpu", torch.float32)
    stock = run(model, inputs)
    handle = sd.apply(model, sparsity=0.9, block_size=64)
    assert all(type(p).__module__.startswith("spaattn.") for p in processors(model))
    out = run(model, inputs)
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert all(s.kind == "sparse" and s.density < 1.0 for s in handle.stats().values())
    sd.remove(model)
    assert all(a is b for a, b in zip(processors(model), stock_processors, strict=True))
    assert not model._forward_pre_hooks
    torch.testing.assert_close(run(model, inputs), stock, atol=0, rtol=0)


def test_steps_entries_and_new_runs(case):
    spec, model = case
    handle = sd.apply(model, method="rettention", sparsity=0.75, dense_steps=1, ref_period=2,
                      dense_layers=[1], block_size=64)
    try:
        seen = []
        for _run in range(2):
            for t in (999.0, 800.0, 600.0, 400.0):
                for _ in range(2):  # guidance as two separate forwards of one step
                    run(model, spec.inputs(1, t, "cpu", torch.float32))
                    stats = handle.stats()
                    seen.append((handle.step, handle.entry, stats[0].kind, stats[1].kind))
        first = seen[:8]
        assert [s[:2] for s in first] == [(i, e) for i in range(4) for e in (0, 1)]
        assert [s[2] for s in first[::2]] == ["dense", "reference", "sparse", "reference"]
        assert all(s[3] == "dense" for s in seen)
        assert seen[8:] == first  # a larger timestep started a new run from step 0
    finally:
        handle.remove()


def test_options_are_checked_before_anything_changes(case):
    spec, model = case
    before = processors(model)
    with pytest.raises(ValueError, match="config.select.sparsity: expected 0 <= sparsity < 1"):
        sd.apply(model, sparsity=1.5)
    with pytest.raises(ValueError, match="grid: set by spaattn"):
        sd.apply(model, grid=(1, 2, 3))
    assert all(a is b for a, b in zip(processors(model), before, strict=True))
    with sd.apply(model):
        with pytest.raises(ValueError, match="already applied"):
            sd.apply(model)
    with pytest.raises(ValueError, match="pipe: expected a pipeline or transformer"):
        sd.apply(object())


def test_first_frame_blocks_per_frame(case):
    spec, model = case
    handle = sd.apply(model, sparsity=0.9, first_frame_blocks="frame", block_size=64)
    try:
        run(model, spec.inputs(1, 900.0, "cpu", torch.float32))
        control = model._spaattn_control
        assert control.info["grid"] == spec.grid
        assert handle.stats()[0].kind == "sparse"
    finally:
        handle.remove()


def test_cuda_bfloat16_density_one_and_sparse(case, gpu_pipeline):
    spec, model = case
    model = copy.deepcopy(model).to("cuda", torch.bfloat16)
    inputs = spec.inputs(2, 900.0, "cuda", torch.bfloat16)
    stock = run(model, inputs).float()
    with sd.apply(model, sparsity=0.0, block_size=64):
        out = run(model, inputs).float()
    assert (out - stock).norm() / stock.norm() < 2e-2
    with sd.apply(model, sparsity=0.9, block_size=64):
        assert torch.isfinite(run(model, inputs)).all()


def test_fused_projections(case):
    spec, model = case
    model = copy.deepcopy(model)
    inputs = spec.inputs(2, 900.0, "cpu", torch.float32)
    stock = run(model, inputs)
    model.fuse_qkv_projections()
    with torch.no_grad():  # the separate projections must not be read once fused
        for module in model.modules():
            if getattr(module, "fused_projections", False):
                for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
                    if getattr(module, name, None) is not None and hasattr(module, "to_qkv"):
                        if name.startswith("add_") and not hasattr(module, "to_added_qkv"):
                            continue
                        getattr(module, name).weight.fill_(float("nan"))
    torch.testing.assert_close(run(model, inputs), stock, atol=2e-5 * stock.abs().max().item(),
                               rtol=0)
    with sd.apply(model, sparsity=0.0, block_size=64):
        out = run(model, inputs)
    torch.testing.assert_close(out, stock, atol=2e-5 * stock.abs().max().item(), rtol=0)


def test_flux_refuses_masks_and_ip_adapters():
    torch.manual_seed(0)
    model = _flux().eval()
    inputs = _flux_inputs(1, 900.0, "cpu", torch.float32)
    mask = torch.ones(1, 1, 8 + IMAGE_H * IMAGE_W, 8 + IMAGE_H * IMAGE_W, dtype=torch.bool)
    with sd.apply(model, sparsity=0.9, block_size=64):
        with pytest.raises(ValueError, match="Flux processor takes no attention_mask"):
            run(model, dict(inputs, joint_attention_kwargs={"attention_mask": mask}))
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    attn = model.transformer_blocks[0].attn
    attn.set_processor(FluxIPAdapterAttnProcessor(hidden_size=128, cross_attention_dim=32))
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    before = [block.attn.processor for block in blocks]
    with pytest.raises(ValueError, match="does not support Flux with an IP-Adapter"):
        sd.apply(model)
    assert all(block.attn.processor is p for block, p in zip(blocks, before, strict=True))
    assert not model._forward_pre_hooks


def test_pixart_refuses_what_its_processor_does_not_compute():
    torch.manual_seed(0)
    model = _pixart().eval()
    inputs = _pixart_inputs(1, 900.0, "cpu", torch.float32)
    with sd.apply(model, sparsity=0.9, block_size=64):
        with pytest.raises(ValueError, match="PixArt processor serves self-attention only"):
            run(model, dict(inputs, attention_mask=torch.ones(1, IMAGE_H * IMAGE_W)))
        attn = model.transformer_blocks[0].attn1
        with pytest.raises(ValueError, match=r"expects hidden_states \[b, S, C\]"):
            attn(torch.zeros(1, 128, IMAGE_H, IMAGE_W))
        attn.group_norm = torch.nn.GroupNorm(2, 128)
        with pytest.raises(ValueError, match="no spatial_norm or group_norm"):
            run(model, inputs)
        attn.group_norm = None
        assert torch.isfinite(run(model, inputs)).all()

