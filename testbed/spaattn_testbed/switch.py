"""The attention switch: every layer of the model through one ``spaattn.SparseAttention`` method.

    attn = SpaattnAttention("rectified", sparsity=0.9)
    videos = sample(model, captions, attention=attn)   # resets itself at step 0 of each run

``method`` is one of ``spaattn.METHODS``: ``"dense"`` (spaattn's dense kernel), ``"sparse"`` (the
selected blocks, no correction), ``"rectified"`` (Rectified SpaAttn), ``"rettention"`` (Re-ttention)
and ``"rectified_rettention"``. The remaining keyword arguments go to ``spaattn.SparseAttention``
(``p``, ``block_size``, ``dense_steps``, ``ref_period``, ``gapr``, ...). One ``SparseAttention`` is
kept per token grid, created with that grid, so the video tokens are visited in the gilbert order
inside each call while the model keeps them in raster order.

The model's text tokens follow its video tokens (``text_placement="suffix"``); the ``L_t`` of each
batch item is passed on, so padding text tokens are never keys and their rows come out zero, as
in ``dense_attention``. Classifier-free guidance runs conditional and unconditional items as one
batch: one entry of the state whose batch items keep separate selections and caches.

The state (selections, Re-ttention's statistics) belongs to one sampling run: a call at step 0 of
layer 0 after any later step starts a new run and drops it; ``reset()`` does the same explicitly.
Training calls (``step_idx`` None) are refused: the methods are defined over sampler steps.
"""

from __future__ import annotations

import torch

try:
    import spaattn
except ImportError as err:  # the testbed runs without the package; only this module needs it
    raise ImportError("spaattn_testbed.switch needs the spaattn package: `pip install .` at the repository root") from err

METHODS = spaattn.METHODS


class SpaattnAttention:
    """Attention function (see ``attention.AttentionFn``) running ``method`` of spaattn."""

    def __init__(self, method: str, sparsity: float = 0.9, **options) -> None:
        if method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        # Arguments are checked by the core now, before any call (SparseAttention validates on creation).
        spaattn.SparseAttention(method, sparsity=sparsity, **options)
        self.method = method
        self.sparsity = sparsity
        self.options = dict(options)
        self._by_grid: dict[tuple[int, int, int], spaattn.SparseAttention] = {}
        self._last_step = -1
        self.kinds: dict[str, int] = {}
        """How many calls ran each kind since the last reset ("dense", "sparse", "reference")."""
        self.densities: list[float] = []
        """``last_stats.density`` of every call since the last reset (on the GPU NaN unless the
        object was made with ``measure_density=True``)."""

    def reset(self) -> None:
        """Drop every selection and cached statistic (a new sampling run)."""
        for attention in self._by_grid.values():
            attention.reset()
        self._last_step = -1
        self.kinds = {}
        self.densities = []

    def _for_grid(self, grid: tuple[int, int, int]) -> spaattn.SparseAttention:
        key = tuple(int(g) for g in grid)
        if key not in self._by_grid:
            self._by_grid[key] = spaattn.SparseAttention(self.method, sparsity=self.sparsity, grid=key, **self.options)
        return self._by_grid[key]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int, step_idx: int | None,
                 text_lengths: torch.Tensor, *, grid: tuple[int, int, int]) -> torch.Tensor:
        if step_idx is None:
            raise ValueError("step_idx: spaattn methods run inside the sampler (got None, a training call?)")
        if step_idx == 0 and layer_idx == 0 and self._last_step > 0:
            self.reset()
        self._last_step = max(self._last_step, step_idx)
        attention = self._for_grid(grid)
        n_video = grid[0] * grid[1] * grid[2]
        out = attention.forward(q, k, v, layer=layer_idx, step=step_idx, num_text=q.shape[1] - n_video,
                                text_lengths=text_lengths, text_placement="suffix")
        kind = attention.last_stats.kind
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.densities.append(attention.last_stats.density)
        return out

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"SpaattnAttention({self.method!r}, sparsity={self.sparsity}{extra})"
