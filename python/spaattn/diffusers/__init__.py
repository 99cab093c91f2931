"""spaattn in diffusers' video transformers: HunyuanVideo, Wan 2.1 / 2.2 and CogVideoX.

``apply(pipe, method="rectified", sparsity=0.9)`` replaces the attention processors of the
self-attention layers of the pipeline's transformer(s) with spaattn's; ``remove(pipe)`` (or the
returned handle's ``remove()``) puts the stock processors back, the same objects. In between,
each transformer forward runs every replaced layer through :class:`spaattn.SparseAttention`:

- **Token order and grid.** A forward pre-hook reads the latent grid (T, H, W) off the input
  and the model's patch sizes, once per forward; the attention object of that grid visits the
  video tokens in its order (gilbert by default) inside each call, so the model's tokens stay in
  raster order. One attention object (with its per-layer state) is kept per grid.
- **Text tokens.** HunyuanVideo's text follows the video (padding from the transformer's key
  mask: padding keys are skipped, padding queries output zeros, which no valid token reads);
  CogVideoX's text precedes it and is all valid, as in the stock processor; Wan's
  self-attention has none (its cross-attention stays dense).
- **Steps and guidance.** The same pre-hook counts steps from the timestep: a smaller timestep
  than the last forward's is the next step, the same timestep is the next *entry* of the same
  step (guidance as separate cond / uncond forwards: cond is entry 0, uncond entry 1, with
  separate state), a larger one starts a new run and drops all state. Guidance batched into one
  forward (CogVideoX) is one entry whose batch items keep separate masks and caches.
- **Dense warm-up.** ``dense_steps`` and ``dense_layers`` (layer numbers in the order the
  adapter lists: HunyuanVideo's dual-stream blocks, then its single-stream blocks) run full
  attention; Re-ttention's reference steps follow the warm-up.

Published settings: HunyuanVideo ``sparsity=0.8``; Wan 2.1 ``sparsity=0.75, dense_layers=[0, 1]``
(T2V also ``dense_steps=5``, and ``first_frame_blocks="frame"`` for the first-frame square);
Re-ttention on CogVideoX ``method="rettention", sparsity=0.96875, dense_steps=15, ref_period=5``.

Example (a pipeline loaded with diffusers)::

    handle = spaattn.diffusers.apply(pipe, method="rectified", sparsity=0.9)
    video = pipe(prompt, num_frames=129).frames[0]
    handle.remove()
"""

from __future__ import annotations

from typing import Any

import torch

from ..method import CallStats
from ._control import Adapter, ModelControl, StepClock
from .cogvideox import CogVideoXAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .wan import WanAdapter

ADAPTERS: dict[str, Adapter] = {
    "HunyuanVideoTransformer3DModel": HunyuanVideoAdapter(),
    "WanTransformer3DModel": WanAdapter(),
    "CogVideoXTransformer3DModel": CogVideoXAdapter(),
}
"""Supported transformer classes by name (subclasses are matched through their bases)."""

_ATTRIBUTE = "_spaattn_control"


def _adapter(model: torch.nn.Module) -> Adapter | None:
    for cls in type(model).__mro__:
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
    models = [m for m in candidates if isinstance(m, torch.nn.Module) and _adapter(m)]
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
        """The denoising step of the last transformer forward (0 at a run's first)."""
        return self._clock.step

    @property
    def entry(self) -> int:
        """The entry of the last forward within its step (1 for a separate uncond pass)."""
        return self._clock.entry

    def stats(self) -> dict[int, CallStats]:
        """The last call's statistics per layer (of the first transformer)."""
        return dict(self._controls[0].stats)

    def reset(self) -> None:
        """Starts a new run: step 0, no cached masks or Re-ttention statistics."""
        self._clock.reset()

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
    method: str = "rectified",
    *,
    sparsity: float = 0.9,
    first_frame_blocks: int | str = 0,
    **options: Any,
) -> Handle:
    """Runs the self-attention of a diffusers video pipeline (or transformer) through spaattn.

    Args:
        pipe: a HunyuanVideo, Wan or CogVideoX pipeline (its ``transformer`` and, for Wan
            2.2, ``transformer_2``) or one of those transformers.
        method, sparsity: as :class:`spaattn.SparseAttention`.
        first_frame_blocks: an int, or ``"frame"`` for the video blocks of one latent frame.
        options: the other arguments of :class:`spaattn.SparseAttention` (``p``,
            ``block_size``, ``order``, ``neighbours``, ``gapr``, ``dense_steps``,
            ``dense_layers``, ``mask_period``, ``ref_period``, ``drift``, ...) except ``grid``,
            which comes from each forward's input.

    Returns a :class:`Handle`; ``handle.remove()`` or ``spaattn.diffusers.remove(pipe)``
    restores the stock processors. The options are checked here, before anything changes.
    """
    if "grid" in options:
        raise ValueError("grid: set by spaattn from each forward's input, not an option")
    if isinstance(first_frame_blocks, str) and first_frame_blocks != "frame":
        raise ValueError(
            f"first_frame_blocks: expected an int or 'frame', got {first_frame_blocks!r}"
        )
    settings = dict(options, method=method, sparsity=sparsity,
                    first_frame_blocks=first_frame_blocks)
    models = _transformers(pipe)
    for model in models:
        if getattr(model, _ATTRIBUTE, None) is not None:
            raise ValueError(
                "pipe: spaattn is already applied; call spaattn.diffusers.remove first"
            )
    clock = StepClock()
    controls = [ModelControl(m, _adapter(m), clock, settings) for m in models]  # type: ignore[arg-type]
    controls[0].make_attention((1, 1, 1))  # checks the options with the C++ core's messages
    for control in controls:
        control.install()
        setattr(control.model, _ATTRIBUTE, control)
    return Handle(controls, clock)


def remove(pipe: Any) -> None:
    """Restores the stock attention processors of a pipeline or transformer spaattn runs in."""
    for model in _transformers(pipe):
        control = getattr(model, _ATTRIBUTE, None)
        if control is not None:
            control.uninstall()
            delattr(model, _ATTRIBUTE)


__all__ = ["ADAPTERS", "Handle", "apply", "remove"]
