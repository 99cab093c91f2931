"""Step counting, per-model state and the hooks that install spaattn's processors.

One transformer forward is one call of every attention layer. A forward pre-hook on the
transformer reads, once per forward, what every layer needs: the latent grid (from the input's
shape and the model's patch sizes) and the denoising step and entry (from the timestep). The
attention processors then call one :class:`spaattn.SparseAttention` per grid, with the layer's
index, that step and that entry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..method import CallStats, SparseAttention


class Adapter(Protocol):
    """What spaattn needs to know about one diffusers transformer class."""

    name: str

    def grid(self, model: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """The latent grid (T, H, W) of the video tokens of a forward's input."""

    def layers(self, model: Any) -> list[Any]:
        """The self-attention modules whose processors are replaced, in layer order."""

    def processor(self, control: ModelControl, layer: int) -> Any:
        """spaattn's processor for one of those modules."""


class LayerProcessor:
    """Base of spaattn's attention processors: the model's control and the layer's number."""

    def __init__(self, control: ModelControl, layer: int) -> None:
        self.control = control
        self.layer = layer


def project_qkv(attn: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of ``hidden_states`` ([b, S, H*d]) through the module's fused or separate projections."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        return q, k, v
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


class StepClock:
    """The denoising step and the entry of each transformer forward, read off its timestep.

    Timesteps decrease during a run: a smaller timestep than the last forward's starts the next
    step (entry 0); the same timestep is another forward of the same step, the next entry
    (classifier-free guidance run as separate cond / uncond forwards); a larger one starts a new
    run, step 0, and drops every cached state. Batched guidance (cond and uncond in one batch)
    is one forward and one entry.
    """

    def __init__(self) -> None:
        self.step = 0
        self.entry = 0
        self._last: float | None = None
        self._on_new_run: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._on_new_run.append(callback)

    def tick(self, timestep: float) -> None:
        if self._last is None or timestep > self._last:
            self.reset()
        elif timestep == self._last:
            self.entry += 1
        else:
            self.step += 1
            self.entry = 0
        self._last = timestep

    def reset(self) -> None:
        self.step, self.entry, self._last = 0, 0, None
        for callback in self._on_new_run:
            callback()


def _timestep_value(timestep: Any) -> float:
    if timestep is None:
        raise ValueError("timestep: spaattn's step counting needs the transformer's timestep")
    if isinstance(timestep, torch.Tensor):
        # One host sync per forward; per-token timesteps (Wan 2.2 TI2V) count by the noisiest.
        return float(timestep.detach().max())
    return float(timestep)


class ModelControl:
    """spaattn's state for one transformer: its processors, hook and attention objects."""

    def __init__(
        self, model: torch.nn.Module, adapter: Adapter, clock: StepClock, options: dict[str, Any]
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.clock = clock
        self.options = options
        self.grid: tuple[int, int, int] | None = None
        self.stats: dict[int, CallStats] = {}
        self._attention: dict[tuple[int, int, int], SparseAttention] = {}
        self._signature = inspect.signature(model.forward)
        self._lengths: tuple[Any, int, Any] | None = None
        self._originals: list[tuple[Any, Any]] = []  # (attention module, stock processor)
        self._hook: Any = None
        clock.subscribe(self.reset)

    def make_attention(self, grid: tuple[int, int, int]) -> SparseAttention:
        options = dict(self.options)
        if options.get("first_frame_blocks") == "frame":
            block = options.get("block_size", 128)
            # An invalid block size is reported by SparseAttention below, not divided by here.
            frame = -(-grid[1] * grid[2] // block) if block in (64, 128) else 0
            options["first_frame_blocks"] = frame
        return SparseAttention(grid=grid, **options)

    def install(self) -> None:
        for layer, module in enumerate(self.adapter.layers(self.model)):
            self._originals.append((module, module.processor))
            module.set_processor(self.adapter.processor(self, layer))
        self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def uninstall(self) -> None:
        for module, original in self._originals:
            module.set_processor(original)
        self._originals.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.reset()

    def reset(self) -> None:
        for attention in self._attention.values():
            attention.reset()
        self.stats.clear()

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        self.grid = self.adapter.grid(module, bound["hidden_states"])
        self.clock.tick(_timestep_value(bound.get("timestep")))
        self._lengths = None

    def text_lengths(self, mask: torch.Tensor, num_video: int) -> torch.Tensor:
        """Valid text tokens per batch item from a boolean key mask [b, 1, 1, S] whose valid
        tokens come first (HunyuanVideo's); computed once per forward, on the mask's device."""
        if self._lengths is None or self._lengths[0] is not mask or self._lengths[1] != num_video:
            if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1):
                raise ValueError(
                    f"attention_mask: expected a boolean key mask [b, 1, 1, S], got "
                    f"{mask.dtype} {tuple(mask.shape)}"
                )
            lengths = mask.reshape(mask.shape[0], -1)[:, num_video:].sum(1, dtype=torch.int32)
            self._lengths = (mask, num_video, lengths)
        return self._lengths[2]

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """spaattn's attention of `layer` at the current step and entry (see SparseAttention)."""
        if self.grid is None:
            raise RuntimeError(
                f"spaattn's {self.adapter.name} processor ran outside the transformer's forward: "
                "the latent grid is unknown"
            )
        attention = self._attention.get(self.grid)
        if attention is None:
            attention = self._attention[self.grid] = self.make_attention(self.grid)
        out = attention.forward(
            q, k, v, layer=layer, step=self.clock.step, entry=self.clock.entry, **kwargs
        )
        self.stats[layer] = attention.last_stats  # type: ignore[assignment]
        return out
