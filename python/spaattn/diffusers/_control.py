"""Step counting, per-model state and the hooks that install spaattn's processors.

One transformer forward is one call of every attention layer. A forward pre-hook on the
transformer reads what every layer needs from the shapes of its input (the latent grid, the text
length), never from tensor values. Each layer's processor computes q, k and v as the stock one
does and calls the operator ``torch.ops.spaattn.model_attention`` with this model's handle; when
the operator runs, the model's control picks the :class:`spaattn.SparseAttention` of the grid and
the denoising step and entry of the call. Nothing of this reads a tensor on the host, so a
forward can be compiled with ``torch.compile(fullgraph=True)`` or captured in a CUDA graph.

Steps come from one of these sources (``apply(steps=...)``):

- ``"scheduler"``: the pipeline's scheduler. ``set_timesteps`` starts a run, each ``step`` call
  ends a step. Skipped transformer forwards (step caches) do not move the count.
- ``"timestep"``: the transformer's timestep, read on the host at every forward (one
  synchronisation per forward, and a graph break under torch.compile): a smaller timestep than
  the last forward's is the next step, a larger one starts a new run.
- ``"manual"``: the caller's ``handle.next_step()`` and ``handle.reset()``.

Entries tell apart the forwards of one step (classifier-free guidance as separate cond / uncond
forwards): the name the pipeline gives through ``cache_context("cond")`` / ``("uncond")`` when it
gives one (entries numbered in the order the names first appear in the step), else the order of
the forwards within the step (a forward starts when a layer is called whose number is not above
the last one called).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .. import _ops
from ..method import CallStats, SparseAttention

STEP_SOURCES = ("auto", "scheduler", "timestep", "manual")


class Adapter(Protocol):
    """What spaattn needs to know about one diffusers transformer class."""

    name: str

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the layers need from a forward's inputs (its keyword arguments, positional ones
        bound to their names), from shapes only: ``grid``, the latent grid (T, H, W) of the
        video tokens or None for the raster order of the sequence, and adapter-specific
        values."""

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
    """The denoising step of a pipeline's transformer forwards (see the module's docstring)."""

    def __init__(self) -> None:
        self.step = 0
        self.called = 0  # the step of the last layer call (Handle.step)
        self.run = 0  # counts runs; a new run drops every cached state
        self.context: str | None = None  # the pipeline's cache_context name, while one is open
        self._last_timestep: float | None = None
        self._on_new_run: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._on_new_run.append(callback)

    def next_step(self) -> None:
        self.step += 1

    def new_run(self) -> None:
        self.step, self.called, self.run, self._last_timestep = 0, 0, self.run + 1, None
        for callback in self._on_new_run:
            callback()

    def tick(self, timestep: float) -> None:
        """The "timestep" source: one forward's timestep."""
        if self._last_timestep is None or timestep > self._last_timestep:
            self.new_run()
        elif timestep < self._last_timestep:
            self.next_step()
        self._last_timestep = timestep


def _timestep_value(timestep: Any) -> float:
    if timestep is None:
        raise ValueError("timestep: spaattn's step counting needs the transformer's timestep")
    if isinstance(timestep, torch.Tensor):
        # One host sync per forward; per-token timesteps (Wan 2.2 TI2V) count by the noisiest.
        return float(timestep.detach().max())
    return float(timestep)


def _unwrap(model: Any) -> Any:
    """The module a torch.compile wrapper (OptimizedModule) compiles, or the module itself."""
    return getattr(model, "_orig_mod", model)


def check_context_parallel(model: Any) -> None:
    """Refuses a transformer with diffusers' context parallelism (``enable_parallelism``).

    spaattn's methods need whole rows of the softmax, so ring attention (``ring_degree > 1``)
    cannot carry them, and Ulysses needs the heads divisible by its degree. Ulysses inside these
    processors is not implemented yet: model code of one's own can use
    :class:`spaattn.distributed.UlyssesAttention`.
    """
    parallel = getattr(_unwrap(model), "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    if config is None:
        return
    ring = getattr(config, "ring_degree", 1) or 1
    ulysses = getattr(config, "ulysses_degree", 1) or 1
    if ring > 1:
        raise ValueError(
            f"enable_parallelism: expected ring_degree 1 (spaattn's methods need whole rows of "
            f"the softmax; use ulysses_degree), got {ring}"
        )
    heads = getattr(getattr(_unwrap(model), "config", None), "num_attention_heads", None)
    if isinstance(heads, int) and heads % ulysses:
        raise ValueError(
            f"enable_parallelism: expected ulysses_degree dividing the model's "
            f"{heads} attention heads, got {ulysses}"
        )
    raise ValueError(
        f"enable_parallelism: spaattn's diffusers processors do not run under context "
        f"parallelism yet (ulysses_degree {ulysses}); in model code of your own use "
        "spaattn.distributed.UlyssesAttention"
    )


class ModelControl:
    """spaattn's state for one transformer: its processors, hooks and attention objects."""

    def __init__(
        self, model: torch.nn.Module, adapter: Adapter, clock: StepClock, options: dict[str, Any],
        steps: str,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.clock = clock
        self.options = options
        self.steps = steps
        self.info: dict[str, Any] | None = None  # the current forward's (forward_info)
        self.stats: dict[int, CallStats] = {}
        self.entry = 0  # entry of the last call
        self.handle = _ops.register(self)
        self._attention: dict[tuple[int, ...], SparseAttention] = {}
        self._parameters = list(inspect.signature(model.forward).parameters)
        self._counted: tuple[int, int] | None = None  # (run, step) the counts below are of
        self._forward = -1
        self._last_layer: int | None = None
        self._names: dict[str, int] = {}
        self._originals: list[tuple[Any, Any]] = []  # (attention module, stock processor)
        self._hook: Any = None
        self._patched: list[tuple[Any, str]] = []  # (object, attribute) set on instances
        clock.subscribe(self.reset)

    def make_attention(self, grid: tuple[int, ...]) -> SparseAttention:
        options = dict(self.options)
        if options.get("first_frame_blocks") == "frame":
            block = options.get("block_size", 128)
            # An invalid block size is reported by SparseAttention below, not divided by here;
            # without a grid there is no frame.
            frame = -(-grid[1] * grid[2] // block) if block in (64, 128) and grid else 0
            options["first_frame_blocks"] = frame
        return SparseAttention(grid=grid or None, **options)

    def attention(self, grid: tuple[int, ...]) -> SparseAttention:
        attention = self._attention.get(grid)
        if attention is None:
            attention = self._attention[grid] = self.make_attention(grid)
        return attention

    def install(self, pipe: Any, *, scheduler: bool) -> None:
        """Replaces the processors and adds the hooks; `scheduler`: also the step source on the
        pipeline's scheduler (once per pipeline, by its first transformer's control)."""
        for layer, module in enumerate(self.adapter.layers(self.model)):
            self._originals.append((module, module.processor))
            module.set_processor(self.adapter.processor(self, layer))
        self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        if callable(getattr(self.model, "cache_context", None)):
            self._patch(self.model, "cache_context", self._cache_context(self.model.cache_context))
        if scheduler and self.steps == "scheduler":
            scheduler = pipe.scheduler
            self._patch(scheduler, "set_timesteps", self._calls_then(
                scheduler.set_timesteps, before=self.clock.new_run))
            self._patch(scheduler, "step", self._calls_then(
                scheduler.step, after=self.clock.next_step))

    def _patch(self, obj: Any, name: str, value: Any) -> None:
        setattr(obj, name, value)
        self._patched.append((obj, name))

    @staticmethod
    def _calls_then(function: Callable[..., Any], *, before: Callable[[], None] | None = None,
                    after: Callable[[], None] | None = None) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                before()
            result = function(*args, **kwargs)
            if after is not None:
                after()
            return result

        wrapper.__wrapped__ = function  # type: ignore[attr-defined]
        return wrapper

    def _cache_context(self, original: Callable[..., Any]) -> Callable[..., Any]:
        clock = self.clock

        @contextlib.contextmanager
        def cache_context(name: str, *args: Any, **kwargs: Any) -> Iterator[None]:
            previous, clock.context = clock.context, name
            try:
                with original(name, *args, **kwargs):
                    yield
            finally:
                clock.context = previous

        return cache_context

    def uninstall(self) -> None:
        for module, original in self._originals:
            module.set_processor(original)
        self._originals.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for obj, name in reversed(self._patched):
            # Only the instance attributes set by install: the class's own methods reappear.
            if name in vars(obj):
                delattr(obj, name)
        self._patched.clear()
        self.reset()

    def reset(self) -> None:
        for attention in self._attention.values():
            attention.reset()
        self.stats.clear()
        self._counted = None

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        # Context parallelism enabled after apply() would hand the processors sequence
        # shards: refused here, as apply() refuses it.
        check_context_parallel(module)
        inputs = dict(zip(self._parameters, args, strict=False))
        inputs.update(kwargs)
        self.info = self.adapter.forward_info(module, inputs)
        if self.steps == "timestep":
            self.clock.tick(_timestep_value(inputs.get("timestep")))

    def _entry(self, layer: int) -> int:
        """The entry of a call of `layer` at the clock's step (see the module's docstring)."""
        counted = (self.clock.run, self.clock.step)
        if counted != self._counted:
            self._counted, self._forward, self._last_layer, self._names = counted, -1, None, {}
        if self._last_layer is None or layer <= self._last_layer:
            self._forward += 1
        self._last_layer = layer
        if self.clock.context is not None:
            return self._names.setdefault(self.clock.context, len(self._names))
        return self._forward

    def text_lengths(self, mask: torch.Tensor, num_video: int) -> torch.Tensor:
        """Valid text tokens per batch item from a boolean key mask [b, 1, 1, S] whose valid
        tokens come first (HunyuanVideo's), on the mask's device (nothing is read back)."""
        if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1):
            raise ValueError(
                f"attention_mask: expected a boolean key mask [b, 1, 1, S], got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        return mask.reshape(mask.shape[0], -1)[:, num_video:].sum(1, dtype=torch.int32)

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
        num_text: int = 0, text_lengths: torch.Tensor | None = None,
        text_placement: str = "suffix",
    ) -> torch.Tensor:
        """spaattn's attention of `layer` on [b, S, H, d] tensors (any strides) at the current
        step and entry; returns a contiguous [b, S, H, d] output."""
        if self.info is None:
            raise RuntimeError(
                f"spaattn's {self.adapter.name} processor ran outside the transformer's forward: "
                "the latent grid is unknown"
            )
        _ops.check_inputs(q, k, v)
        grid = self.info["grid"]
        return torch.ops.spaattn.model_attention(
            q, k, v, text_lengths, self.handle, layer, list(grid or ()), num_text,
            text_placement,
        )

    # The operator's two sides (spaattn._ops.model_attention).
    def run_layer(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  text_lengths: torch.Tensor | None, layer: int, grid: tuple[int, ...],
                  num_text: int, text_placement: str) -> None:
        attention = self.attention(grid)
        entry = self._entry(layer)
        attention._run(q, k, v, out, text_lengths, layer, entry, self.clock.step, num_text,
                       text_placement, "bshd")
        self.stats[layer] = attention.last_stats  # type: ignore[assignment]
        self.entry = entry
        self.clock.called = self.clock.step

    def check_layer(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    text_lengths: torch.Tensor | None, layer: int, grid: tuple[int, ...],
                    num_text: int, text_placement: str) -> None:
        self.attention(grid)._check(q, k, v, out, text_lengths, layer, 0, 0, num_text,
                                    text_placement, "bshd")
