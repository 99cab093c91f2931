"""Token orders with 3D locality (docs/methods.md, Token orders).

Video tokens come from a latent grid (T, H, W) in raster order, raster index
``(t * H + y) * W + x``. A permutation ``perm`` lists, for each position k of the order, the raster
index of its token: gathering ``x_ord[k] = x[perm[k]]`` puts a tensor in that order, so that
blocks of consecutive tokens are compact in space-time. SparseAttention applies its order inside
each call; these helpers are for inspecting orders and for code that keeps tokens ordered itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _C  # type: ignore[attr-defined]
from . import _tensors as T
from ._tensors import ArrayT

ORDERS = ("raster", "gilbert", "tiles")


def _grid(grid: Sequence[int]) -> tuple[int, int, int]:
    return T.triple(grid, "grid", "(T, H, W)")


def _tile(tile: Sequence[int]) -> tuple[int, int, int]:
    return T.triple(tile, "tile", "(t, h, w)")


def token_permutation(
    kind: str, grid: Sequence[int], *, axes: str = "wht", tile: Sequence[int] = (2, 8, 8)
) -> np.ndarray:
    """The permutation of an order over a (T, H, W) grid as an int32 array.

    kind: "gilbert" (generalized Hilbert curve, major axis ``axes[0]``), "tiles" (``tile`` =
    (t, h, w) tiles in raster order, edge tiles partial) or "raster" (identity).

    >>> import spaattn
    >>> spaattn.token_permutation("tiles", (1, 2, 4), tile=(1, 2, 2)).tolist()
    [0, 1, 4, 5, 2, 3, 6, 7]
    """
    return _C.token_permutation(kind, _grid(grid), axes, _tile(tile))


def gilbert(grid: Sequence[int], *, axes: str = "wht") -> np.ndarray:
    """The generalized Hilbert curve over a (T, H, W) grid: consecutive points are neighbours.

    >>> import numpy as np, spaattn
    >>> perm = spaattn.gilbert((2, 4, 4))
    >>> t, y, x = np.unravel_index(perm, (2, 4, 4))
    >>> steps = np.abs(np.diff(t)) + np.abs(np.diff(y)) + np.abs(np.diff(x))
    >>> sorted(perm.tolist()) == list(range(32)), bool((steps == 1).all())
    (True, True)
    """
    return token_permutation("gilbert", grid, axes=axes)


def invert_permutation(perm: Any) -> np.ndarray:
    """The inverse permutation, ``inv[perm[k]] = k`` (raster position -> order position).

    >>> import spaattn
    >>> spaattn.invert_permutation([2, 0, 1]).tolist()
    [1, 2, 0]
    """
    host = perm.detach().cpu().numpy() if T.is_torch(perm) else perm
    return _C.invert_permutation(T.int32_array(host, "perm"))


def block_neighbours(
    grid: Sequence[int],
    *,
    block_size: int = 128,
    order: str = "gilbert",
    axes: str = "wht",
    tile: Sequence[int] = (2, 8, 8),
) -> list[list[int]]:
    """For each video block of the order, the blocks holding a token within one grid step.

    >>> import spaattn
    >>> spaattn.block_neighbours((1, 4, 4), block_size=4, order="raster")
    [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3]]
    """
    return _C.block_neighbours(order, _grid(grid), axes, _tile(tile),
                               T.integer(block_size, "block_size"))


def permute_tokens(
    x: ArrayT,
    perm: Any,
    *,
    video_offset: int = 0,
    inverse: bool = False,
    layout: str = "bshd",
) -> ArrayT:
    """Gathers the video tokens of x into an order, or scatters them back (``inverse=True``).

    ``x`` is [b, S, H, d] (or [b, H, S, d] with ``layout="bhsd"``); the ``len(perm)`` video
    tokens start at ``video_offset`` and the other tokens are copied unchanged. Host tensors are
    permuted by the C++ core, CUDA tensors with torch's indexing after the permutation is
    checked on the host (a permutation on the GPU is copied back for that).

    >>> import numpy as np, spaattn
    >>> x = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1).repeat(64, axis=3)
    >>> perm = spaattn.token_permutation("tiles", (1, 2, 4), tile=(1, 2, 2))
    >>> y = spaattn.permute_tokens(x, perm)
    >>> y[0, :, 0, 0].tolist()
    [0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]
    >>> bool((spaattn.permute_tokens(y, perm, inverse=True) == x).all())
    True
    """
    T.check_layout(layout)
    src = T.bshd(x, layout, "x")
    video_offset = T.integer(video_offset, "video_offset", bits=64)
    host = perm.detach().cpu().numpy() if T.is_torch(perm) else perm
    perm32 = T.int32_array(host, "perm")
    if T.is_cuda(x):
        # torch's indexing would wrap negative indices and fault on large ones: the checks of
        # the host path run first (on a host copy of the permutation).
        torch = T._torch()
        if src.ndim != 4:
            raise ValueError(f"x: expected rank 4 [b, S, H, d], got rank {src.ndim}")
        seq = src.shape[1]
        if not 0 <= video_offset <= seq:
            raise ValueError(
                f"video_offset: expected 0 <= video_offset <= S = {seq}, got {video_offset}"
            )
        if perm32.ndim != 1 or perm32.shape[0] > seq - video_offset:
            raise ValueError(
                f"perm: expected at most S - video_offset = {seq - video_offset} entries, got "
                f"shape {tuple(perm32.shape)}"
            )
        _C.invert_permutation(perm32)
        index = torch.from_numpy(perm32).to(device=src.device, dtype=torch.long)
        dst = src.clone()
        video = slice(video_offset, video_offset + index.shape[0])
        if inverse:
            dst[:, video_offset + index] = src[:, video]
        else:
            dst[:, video] = src[:, video_offset + index]
        return dst.transpose(1, 2).contiguous() if layout == "bhsd" else dst
    out, out_view = T.output(x, None, layout)
    _C.permute_tokens(src, out_view, perm32, video_offset, inverse)
    return out
