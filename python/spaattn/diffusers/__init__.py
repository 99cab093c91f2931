"""spaattn in diffusers' transformers: HunyuanVideo, Wan 2.1 / 2.2, CogVideoX, Flux.1, PixArt.

``apply(pipe, method="rectified", sparsity=0.9)`` replaces the attention processors of the
self-attention layers of the pipeline's transformer(s) with spaattn's; ``remove(pipe)`` (or the
returned handle's ``remove()``) puts the stock processors back, the same objects. In between,
each transformer forward runs every replaced layer through :class:`spaattn.SparseAttention`:

- **Token order and grid.** A forward pre-hook reads the latent grid (T, H, W) off the input
  and the model's patch sizes, once per forward; the attention object of that grid visits the
  video tokens in its order (gilbert by default) inside each call, so the model's tokens stay in
  raster order. One attention object (with its per-layer state) is kept per grid. PixArt's
  images have the grid (1, H, W) of their patches; Flux's packed latent tokens have none (their
  (h, w) is not known from shapes): they are taken in the raster order of the sequence.
- **Text tokens.** HunyuanVideo's text follows the video (padding from the transformer's key
  mask: padding keys are skipped, padding queries output zeros, which no valid token reads);
  CogVideoX's and Flux's text precedes it and is all valid, as in the stock processors; the
  self-attention of Wan and PixArt has none (their cross-attention stays dense).
- **Steps and guidance.** Steps come from the pipeline's scheduler when spaattn is applied to a
  pipeline (``set_timesteps`` starts a run, every ``step`` call ends a step), from the handle
  (``steps="manual"``: ``handle.next_step()``, ``handle.reset()``), or from the timestep
  (``steps="timestep"``, the default for a bare transformer: one host synchronisation per
  forward). Forwards of one step are *entries* with separate state: the pipeline's
  ``cache_context("cond")`` / ``("uncond")`` names them, else their order within the step does
  (guidance as separate forwards: cond is entry 0, uncond entry 1). Guidance batched into one
  forward (CogVideoX, PixArt) is one entry whose batch items keep separate masks and caches.
- **torch.compile and CUDA graphs.** Each layer calls one custom operator
  (``torch.ops.spaattn.model_attention``) that reaches spaattn's state through an opaque
  handle; no tensor is read on the host (but with ``steps="timestep"``), so
  ``torch.compile(transformer, fullgraph=True)`` compiles without a graph break and a forward
  can be captured in a CUDA graph. A replayed graph repeats the captured calls: it suits methods
  whose calls do not change with the step (``rectified``, ``sparse``; not dense warm-up steps or
  Re-ttention's schedule).
- **Step caches.** With diffusers' caches (``transformer.enable_cache(...)``), a layer whose
  call a cache skips keeps its state; a Re-ttention layer that missed its reference step
  computes its next call as a (late) reference step, so no cached statistics outlive their
  mask or run.
- **Several GPUs.** With diffusers' context parallelism (``enable_parallelism`` with
  ``ContextParallelConfig(ulysses_degree=N)``, before or after ``apply``), each rank's
  processors receive the rank's shard of the sequence; they exchange the heads over the model's
  Ulysses mesh (all-to-all, :mod:`spaattn.distributed`), run spaattn on the whole sequence of
  their H / N heads and exchange the output back, so the result is the one-process one. Wan
  and Flux run with diffusers' own context parallel plan, HunyuanVideo with spaattn's
  (``enable_parallelism(config, cp_plan=spaattn.diffusers.context_parallel_plan(transformer))``,
  which keeps the text whole on every rank); ``ring_degree > 1`` (the methods need whole rows
  of the softmax),
  ``ulysses_anything``, heads not divisible by N and the other models are refused with a clear
  error, by ``apply`` before anything changes or at the first forward.
- **Dense warm-up.** ``dense_steps`` and ``dense_layers`` (layer numbers in the order the
  adapter lists: HunyuanVideo's and Flux's dual-stream blocks, then their single-stream
  blocks) run full attention; Re-ttention's reference steps follow the warm-up.

Published settings are :data:`PRESETS` (``apply(pipe, preset="flux")``; options given to
``apply`` override the preset's).

Example (a pipeline loaded with diffusers)::

    handle = spaattn.diffusers.apply(pipe, method="rectified", sparsity=0.9)
    video = pipe(prompt, num_frames=129).frames[0]
    handle.remove()
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from ..method import CallStats
from ._control import (
    STEP_SOURCES,
    Adapter,
    ModelControl,
    StepClock,
    _unwrap,
    check_context_parallel,
)
from .cogvideox import CogVideoXAdapter
from .flux import FluxAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .pixart import PixArtAdapter
from .wan import WanAdapter

PRESETS: dict[str, dict[str, Any]] = {
    # Rectified SpaAttn (block 128, p = 0.3).
    "hunyuan_video": {"method": "rectified", "sparsity": 0.8},
    "wan2.1_t2v": {"method": "rectified", "sparsity": 0.75, "dense_layers": [0, 1],
                   "dense_steps": 5},
    "wan2.1_i2v": {"method": "rectified", "sparsity": 0.75, "dense_layers": [0, 1]},
    # The last 20 of Flux.1's 57 blocks dense (negative layer numbers count from the end).
    "flux": {"method": "rectified", "sparsity": 0.9, "dense_layers": list(range(-20, 0))},
    # Re-ttention (band selection keeping 1/32 of the keys).
    "pixart": {"method": "rettention", "sparsity": 0.96875, "dense_steps": 5, "ref_period": 5},
    "cogvideox": {"method": "rettention", "sparsity": 0.96875, "dense_steps": 15,
                  "ref_period": 5},
}
"""Published per-model settings, by name (``apply(pipe, preset=name)``)."""

ADAPTERS: dict[str, Adapter] = {
    "HunyuanVideoTransformer3DModel": HunyuanVideoAdapter(),
    "WanTransformer3DModel": WanAdapter(),
    "CogVideoXTransformer3DModel": CogVideoXAdapter(),
    "FluxTransformer2DModel": FluxAdapter(),
    "PixArtTransformer2DModel": PixArtAdapter(),
}
"""Supported transformer classes by name (subclasses are matched through their bases)."""

_ATTRIBUTE = "_spaattn_control"


def _adapter(model: torch.nn.Module) -> Adapter | None:
    for cls in type(_unwrap(model)).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__]
    return None


def _transformers(target: Any) -> list[torch.nn.Module]:
    """The supported transformers of a pipeline (transformer, transformer_2) or the model."""
    candidates: list[Any]
    if isinstance(target, torch.nn.Module):
        candidates = [target]
    else:
        candidates = [getattr(target, name, None) for name in ("transformer", "transformer_2")]
    models = [_unwrap(m) for m in candidates if isinstance(m, torch.nn.Module) and _adapter(m)]
    if not models:
        raise ValueError(
            f"pipe: expected a pipeline or transformer of type {', '.join(ADAPTERS)}, got "
            f"{type(target).__name__}"
        )
    return models


class Handle:
    """spaattn applied to one pipeline or transformer: steps, statistics, removal."""

    def __init__(self, controls: list[ModelControl], clock: StepClock) -> None:
        self._controls = controls
        self._clock = clock

    @property
    def step(self) -> int:
        """The denoising step of the last transformer forward (0 at a run's first).

        With the scheduler's steps, the clock moves on at each ``scheduler.step`` call: after a
        run of N steps this is N - 1, the step of the run's last forward."""
        return self._clock.called

    @property
    def entry(self) -> int:
        """The entry of the last call within its step (1 for a separate uncond pass)."""
        return self._controls[0].entry

    def next_step(self) -> None:
        """Ends the current denoising step (``steps="manual"``; the other sources move it)."""
        self._clock.next_step()

    def stats(self) -> dict[int, CallStats]:
        """The last call's statistics per layer (of the first transformer)."""
        return dict(self._controls[0].stats)

    def reset(self) -> None:
        """Starts a new run: step 0, no cached masks or Re-ttention statistics."""
        self._clock.new_run()

    def remove(self) -> None:
        """Puts the stock processors back and removes the hooks."""
        for control in self._controls:
            if getattr(control.model, _ATTRIBUTE, None) is control:
                control.uninstall()
                delattr(control.model, _ATTRIBUTE)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply(
    pipe: Any,
    method: str | None = None,
    *,
    preset: str | None = None,
    sparsity: float | None = None,
    first_frame_blocks: int | str | None = None,
    steps: str = "auto",
    **options: Any,
) -> Handle:
    """Runs the self-attention of a diffusers pipeline (or transformer) through spaattn.

    Args:
        pipe: a HunyuanVideo, Wan, CogVideoX, Flux or PixArt pipeline (its ``transformer`` and,
            for Wan 2.2, ``transformer_2``) or one of those transformers (also compiled with
            ``torch.compile``).
        method, sparsity: as :class:`spaattn.SparseAttention` (default ``"rectified"``, 0.9).
        preset: a name of :data:`PRESETS`, the published settings of one model; the other
            arguments override its values.
        first_frame_blocks: an int, or ``"frame"`` for the video blocks of one latent frame.
        steps: where the denoising step comes from: ``"scheduler"`` (the pipeline's),
            ``"timestep"`` (the transformer's timestep, one host synchronisation per forward),
            ``"manual"`` (``handle.next_step()``), or ``"auto"``: the scheduler for a pipeline,
            the timestep for a bare transformer.
        options: the other arguments of :class:`spaattn.SparseAttention` (``p``,
            ``block_size``, ``order``, ``neighbours``, ``gapr``, ``dense_steps``,
            ``dense_layers`` (negative numbers count from the last layer), ``mask_period``,
            ``ref_period``, ``drift``, ...) except ``grid``, which comes from each forward's
            input.

    Returns a :class:`Handle`; ``handle.remove()`` or ``spaattn.diffusers.remove(pipe)``
    restores the stock processors. The options are checked here, before anything changes.
    """
    if "grid" in options:
        raise ValueError("grid: set by spaattn from each forward's input, not an option")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    if steps not in STEP_SOURCES:
        raise ValueError(f"steps: expected one of {', '.join(STEP_SOURCES)}, got {steps!r}")
    settings = dict(PRESETS[preset]) if preset is not None else {}
    given = {"method": method, "sparsity": sparsity, "first_frame_blocks": first_frame_blocks}
    settings.update({k: x for k, x in given.items() if x is not None}, **options)
    settings.setdefault("method", "rectified")
    settings.setdefault("sparsity", 0.9)
    frame = settings.get("first_frame_blocks", 0)
    if isinstance(frame, str) and frame != "frame":
        raise ValueError(f"first_frame_blocks: expected an int or 'frame', got {frame!r}")
    models = _transformers(pipe)
    scheduler = getattr(pipe, "scheduler", None)
    has_scheduler = not isinstance(pipe, torch.nn.Module) and all(
        callable(getattr(scheduler, name, None)) for name in ("step", "set_timesteps"))
    if steps == "auto":
        steps = "scheduler" if has_scheduler else "timestep"
    elif steps == "scheduler" and not has_scheduler:
        raise ValueError("steps: 'scheduler' needs a pipeline with a scheduler, got "
                         f"{type(pipe).__name__}")
    for model in models:
        check_context_parallel(model, _adapter(model))
        if getattr(model, _ATTRIBUTE, None) is not None:
            raise ValueError(
                "pipe: spaattn is already applied; call spaattn.diffusers.remove first"
            )
    clock = StepClock()
    controls = []
    for model in models:
        adapter = _adapter(model)
        layer_count = len(adapter.layers(model))  # type: ignore[union-attr]
        model_settings = dict(settings)
        if "dense_layers" in settings:
            model_settings["dense_layers"] = _layer_numbers(settings["dense_layers"], layer_count)
        controls.append(ModelControl(model, adapter, clock, model_settings, steps))  # type: ignore[arg-type]
    for control in controls:  # checks the options with the C++ core's messages
        control.make_attention((1, 1, 1))
    for i, control in enumerate(controls):
        control.install(pipe, scheduler=i == 0)
        setattr(control.model, _ATTRIBUTE, control)
    return Handle(controls, clock)


def _layer_numbers(layers: Any, count: int) -> list[int]:
    """Layer numbers with negative ones counted from the end (-1: the last of `count`)."""
    try:
        numbers = [operator.index(x) for x in layers]
    except TypeError:
        raise TypeError(f"dense_layers: expected integers, got {layers!r}") from None
    for x in numbers:
        if not -count <= x:
            raise ValueError(f"dense_layers: expected layer numbers >= -{count} (the model has "
                             f"{count} layers), got {x}")
    return sorted({x + count if x < 0 else x for x in numbers})


def context_parallel_plan(transformer: Any) -> dict[str, Any]:
    """The context parallel plan to give ``transformer.enable_parallelism(config, cp_plan=...)``
    for spaattn's processors: spaattn's own for HunyuanVideo (diffusers has none), diffusers'
    for Wan and Flux. Other transformers are refused with a ValueError."""
    model = _unwrap(transformer)
    adapter = _adapter(model)
    own = getattr(adapter, "parallel_plan", None)
    if own is not None:
        return own(model)  # type: ignore[no-any-return]
    plan = getattr(type(model), "_cp_plan", None)
    if not getattr(adapter, "context_parallel", False) or plan is None:
        raise ValueError(
            f"transformer: expected a Wan, Flux or HunyuanVideo transformer (spaattn runs "
            f"context parallelism in these), got {type(model).__name__}")
    return dict(plan)


def remove(pipe: Any) -> None:
    """Restores the stock attention processors of a pipeline or transformer spaattn runs in."""
    for model in _transformers(pipe):
        control = getattr(model, _ATTRIBUTE, None)
        if control is not None:
            control.uninstall()
            delattr(model, _ATTRIBUTE)


__all__ = ["ADAPTERS", "PRESETS", "Handle", "apply", "context_parallel_plan", "remove"]
