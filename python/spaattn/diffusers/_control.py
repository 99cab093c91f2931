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

Under diffusers' Ulysses context parallelism (``enable_parallelism``), the pre-hook also reads
the model's parallel config at every forward (:func:`check_context_parallel`, which refuses
what spaattn cannot run), and :meth:`ModelControl.attend` exchanges the heads of each rank's
sequence shard over the Ulysses mesh (:mod:`spaattn.distributed`) around the operator, which
then runs on the whole sequence of the rank's heads.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .. import _ops
from ..distributed import heads_to_sequence, sequence_to_heads_many, whole_meta
from ..method import CallStats, SparseAttention

STEP_SOURCES = ("auto", "scheduler", "timestep", "manual")


class Adapter(Protocol):
    """What spaattn needs to know about one diffusers transformer class."""

    name: str
    # Whether the processors run under diffusers' Ulysses context parallelism (the model's
    # sequence shards are known to spaattn's attend: contiguous, or text and video apart).
    context_parallel: bool

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the layers need from a forward's inputs (its keyword arguments, positional ones
        bound to their names), from shapes only: ``grid``, the latent grid (T, H, W) of the
        video tokens or None for the raster order of the sequence, optionally ``seq``, the
        length of the whole attention sequence, and adapter-specific values. The pre-hook sees
        the inputs before diffusers' context parallel hooks split them: these describe the
        whole sequence."""

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


def check_context_parallel(model: Any, adapter: Any) -> tuple[Any, int] | None:
    """The Ulysses group and degree of a transformer with diffusers' context parallelism
    (``enable_parallelism``), or None without it; refuses what spaattn cannot run.

    spaattn's methods need whole rows of the softmax, so ring attention (``ring_degree > 1``)
    cannot carry them; Ulysses needs equal sequence shards (no ``ulysses_anything``), the heads
    divisible by its degree, and a model whose sequence shards spaattn knows how to put back in
    order (the adapter's ``context_parallel``). Only shapes and the config are read: the same
    error is raised on every rank, before any communication.
    """
    model = _unwrap(model)
    parallel = getattr(model, "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    if config is None:
        return None
    ring = getattr(config, "ring_degree", 1) or 1
    ulysses = getattr(config, "ulysses_degree", 1) or 1
    if ring > 1:
        raise ValueError(
            f"enable_parallelism: expected ring_degree 1 (spaattn's methods need whole rows of "
            f"the softmax; use ulysses_degree), got {ring}"
        )
    if getattr(config, "ulysses_anything", False):
        raise ValueError(
            "enable_parallelism: expected ulysses_anything=False (spaattn needs equal sequence "
            "shards and heads divisible by ulysses_degree), got True"
        )
    if not getattr(adapter, "context_parallel", False):
        raise ValueError(
            f"enable_parallelism: spaattn runs diffusers' context parallelism in Wan, Flux and "
            f"HunyuanVideo transformers only, got {adapter.name}; in model code of your own use "
            "spaattn.distributed.UlyssesAttention"
        )
    check_model = getattr(adapter, "check_context_parallel", None)
    if check_model is not None:
        check_model(model)
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if isinstance(heads, int) and heads % ulysses:
        raise ValueError(
            f"enable_parallelism: expected ulysses_degree dividing the model's "
            f"{heads} attention heads, got {ulysses}"
        )
    mesh = getattr(config, "_ulysses_mesh", None)
    if mesh is None:
        raise ValueError(
            "enable_parallelism: expected a context parallel config set up by "
            "enable_parallelism, got one without a device mesh"
        )
    group = mesh.get_group()
    size, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    flat = getattr(config, "_flattened_mesh", None)
    # The sequence is split over the flattened (ring, ulysses) mesh: with ring_degree 1 it must
    # be the Ulysses group itself, in the same rank order.
    if size != ulysses or (flat is not None and (
            flat.size() != size or torch.distributed.get_rank(flat.get_group()) != rank)):
        raise ValueError(
            f"enable_parallelism: expected the sequence split over the {ulysses} ranks of the "
            "Ulysses mesh in their order, got a different mesh"
        )
    return group, size


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
        # (group, N) of diffusers' Ulysses context parallelism in the current forward, or None.
        self.parallel: tuple[Any, int] | None = None
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

    @property
    def shards(self) -> int:
        """N, the number of sequence shards of the current forward (1 without parallelism)."""
        return 1 if self.parallel is None else self.parallel[1]

    def uninstall(self) -> None:
        release = getattr(self.adapter, "release_context_parallel", None)
        if release is not None:
            release(self.model)
        parallel = getattr(self.model, "_parallel_config", None)
        context = getattr(parallel, "context_parallel_config", None) is not None
        for module, original in self._originals:
            # A stock processor put back carries the model's context parallel config as
            # enable_parallelism gives it to its own (also when enable_parallelism ran on
            # spaattn's), and none when the model has none (any more): a config the stock
            # processor got before apply() must not outlive the model's.
            if hasattr(original, "_parallel_config"):
                original._parallel_config = parallel if context else None
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
        # Context parallelism may be enabled after apply(): read (and checked) at every forward.
        self.parallel = check_context_parallel(module, self.adapter)
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
        text_placement: str = "suffix", text_shards: bool = False, text_whole: bool = False,
    ) -> torch.Tensor:
        """spaattn's attention of `layer` on [b, S, H, d] tensors (any strides) at the current
        step and entry; returns a contiguous [b, S, H, d] output.

        Under diffusers' context parallelism (:attr:`parallel`), q, k and v are this rank's
        shard of the sequence and `num_text` counts the text tokens of the whole sequence: the
        heads are exchanged (:func:`spaattn.distributed.sequence_to_heads`), spaattn runs on the
        whole sequence of this rank's heads, and the output goes back to the rank's shard.
        `text_shards`: each rank's shard is its shard of the text followed by its shard of the
        video (the text placed first, ``text_placement="prefix"``), not a contiguous shard of
        the whole sequence; the whole sequence is put in order (all text, then all video) for
        the attention and back for the output. `text_whole`: each rank's shard is its video
        shard followed by the whole text (``num_text`` tokens, the same on every rank); the
        rank's heads of the text join the whole video of those heads, and the text output of
        every head is gathered back on every rank.
        """
        if self.info is None:
            raise RuntimeError(
                f"spaattn's {self.adapter.name} processor ran outside the transformer's forward: "
                "the latent grid is unknown"
            )
        _ops.check_inputs(q, k, v)
        grid = self.info["grid"]
        if self.parallel is None:
            return torch.ops.spaattn.model_attention(
                q, k, v, text_lengths, self.handle, layer, list(grid or ()), num_text,
                text_placement,
            )
        group, n = self.parallel
        self._check_shards(layer, q, k, v, text_lengths, grid, num_text, text_placement,
                           text_shards, text_whole, n)
        if text_whole:
            return self._attend_text_whole(layer, q, k, v, text_lengths, grid, num_text, group,
                                           n)
        qh, kh, vh = sequence_to_heads_many((q, k, v), n, group)
        if text_shards:
            qh, kh, vh = (_text_first(x, n, num_text // n) for x in (qh, kh, vh))
        out = torch.ops.spaattn.model_attention(
            qh, kh, vh, text_lengths, self.handle, layer, list(grid or ()), num_text,
            text_placement,
        )
        if text_shards:
            out = _text_sharded(out, n, num_text)
        return heads_to_sequence(out, n, group)

    def _attend_text_whole(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           text_lengths: torch.Tensor | None, grid: tuple[int, ...] | None,
                           num_text: int, group: Any, n: int) -> torch.Tensor:
        """:meth:`attend` with `text_whole` (checked): rank r's heads r * H/N .. of the whole
        video (one all-to-all per tensor) followed by the same heads of the text."""
        video = q.shape[1] - num_text
        heads = q.shape[2] // n
        rank = torch.distributed.get_rank(group)
        local = slice(rank * heads, (rank + 1) * heads)
        exchanged = sequence_to_heads_many([x[:, :video] for x in (q, k, v)], n, group)
        qh, kh, vh = (torch.cat([xh, x[:, video:, local]], 1)
                      for xh, x in zip(exchanged, (q, k, v), strict=True))
        out = torch.ops.spaattn.model_attention(
            qh, kh, vh, text_lengths, self.handle, layer, list(grid or ()), num_text, "suffix")
        video_out = heads_to_sequence(out[:, :n * video], n, group)
        text_out = out[:, n * video:].contiguous()
        texts = [torch.empty_like(text_out) for _ in range(n)]
        torch.distributed.all_gather(texts, text_out, group=group)
        return torch.cat([video_out, torch.cat(texts, 2)], 1)

    def _check_shards(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      text_lengths: torch.Tensor | None, grid: tuple[int, ...] | None,
                      num_text: int, text_placement: str, text_shards: bool, text_whole: bool,
                      n: int) -> None:
        """The checks of a call on this rank's shard, before any communication: the heads
        divisible by N, the shard N-th of the forward's whole sequence (with `text_whole`: of
        its video tokens, followed by the whole text), and the core's checks of the one-process
        call on the whole sequence of the local heads."""
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.dim() != 4 or x.shape[2] % n:
                raise ValueError(f"{name}: expected [b, S/{n}, H, d] with a number of heads "
                                 f"divisible by ulysses_degree {n}, got {tuple(x.shape)}")
        whole = self.info.get("seq") if self.info else None
        if whole is None and grid:
            whole = num_text + grid[0] * grid[1] * grid[2]
        if text_whole:
            if text_placement != "suffix" or num_text > q.shape[1]:
                raise ValueError(f"num_text: expected the whole text after this rank's video "
                                 f"shard of {q.shape[1]} tokens, got {num_text} tokens "
                                 f"({text_placement})")
            video = q.shape[1] - num_text
            if whole is not None and video * n != whole - num_text:
                raise ValueError(
                    f"q: expected this rank's shard of the forward's {whole - num_text} video "
                    f"tokens ({(whole - num_text) / n:g} on each of {n} ranks) followed by "
                    f"{num_text} text tokens, got {q.shape[1]} tokens")
        elif whole is not None and q.shape[1] * n != whole:
            raise ValueError(f"q: expected this rank's shard of the forward's {whole} tokens "
                             f"({whole / n:g} on each of {n} ranks), got {q.shape[1]}")
        if text_shards and num_text % n:
            raise ValueError(f"num_text: expected a multiple of ulysses_degree {n}, got "
                             f"{num_text}")
        if text_whole:
            mq, mk, mv = (whole_meta(x, n, whole_tokens=num_text) for x in (q, k, v))
        else:
            mq, mk, mv = (whole_meta(x, n) for x in (q, k, v))
        self.attention(tuple(grid or ()))._impl.check(
            mq, mk, mv, mq, _ops.lengths_meta(text_lengths, q),
            layer, 0, 0, num_text, text_placement)

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


def _text_first(x: torch.Tensor, n: int, text: int) -> torch.Tensor:
    """[b, S, h, d] whose sequence is the N ranks' [text shard, video shard] pairs -> the text
    shards in rank order, then the video shards (`text`: tokens of one text shard)."""
    pairs = x.unflatten(1, (n, -1))
    return torch.cat([pairs[:, :, :text].flatten(1, 2), pairs[:, :, text:].flatten(1, 2)], 1)


def _text_sharded(out: torch.Tensor, n: int, num_text: int) -> torch.Tensor:
    """The inverse of :func:`_text_first` (`num_text`: the whole sequence's text tokens)."""
    text = out[:, :num_text].unflatten(1, (n, -1))
    video = out[:, num_text:].unflatten(1, (n, -1))
    return torch.cat([text, video], 2).flatten(1, 2)
