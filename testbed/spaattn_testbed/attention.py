"""The replaceable attention function of the model, its dense default, and a q/k/v capture hook.

Every attention layer of ``VideoDiT`` calls one function::

    attn(q, k, v, layer_idx, step_idx, text_lengths, *, grid) -> out

- ``q``, ``k``, ``v``: ``[b, S, H, d]`` after QK-norm and RoPE, ``S = N_v + N_t``: the ``N_v`` video
  tokens in raster order ``T x H x W`` first, then the ``N_t`` text tokens.
- ``layer_idx``: index of the layer (0-based); ``step_idx``: index of the sampler step (0-based), or
  ``None`` outside sampling (training).
- ``text_lengths``: int32 ``[b]``, the valid text tokens ``L_t <= N_t`` of each batch item; padding text
  tokens are never attended to as keys and their query rows are zero in the output.
- ``grid``: the video token grid ``(T, H, W)``, so ``N_v = T * H * W`` and ``N_t = S - N_v``.
- ``out``: ``[b, S, H, d]``, the attention output per head (before the output projection).
"""

from __future__ import annotations

import json
from typing import Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


class AttentionFn(Protocol):
    """Signature of the attention function called by every layer."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                 step_idx: int | None, text_lengths: torch.Tensor, *,
                 grid: tuple[int, int, int]) -> torch.Tensor: ...


def token_valid_mask(text_lengths: torch.Tensor, n_video: int, n_text: int) -> torch.Tensor:
    """Boolean ``[b, S]``: True for video tokens and for the first ``L_t`` text tokens of each item."""
    b = text_lengths.shape[0]
    video = torch.ones(b, n_video, dtype=torch.bool, device=text_lengths.device)
    text = torch.arange(n_text, device=text_lengths.device)[None, :] < text_lengths[:, None].long()
    return torch.cat([video, text], dim=1)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                    step_idx: int | None, text_lengths: torch.Tensor, *,
                    grid: tuple[int, int, int]) -> torch.Tensor:
    """Full attention over all valid keys (torch SDPA with a key padding mask)."""
    n_video = grid[0] * grid[1] * grid[2]
    valid = token_valid_mask(text_lengths, n_video, q.shape[1] - n_video)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=valid[:, None, None, :]
    ).transpose(1, 2)
    return out * valid[:, :, None, None].to(out.dtype)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                        step_idx: int | None, text_lengths: torch.Tensor, *,
                        grid: tuple[int, int, int]) -> torch.Tensor:
    """Dense attention written out in float32 (softmax of masked logits); for tests and checks."""
    n_video = grid[0] * grid[1] * grid[2]
    valid = token_valid_mask(text_lengths, n_video, q.shape[1] - n_video)
    logits = torch.einsum("bshd,bthd->bhst", q.float(), k.float()) / q.shape[-1] ** 0.5
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bhst,bthd->bshd", torch.softmax(logits, dim=-1), v.float())
    return (out * valid[:, :, None, None]).to(q.dtype)


class CaptureAttention:
    """Wraps an attention function and keeps q/k/v of chosen ``(layer, step)`` pairs.

    Tensors are stored on the CPU as ``layer{L}.step{S}.{q,k,v}`` (``[b', S, H', d]``, ``b'`` the
    selected batch items, ``H'`` the selected heads) with ``layer{L}.step{S}.text_lengths``; ``save``
    writes them to one safetensors file whose metadata holds the grid, ``N_v``, ``N_t``, the pairs and
    the heads.
    """

    def __init__(self, inner: AttentionFn, pairs: Iterable[tuple[int, int]],
                 batch_items: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        self.inner = inner
        self.pairs = set(pairs)
        self.batch_items = list(batch_items) if batch_items is not None else None
        self.heads = list(heads) if heads is not None else None
        self.dtype = dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.grid: tuple[int, int, int] | None = None
        self.n_text: int | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                 step_idx: int | None, text_lengths: torch.Tensor, *,
                 grid: tuple[int, int, int]) -> torch.Tensor:
        if step_idx is not None and (layer_idx, step_idx) in self.pairs:
            rows = self.batch_items if self.batch_items is not None else list(range(q.shape[0]))
            heads = self.heads if self.heads is not None else list(range(q.shape[2]))
            prefix = f"layer{layer_idx}.step{step_idx}"
            for name, t in (("q", q), ("k", k), ("v", v)):
                self.tensors[f"{prefix}.{name}"] = t[rows][:, :, heads].detach().to("cpu", self.dtype).contiguous()
            self.tensors[f"{prefix}.text_lengths"] = text_lengths[rows].detach().to("cpu", torch.int32)
            self.grid = grid
            self.n_text = q.shape[1] - grid[0] * grid[1] * grid[2]
        return self.inner(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)

    def save(self, path: str, metadata: dict[str, str] | None = None) -> None:
        """Write the captured tensors (error if nothing was captured)."""
        if not self.tensors or self.grid is None:
            raise RuntimeError(f"no q/k/v captured for pairs {sorted(self.pairs)}")
        missing = [p for p in self.pairs if f"layer{p[0]}.step{p[1]}.q" not in self.tensors]
        meta = {
            "grid": json.dumps(list(self.grid)),
            "n_video": str(self.grid[0] * self.grid[1] * self.grid[2]),
            "n_text": str(self.n_text),
            "layout": "[b, S, H, d], video tokens in raster order T x H x W, then text tokens",
            "pairs": json.dumps(sorted(p for p in self.pairs if p not in missing)),
            "heads": json.dumps(self.heads) if self.heads is not None else "all",
        }
        meta.update(metadata or {})
        save_file(self.tensors, path, metadata=meta)
