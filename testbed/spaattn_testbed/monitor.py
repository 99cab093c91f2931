"""Measures an attention function while it runs: its time, and its error against dense attention.

``AttentionMonitor(inner)`` is itself an attention function. Every call runs ``inner``, timed with
CUDA events on the current stream (wall clock on the CPU), and, when ``compare=True``, runs the
dense reference on the same q, k, v and accumulates, per ``(layer, step)``:

- relative L2 error ``||out - ref|| / ||ref||`` over all valid rows of the batch;
- mean cosine similarity of ``out`` and ``ref`` over valid (row, head) vectors.

Valid rows are the video tokens and the first ``L_t`` text tokens of each item (padding rows are
zero in both). The inputs are those of the monitored run, so the error is the attention error
of each call, not the drift of the whole trajectory. Sums stay on the device until ``results()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .attention import AttentionFn, dense_attention, token_valid_mask


@dataclass
class MonitorResults:
    """Attention time and error of one run; arrays are ``[layers, steps]`` (NaN where not called)."""

    calls: int
    milliseconds: float
    rel_l2: np.ndarray | None
    cos: np.ndarray | None

    @property
    def ms_per_call(self) -> float:
        return self.milliseconds / max(self.calls, 1)


class AttentionMonitor:
    """Times ``inner`` and (optionally) compares each of its outputs with ``reference``."""

    def __init__(self, inner: AttentionFn, layers: int, steps: int, compare: bool = True,
                 reference: AttentionFn = dense_attention) -> None:
        self.inner = inner
        self.reference = reference
        self.compare = compare
        self.layers, self.steps = layers, steps
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._cpu_ms = 0.0
        self._calls = 0
        self._sums: torch.Tensor | None = None  # [layers, steps, 4]: err^2, ref^2, cos sum, cos count

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int, step_idx: int | None,
                 text_lengths: torch.Tensor, *, grid: tuple[int, int, int]) -> torch.Tensor:
        if step_idx is None or not (0 <= step_idx < self.steps) or not (0 <= layer_idx < self.layers):
            raise ValueError(f"(layer_idx, step_idx): expected within ({self.layers}, {self.steps}), "
                             f"got ({layer_idx}, {step_idx})")
        cuda = q.is_cuda
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.inner(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            out = self.inner(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)
            self._cpu_ms += (time.perf_counter() - t0) * 1e3
        self._calls += 1
        if self.compare:
            ref = self.reference(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)
            self._accumulate(out, ref, layer_idx, step_idx, text_lengths, grid)
        return out

    def _accumulate(self, out: torch.Tensor, ref: torch.Tensor, layer: int, step: int, text_lengths: torch.Tensor,
                    grid: tuple[int, int, int]) -> None:
        if self._sums is None:
            self._sums = torch.zeros(self.layers, self.steps, 4, dtype=torch.float64, device=out.device)
        n_video = grid[0] * grid[1] * grid[2]
        valid = token_valid_mask(text_lengths, n_video, out.shape[1] - n_video)  # [b, S]
        a, b = out.float(), ref.float()
        err2 = ((a - b) ** 2).sum(dim=-1)  # [b, S, H]
        ref2 = (b * b).sum(dim=-1)
        out2 = (a * a).sum(dim=-1)
        dot = (a * b).sum(dim=-1)
        use = valid[:, :, None] & (ref2 > 0)
        cos = dot / (out2 * ref2).clamp_min(1e-30).sqrt()
        self._sums[layer, step] += torch.stack([
            err2[use].sum().double(), ref2[use].sum().double(),
            cos[use].sum().double(), use.sum().double(),
        ])

    def results(self) -> MonitorResults:
        """Synchronises once and returns time and error of everything since creation."""
        if self._events:
            torch.cuda.synchronize()
        ms = self._cpu_ms + sum(s.elapsed_time(e) for s, e in self._events)
        rel = cos = None
        if self._sums is not None:
            sums = self._sums.cpu().numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(sums[..., 3] > 0, np.sqrt(sums[..., 0] / sums[..., 1]), np.nan)
                cos = np.where(sums[..., 3] > 0, sums[..., 2] / sums[..., 3], np.nan)
        return MonitorResults(self._calls, ms, rel, cos)
