"""spaattn in whole tiny diffusers pipelines (HunyuanVideo, Wan, CogVideoX, Flux, PixArt-α) built
from random components (no downloads, no text encoders: prompt embeddings are passed in; no VAE
where the pipeline only reads its compression ratios): the stock latents at density 1,
steps from the scheduler and entries from the pipeline's cache contexts, and Re-ttention under
diffusers' First Block Cache. CPU float32."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import spaattn.diffusers as sd  # noqa: E402
from diffusers.hooks import FirstBlockCacheConfig  # noqa: E402
from test_diffusers import CASES, IMAGE_H, IMAGE_W  # noqa: E402

STEPS = 5


@dataclass
class Pipeline:
    build: Callable[[], Any]
    kwargs: Callable[[], dict[str, Any]]
    entries: int  # transformer forwards per step: cond and uncond, or batched guidance (1)


def _embeds(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g) for shape in shapes]


def _image_vae() -> Any:
    # Two resolutions: a latent pixel is 2 x 2 image pixels; only its config is read with
    # output_type="latent".
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
        layers_per_block=1,
    )


def _wan() -> Any:
    torch.manual_seed(0)
    return diffusers.WanPipeline(
        tokenizer=None, text_encoder=None, transformer=CASES["wan"].build().eval(),
        vae=diffusers.AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1],
                                       num_res_blocks=1, temperal_downsample=[False, True, True]),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _wan_kwargs() -> dict[str, Any]:
    prompt, negative = _embeds((1, 10, 32), (1, 10, 32))
    # 9 frames of 128 x 192: 3 x 8 x 12 = 288 video tokens (VAE 4 x 8 x 8, patch 1 x 2 x 2).
    return dict(prompt_embeds=prompt, negative_prompt_embeds=negative, height=128, width=192,
                num_frames=9, guidance_scale=5.0)


def _hunyuan_video() -> Any:
    # No text encoders or tokenizers (both prompts' embeddings are passed in) and no VAE: with
    # vae=None the pipeline takes its default compression ratios (4 in time, 8 in space), and
    # output_type="latent" never decodes.
    torch.manual_seed(0)
    return diffusers.HunyuanVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=CASES["hunyuan_video"].build().eval(),
        vae=None, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder_2=None, tokenizer_2=None,
    )


def _hunyuan_video_kwargs() -> dict[str, Any]:
    prompt, negative, pooled, negative_pooled = _embeds((1, 12, 32), (1, 12, 32), (1, 16),
                                                        (1, 16))
    mask, negative_mask = torch.ones(1, 12, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)
    mask[:, 9:] = 0  # padding text tokens (the text lengths spaattn reads off the key mask)
    negative_mask[:, 5:] = 0
    # 9 frames of 128 x 192: 3 x 8 x 12 = 288 video tokens (VAE 4 x 8 x 8, patch 1 x 2 x 2);
    # true CFG: a cond and an uncond forward per step (cache contexts "cond", "uncond").
    return dict(prompt_embeds=prompt, pooled_prompt_embeds=pooled,
                prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_pooled_prompt_embeds=negative_pooled,
                negative_prompt_attention_mask=negative_mask, true_cfg_scale=2.0,
                guidance_scale=6.0, height=128, width=192, num_frames=9)


def _cogvideox() -> Any:
    # No text encoder or tokenizer (prompt and negative embeddings are passed in) and no VAE
    # (default compression ratios 4 and 8; output_type="latent" never decodes). The DPM
    # scheduler's step takes other arguments than the usual (the last prediction and timestep).
    torch.manual_seed(0)
    return diffusers.CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None,
        transformer=CASES["cogvideox"].build().eval(),
        scheduler=diffusers.CogVideoXDPMScheduler(timestep_spacing="trailing"),
    )


def _cogvideox_kwargs() -> dict[str, Any]:
    prompt, negative = _embeds((1, 8, 32), (1, 8, 32))
    # 9 frames of 128 x 192: 3 x 8 x 12 = 288 video tokens after the 8 text tokens; guidance
    # batched into one forward (cache context "cond_uncond": one entry per step).
    return dict(prompt_embeds=prompt, negative_prompt_embeds=negative, guidance_scale=6.0,
                height=128, width=192, num_frames=9)


def _flux() -> Any:
    torch.manual_seed(0)
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=_image_vae(),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=CASES["flux"].build().eval(),
    )


def _flux_kwargs() -> dict[str, Any]:
    prompt, negative, pooled, negative_pooled = _embeds((1, 10, 32), (1, 10, 32), (1, 16),
                                                        (1, 16))
    # True CFG: a cond and an uncond forward per step.
    return dict(prompt_embeds=prompt, pooled_prompt_embeds=pooled,
                negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled,
                true_cfg_scale=2.0, height=4 * IMAGE_H, width=4 * IMAGE_W)


def _pixart() -> Any:
    torch.manual_seed(0)
    return diffusers.PixArtAlphaPipeline(
        tokenizer=None, text_encoder=None, vae=_image_vae(),
        transformer=CASES["pixart"].build().eval(),
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    )


def _pixart_kwargs() -> dict[str, Any]:
    prompt, negative = _embeds((1, 10, 32), (1, 10, 32))
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[:, 8:] = 0
    # Guidance batched into one forward (one entry per step).
    return dict(prompt_embeds=prompt, prompt_attention_mask=mask, negative_prompt=None,
                negative_prompt_embeds=negative, negative_prompt_attention_mask=mask,
                guidance_scale=4.5, height=4 * IMAGE_H, width=4 * IMAGE_W,
                use_resolution_binning=False)


PIPELINES = {
    "hunyuan_video": Pipeline(_hunyuan_video, _hunyuan_video_kwargs, 2),
    "wan": Pipeline(_wan, _wan_kwargs, 2),
    "cogvideox": Pipeline(_cogvideox, _cogvideox_kwargs, 1),
    "flux": Pipeline(_flux, _flux_kwargs, 2),
    "pixart": Pipeline(_pixart, _pixart_kwargs, 1),
}


@pytest.fixture(scope="module", params=list(PIPELINES))
def pipeline(request):
    spec = PIPELINES[request.param]
    pipe = spec.build()
    pipe.set_progress_bar_config(disable=True)
    return spec, pipe


def generate(spec: Pipeline, pipe: Any, steps: int = STEPS) -> torch.Tensor:
    with torch.no_grad():
        return pipe(**spec.kwargs(), num_inference_steps=steps, output_type="latent",
                    generator=torch.Generator().manual_seed(0), return_dict=False)[0]


def expected_kind(step: int, dense_steps: int = 1, ref_period: int = 2) -> str:
    """Re-ttention's schedule without skipped calls."""
    if step < dense_steps:
        return "dense"
    return "reference" if (step - dense_steps) % ref_period == 0 else "sparse"


def test_density_one_gives_the_stock_latents(pipeline):
    spec, pipe = pipeline
    stock = generate(spec, pipe)
    with sd.apply(pipe, method="rectified", sparsity=0.0, block_size=64) as handle:
        out = generate(spec, pipe)
        assert all(s.density == 1.0 for s in handle.stats().values())
    assert torch.isfinite(stock).all()
    torch.testing.assert_close(out, stock, atol=2e-5 * stock.abs().max().item(), rtol=0)


def test_steps_from_the_scheduler_and_entries_from_the_cache_contexts(pipeline):
    spec, pipe = pipeline
    scheduler = pipe.scheduler
    handle = sd.apply(pipe, method="rettention", sparsity=0.75, dense_steps=1, ref_period=2,
                      block_size=64)
    control = pipe.transformer._spaattn_control
    layers = range(len(sd._adapter(pipe.transformer).layers(pipe.transformer)))
    seen: list[tuple[int, int, tuple[str, ...]]] = []

    def record(module, args, output):
        stats = handle.stats()
        seen.append((handle.step, handle.entry, tuple(stats[i].kind for i in layers)))

    hook = pipe.transformer.register_forward_hook(record)
    try:
        runs = []
        for _ in range(2):
            seen.clear()
            generate(spec, pipe)
            runs.append(list(seen))
            # The clock counted the run's scheduler.step calls; the handle reports the step of
            # the last forward.
            assert control.clock.step == STEPS
            assert handle.step == STEPS - 1
            assert handle.entry == spec.entries - 1
        expected = [(i, e, (expected_kind(i),) * len(layers))
                    for i in range(STEPS) for e in range(spec.entries)]
        assert runs[0] == expected
        assert runs[1] == expected  # set_timesteps started a new run from step 0
    finally:
        hook.remove()
        handle.remove()
    # The scheduler's own methods are back.
    assert "step" not in vars(scheduler) and "set_timesteps" not in vars(scheduler)


@pytest.mark.parametrize("name", ["hunyuan_video", "wan", "cogvideox", "flux"])
def test_rettention_under_first_block_cache(name):
    """A call the cache skips leaves the layer's state alone; a layer that missed a reference step
    computes its next call as a (late) reference step. The threshold that makes the cache skip
    depends on the random model, so a few are tried; at least one must skip a reference step."""
    spec = PIPELINES[name]
    late_references = 0
    skipped = 0
    for threshold in (0.1, 0.2, 0.3, 0.4, 0.5, 0.8):
        pipe = spec.build()
        pipe.set_progress_bar_config(disable=True)
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        handle = sd.apply(pipe, method="rettention", sparsity=0.75, dense_steps=1,
                          ref_period=2, block_size=64)
        modules = sd._adapter(pipe.transformer).layers(pipe.transformer)
        calls: dict[tuple[int, int], list[tuple[int, str]]] = {}  # (layer, entry): (step, kind)

        def record(layer):
            def hook(module, args, output):
                calls.setdefault((layer, handle.entry), []).append(
                    (handle.step, handle.stats()[layer].kind))
            return hook

        hooks = [m.register_forward_hook(record(i)) for i, m in enumerate(modules)]
        try:
            out = generate(spec, pipe, steps=6)
        finally:
            for hook in hooks:
                hook.remove()
            handle.remove()
            pipe.transformer.disable_cache()
        assert torch.isfinite(out).all()
        # The first block always runs; the cache skips the others.
        for entry in range(spec.entries):
            assert [s for s, _ in calls[(0, entry)]] == list(range(6))
        for (layer, entry), sequence in calls.items():
            previous = -1
            for step, kind in sequence:
                missed = [s for s in range(previous + 1, step) if expected_kind(s) == "reference"]
                want = "reference" if missed else expected_kind(step)
                assert kind == want, (threshold, layer, entry, sequence)
                late_references += bool(missed) and expected_kind(step) != "reference"
                skipped += step - previous - 1
                previous = step
    assert skipped > 0, "the cache skipped no call at any threshold"
    assert late_references > 0, "no layer missed a reference step and ran again"


def test_wan22_experts_share_the_step_clock():
    """Wan 2.2's two experts: one clock counts the pipeline's steps for both; the low-noise
    expert, first called after the high-noise one's reference steps, starts with a reference."""
    pipe = _wan()
    pipe.register_modules(transformer_2=CASES["wan"].build().eval())
    pipe.register_to_config(boundary_ratio=0.6)
    pipe.set_progress_bar_config(disable=True)
    high, low = pipe.transformer, pipe.transformer_2
    seen = []
    with sd.apply(pipe, method="rettention", sparsity=0.75, dense_steps=1, ref_period=2,
                  block_size=64) as handle:
        for expert, model in enumerate((high, low)):
            def record(module, args, output, expert=expert, control=model._spaattn_control):
                seen.append((expert, handle.step, control.entry, control.stats[0].kind))

            model.register_forward_hook(record)
        generate(PIPELINES["wan"], pipe, steps=6)
        assert handle.step == 5
    experts = [s[0] for s in seen[::2]]
    switch = experts.index(1)
    assert 0 < switch < 6 and experts == [0] * switch + [1] * (6 - switch)
    assert [s[1:3] for s in seen] == [(i, e) for i in range(6) for e in (0, 1)]
    kinds = [s[3] for s in seen[::2]]
    schedule = ["dense", "reference", "sparse", "reference", "sparse", "reference"]
    assert kinds[:switch] == schedule[:switch]
    assert switch % 2 == 0  # the switch falls on a sparse step of the schedule: then
    assert kinds[switch] == "reference"  # the low-noise expert, without statistics, computes them
    assert kinds[switch + 1:] == schedule[switch + 1:]
