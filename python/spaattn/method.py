"""SparseAttention: a configured method with its state across layers and denoising steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _C  # type: ignore[attr-defined]
from . import _tensors as T
from ._tensors import ArrayT

METHODS = ("dense", "sparse", "rectified", "rettention", "rectified_rettention", "calibrated")


@dataclass(frozen=True)
class CallStats:
    """What one call did.

    kind: "dense" (full attention), "sparse" or "reference" (a Re-ttention reference step,
    full attention that refreshes the cached statistics). density: the share of (query, key)
    token pairs the sparse kernel computed; on the GPU NaN unless the object was made with
    ``measure_density=True`` (reading the mask back synchronises once per call).
    mask_reused: the selection came from an earlier step (``mask_period``).
    """

    kind: str
    density: float
    mask_reused: bool


CANDIDATES = ("none", "affine", "scale", "rettention", "merge")


@dataclass(frozen=True)
class Calibration:
    """What the last reference step of one (layer, entry) of the ``"calibrated"`` method
    measured, per batch item b and head h.

    ref_step: the reference step that measured the errors. interval: the distance k from the
    previous reference step of the run to ``ref_step`` (0 when there was none: Re-ttention's
    correction then serves every head until the next one). drift[b][h]: Re-ttention's drift
    ``lambda`` fitted so far (the configured ``drift`` before two reference steps).
    errors_ref[b][h] and errors_then[b][h]: per candidate of :data:`CANDIDATES`, the squared L2
    error against full attention over the video query rows at distance 0 (``ref_step``'s own
    mask; 0 for ``"rettention"``, exact there) and at distance ``interval`` (as the candidate
    would have served ``ref_step`` from the previous reference step; NaN when ``interval`` is 0).
    """

    ref_step: int
    interval: int
    drift: list[list[float]]
    errors_ref: list[list[dict[str, float]]]
    errors_then: list[list[dict[str, float]]]

    def _at(self, distance: int) -> list[list[tuple[str, list[float]]]]:
        distance = T.integer(distance, "distance", low=1)
        interval = T.integer(self.interval, "interval", low=0)
        return [[_C.calibrated_choice([ref[c] for c in CANDIDATES], [then[c] for c in CANDIDATES],
                                      interval, distance)
                 for ref, then in zip(refs, thens, strict=True)]
                for refs, thens in zip(self.errors_ref, self.errors_then, strict=True)]

    def choice(self, distance: int) -> list[list[str]]:
        """The candidate a sparse step ``distance`` >= 1 steps after ``ref_step`` applies to
        each (b, h): the least expected error (:meth:`expected`), the earlier of
        :data:`CANDIDATES` on a tie; ``"rettention"`` when ``interval`` is 0."""
        return [[name for name, _ in row] for row in self._at(distance)]

    def expected(self, distance: int) -> list[list[dict[str, float]]]:
        """The squared error expected of each candidate of each (b, h) ``distance`` >= 1 steps
        after ``ref_step``: its norm taken as linear in the distance through the two measured
        errors (extrapolated past ``interval``, never below 0); NaN when ``interval`` is 0."""
        return [[dict(zip(CANDIDATES, e, strict=True)) for _, e in row]
                for row in self._at(distance)]


class SparseAttention:
    """Rectified SpaAttn, Re-ttention, their combination or a baseline, with per-layer state.

    One object serves every attention layer of a model: state (selections reused across steps,
    Re-ttention's cached ``rho`` and ``Delta``) is keyed by ``(layer, entry)``, where ``entry``
    tells apart calls of one layer at one step (classifier-free guidance run as two separate
    forwards: cond and uncond). Call :meth:`reset` between diffusion runs.

    Methods: ``"rectified"`` (Rectified SpaAttn), ``"sparse"`` (the same selection without
    correction), ``"dense"``, ``"rettention"`` (Re-ttention: reference steps every
    ``ref_period`` steps after ``dense_steps`` dense ones, band selection by default) and
    ``"rectified_rettention"`` (Rectified SpaAttn's selection with Re-ttention's correction) and
    ``"calibrated"`` (Rectified SpaAttn's selection on Re-ttention's schedule; at each reference
    step, per batch item and head, the candidate correction with the least error against full
    attention, "no correction" included, serves until the next one; CPU and CUDA tensors).

    Args:
        sparsity: target share of video key blocks skipped, ``0 <= sparsity < 1``.
        p: cumulative pooled attention the kept blocks must exceed.
        block_size: 64 or 128 tokens.
        grid: latent video grid (T, H, W); with it the video tokens are visited in ``order``
            inside each call and the block neighbour map is added to the selection.
        order: "gilbert" (default with a grid), "tiles" or "raster"; ``axes`` orders the
            gilbert curve's axes from major to minor, ``tile`` gives the tiles' (t, h, w).
        selector: "automatic" (the method's published choice), "ipar", "band" or "local".
        neighbours: add the block neighbour map of the grid to every selection.
        first_frame_blocks: a dense square over the first F video blocks in token order.
        gapr: compensate only non-critical blocks whose gain exceeds the pooling error.
        dense_steps, dense_layers: steps ``< dense_steps`` and the listed layers use full
            attention.
        mask_period: recompute the selection every ``mask_period`` steps.
        ref_period, drift, clamp, cache_delta: Re-ttention's reference period, the drift
            ``lambda`` of ``rho``, clamping ``rho'`` to 1, and caching ``Delta``.
        scale: softmax scale, default 1/sqrt(d).
        kernel: GPU kernel family, "auto" (the Hopper family on compute capability 9.0 devices,
            else the portable one; the environment variable SPAATTN_KERNEL may force one),
            "portable" or "hopper" (an error where it cannot run).
        precision: the GPU kernel's operands: "input" (the tensors' bfloat16 / float16) or
            "fp8" (Q and K as int8, V and the probabilities as FP8 e4m3, quantised once per
            call; the Hopper kernel only, block size 128; about 1.3x the 16-bit rate with a
            relative error of 1-2% on learned attention). An error on CPU tensors.
        measure_density: on the GPU, read each call's block mask back to report
            ``last_stats.density`` (one synchronisation per call; the CPU always reports it).

    Inputs and outputs are in the caller's token order (raster for the video tokens). CPU
    tensors run on the C++ reference; CUDA torch tensors run on the GPU on torch's current
    stream, with workspace and state allocated through torch.

    >>> import numpy as np, spaattn
    >>> rng = np.random.default_rng(0)
    >>> attention = spaattn.SparseAttention("rettention", sparsity=0.75, dense_steps=1,
    ...                                     ref_period=2, block_size=64)
    >>> q, k, v = (rng.standard_normal((1, 512, 2, 64), dtype=np.float32) for _ in range(3))
    >>> for step in range(4):
    ...     out = attention.forward(q, k, v, layer=0, step=step)
    ...     print(step, attention.last_stats.kind)
    0 dense
    1 reference
    2 sparse
    3 reference
    >>> attention.reset()
    """

    def __init__(
        self,
        method: str = "rectified",
        *,
        sparsity: float = 0.9,
        p: float = 0.3,
        block_size: int = 128,
        grid: Sequence[int] | None = None,
        order: str | None = None,
        axes: str = "wht",
        tile: Sequence[int] = (2, 8, 8),
        selector: str = "automatic",
        neighbours: bool = True,
        first_frame_blocks: int = 0,
        gapr: bool = True,
        dense_steps: int = 0,
        dense_layers: Sequence[int] = (),
        mask_period: int = 1,
        ref_period: int = 5,
        drift: float = 0.04,
        clamp: bool = False,
        cache_delta: bool = True,
        scale: float | None = None,
        measure_density: bool = False,
        kernel: str = "auto",
        precision: str = "input",
    ) -> None:
        # Integers are range-checked here, before the binding narrows them; what they mean
        # (block sizes, grid extents, periods) is checked by the C++ core.
        grid3 = None if grid is None else T.triple(grid, "grid", "(T, H, W)")
        block_size = T.integer(block_size, "block_size")
        self._memory = T.TorchMemory()
        self._impl = _C.SparseAttention(
            method=method, sparsity=sparsity, p=p, block_size=block_size,
            order=order if order is not None else ("raster" if grid is None else "gilbert"),
            grid=grid3, axes=axes, tile=T.triple(tile, "tile", "(t, h, w)"), selector=selector,
            neighbours=neighbours,
            first_frame_blocks=T.integer(first_frame_blocks, "first_frame_blocks", bits=64),
            gapr=gapr, dense_steps=T.integer(dense_steps, "dense_steps"),
            dense_layers=T.int32_array(dense_layers, "dense_layers", low=0).ravel().tolist(),
            mask_period=T.integer(mask_period, "mask_period"),
            ref_period=T.integer(ref_period, "ref_period"),
            drift=drift, clamp=clamp, cache_delta=cache_delta,
            scale=0.0 if scale is None else scale, measure_density=measure_density,
            kernel=kernel, precision=precision,
            allocate=self._memory.allocate, release=self._memory.release,
        )
        self.method = method
        self.block_size = block_size
        self.grid = grid3
        self.last_stats: CallStats | None = None
        self._handle: int | None = None  # the torch operators' handle, made on first use

    @property
    def selector(self) -> str:
        """The selector in use ("ipar", "band" or "local"; "automatic" resolved)."""
        return self._impl.selector

    @property
    def state_count(self) -> int:
        """Number of (layer, entry) states held."""
        return self._impl.state_count

    def reset(self) -> None:
        """Drops every cached selection and Re-ttention statistic (and frees GPU state)."""
        self._impl.reset()

    def calibration(self, layer: int = 0, entry: int = 0) -> Calibration | None:
        """The ``"calibrated"`` method's measurements at the last reference step of ``(layer,
        entry)`` (:meth:`Calibration.choice` gives the choices); None for other methods and
        before a reference step."""
        layer = T.integer(layer, "layer")
        entry = T.integer(entry, "entry")
        found = self._impl.calibration(layer, entry)
        if found is None:
            return None
        ref_step, interval, batch, heads, drift, error_ref, error_then = found
        n = len(CANDIDATES)

        def per_head(errors: list[float]) -> list[list[dict[str, float]]]:
            return [[dict(zip(CANDIDATES, errors[(b * heads + h) * n:(b * heads + h + 1) * n],
                              strict=True)) for h in range(heads)] for b in range(batch)]

        return Calibration(
            ref_step=ref_step,
            interval=interval,
            drift=[drift[b * heads:(b + 1) * heads] for b in range(batch)],
            errors_ref=per_head(error_ref),
            errors_then=per_head(error_then),
        )

    def forward(
        self,
        q: ArrayT,
        k: ArrayT,
        v: ArrayT,
        *,
        layer: int = 0,
        step: int = 0,
        entry: int = 0,
        num_text: int = 0,
        text_lengths: Any = None,
        text_placement: str = "suffix",
        layout: str = "bshd",
        out: ArrayT | None = None,
    ) -> ArrayT:
        """Attention of one layer at one denoising step; returns the output (also ``out``).

        q, k, v: [b, S, H, d] (``layout="bhsd"``: [b, H, S, d]) with ``num_text`` text
        tokens after (``text_placement="suffix"``) or before (``"prefix"``) the
        ``S - num_text`` video tokens, which must number T*H*W of the grid. ``text_lengths``:
        valid text tokens per batch item (an int, a sequence or an int tensor). ``out``: an
        optional preallocated output in the same layout (any float dtype on the CPU, q's dtype
        on the GPU). Everything is checked before any work and before any state changes;
        :attr:`last_stats` describes the call.
        """
        T.check_layout(layout)
        call = (T.integer(layer, "layer"), T.integer(entry, "entry"), T.integer(step, "step"))
        num_text = T.integer(num_text, "num_text", bits=64)
        if T.is_torch(q):
            # One custom operator per call (spaattn._ops): torch.compile and CUDA graphs see an
            # opaque operator, and the state changes only when it runs.
            from . import _ops

            _ops.check_inputs(q, k, v)
            lengths = _ops.lengths_tensor(text_lengths, q)
            if self._handle is None:
                self._handle = _ops.register(self)
            args = (lengths, self._handle, *call, num_text, text_placement, layout)
            if out is None:
                return _ops.sparse_attention(q, k, v, *args)
            T.check_array(out, "out")
            _ops.sparse_attention_out(q, k, v, out, *args)
            return out
        out, _ = T.output(q, out, layout)
        self._run(q, k, v, out, text_lengths, *call, num_text, text_placement, layout)
        return out

    def _run(self, q: Any, k: Any, v: Any, out: Any, text_lengths: Any, layer: int, entry: int,
             step: int, num_text: int, text_placement: str, layout: str) -> None:
        """The call itself, into `out` (the caller's layout); sets :attr:`last_stats`."""
        qv, kv, vv = T.bshd(q, layout, "q"), T.bshd(k, layout, "k"), T.bshd(v, layout, "v")
        out_view = T.bshd(out, layout, "out")
        lengths, lengths_host = T.text_lengths(text_lengths, q)
        with T.device_of(q) as stream:
            self._memory.device = q.device if T.is_cuda(q) else None  # type: ignore[attr-defined]
            kind, density, reused = self._impl.forward(
                qv, kv, vv, out_view, lengths, lengths_host, layer, entry, step, num_text,
                text_placement, stream,
            )
        self.last_stats = CallStats(kind, density, reused)

    def _check(self, q: Any, k: Any, v: Any, out: Any, text_lengths: Any, layer: int,
               entry: int, step: int, num_text: int, text_placement: str, layout: str) -> None:
        """The checks of :meth:`_run` from torch tensors' metadata (fake and meta tensors)."""
        from . import _ops

        qv, kv, vv = T.bshd(q, layout, "q"), T.bshd(k, layout, "k"), T.bshd(v, layout, "v")
        out_view = T.bshd(out, layout, "out")
        self._impl.check(_ops.meta(qv), _ops.meta(kv), _ops.meta(vv), _ops.meta(out_view),
                         _ops.lengths_meta(text_lengths, q), layer, entry, step, num_text,
                         text_placement)

    __call__ = forward
