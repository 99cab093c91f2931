"""One-call attention functions: block-sparse attention over a given mask, and Rectified SpaAttn.

Both take q, k, v as [b, S, H, d] (``layout="bshd"``, as diffusers' processors hold them) or
[b, H, S, d] (``layout="bhsd"``, as torch's scaled_dot_product_attention takes them); the layout
only changes the strides the C++ core is given, nothing is copied. Outputs are allocated in the
framework, device and layout of q. CPU tensors run on the C++ reference (float32, float16,
bfloat16), CUDA torch tensors on the GPU kernel (bfloat16, float16) on torch's current stream.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _C  # type: ignore[attr-defined]
from . import _tensors as T
from ._tensors import ArrayT
from .method import CallStats, SparseAttention

Mask = Any
"""A dense boolean block mask [b, H, n, n] over the n logical blocks, or CSR lists (a pair)."""


def dense_to_csr(mask: Any) -> tuple[Any, Any]:
    """CSR index lists (row_offsets, col_indices) of a dense boolean block mask.

    ``mask`` is [b, H, num_q_blocks, num_k_blocks] (bool or uint8). Row
    ``r = (batch * H + head) * num_q_blocks + i`` lists the selected key blocks of query block
    ``i`` in ``col_indices[row_offsets[r]:row_offsets[r + 1]]``. Host masks give int32 numpy
    arrays; CUDA masks are converted on the GPU (``col_indices`` then has room for every block,
    only the first ``row_offsets[-1]`` entries are used).

    >>> import numpy as np, spaattn
    >>> mask = np.array([[[[1, 0], [1, 1]]]], dtype=bool)
    >>> row_offsets, col_indices = spaattn.dense_to_csr(mask)
    >>> row_offsets.tolist(), col_indices.tolist()
    ([0, 1, 3], [0, 0, 1])
    """
    T.check_array(mask, "mask")
    dtype = str(mask.dtype).removeprefix("torch.")
    if dtype not in ("bool", "uint8"):
        # Checked here: the binding's list of the dtypes it can view would suggest others.
        raise ValueError(f"mask: expected dtype bool or uint8, got {dtype}")
    if mask.ndim == 4 and mask.shape[3] >= 2**31:
        # Block ids are int32; checked before a contiguous copy of a broadcast mask is made.
        raise ValueError(f"mask: expected fewer than 2^31 key blocks, got {mask.shape[3]}")
    if T.is_cuda(mask):
        with T.device_of(mask) as stream:
            return _device_csr(mask, stream)
    # np.ascontiguousarray would turn a 0-d mask into a 1-d one and hide its rank.
    dense = mask.detach().cpu().contiguous() if T.is_torch(mask) else np.asarray(mask, order="C")
    return _C.dense_to_csr_host(dense)


def _device_csr(mask: Any, stream: int) -> tuple[Any, Any]:
    torch = T._torch()
    dense = mask.detach()
    dense = (dense.view(torch.uint8) if dense.dtype == torch.bool else dense).contiguous()
    rows, nk = (int(np.prod(dense.shape[:3])), dense.shape[3]) if dense.ndim == 4 else (0, 0)
    row_offsets = torch.empty(rows + 1, dtype=torch.int32, device=dense.device)
    col_indices = torch.empty(max(rows * nk, 1), dtype=torch.int32, device=dense.device)
    workspace = torch.empty(
        max(_C.dense_to_csr_workspace_size(rows), 1), dtype=torch.uint8, device=dense.device
    )
    _C.dense_to_csr(dense, row_offsets, col_indices, workspace, stream)
    return row_offsets, col_indices


def _mask_csr(mask: Mask, q: Any, stream: int) -> tuple[Any, Any]:
    """The mask as CSR lists on q's device."""
    if isinstance(mask, (tuple, list)):
        if len(mask) != 2:
            raise ValueError(
                f"mask: expected a dense block mask or a (row_offsets, col_indices) pair, "
                f"got a sequence of {len(mask)}"
            )
        row_offsets = T.int32_on(mask[0], q, "mask.row_offsets")
        col_indices = T.int32_on(mask[1], q, "mask.col_indices")
        if not T.is_cuda(q) and row_offsets.ndim == 1 and row_offsets.shape[0] > 0:
            # Lists made on the GPU have room for every block; the host checks want nnz. Other
            # ends (negative, past the list) are left for the core to report.
            nnz = int(row_offsets[-1])
            if 0 <= nnz < col_indices.shape[0]:
                col_indices = col_indices[:nnz]
        return row_offsets, col_indices
    T.check_array(mask, "mask")
    if T.is_cuda(q):
        return _device_csr(mask.to(q.device) if T.is_torch(mask) else T._torch().from_numpy(
            np.ascontiguousarray(mask)).to(q.device), stream)
    return dense_to_csr(mask.cpu() if T.is_torch(mask) else mask)


def block_sparse_attention(
    q: ArrayT,
    k: ArrayT,
    v: ArrayT,
    mask: Mask,
    *,
    num_text: int = 0,
    text_lengths: Any = None,
    text_placement: str = "suffix",
    block_size: int = 128,
    scale: float | None = None,
    layout: str = "bshd",
    return_lse: bool = False,
    kernel: str = "auto",
    precision: str = "input",
) -> ArrayT | tuple[ArrayT, ArrayT]:
    """Attention restricted to the key blocks a block mask selects (docs/methods.md).

    The sequence holds ``S - num_text`` video tokens and ``num_text`` text tokens after them
    (``text_placement="suffix"``, HunyuanVideo) or before them (``"prefix"``, CogVideoX), cut
    into blocks of ``block_size`` (64 or 128) tokens. Mask indices are logical blocks: video
    blocks first, then text blocks, whatever the placement. ``text_lengths`` (an int or one
    per batch item) marks the valid text tokens; padding keys are skipped and padding query
    rows are zero. A row whose mask selects nothing is zero with ``lse = -inf``.

    Args:
        q, k, v: [b, S, H, d] (or [b, H, S, d] with ``layout="bhsd"``), d = 64 or 128.
        mask: dense boolean [b, H, n, n] over the n logical blocks, or (row_offsets,
            col_indices) CSR lists as :func:`dense_to_csr` returns them.
        scale: softmax scale, default 1/sqrt(d).
        return_lse: also return the float32 log-sum-exp per row, [b, S, H] (or [b, H, S]).
        kernel: GPU kernel family: "auto", "portable" or "hopper" (see SparseAttention).
        precision: "input" (the tensors' values) or "fp8": Q and K quantised to int8 and V to
            FP8 e4m3 for the Hopper kernel (CUDA tensors on a compute capability 9.0 device,
            block_size 128, as SparseAttention's ``precision``); the quantised copies of
            q, k and v take a workspace of about 1.5 times q's bytes, allocated for the call.

    >>> import numpy as np, spaattn
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 200, 2, 64), dtype=np.float32) for _ in range(3))
    >>> mask = np.ones((1, 2, 2, 2), dtype=bool)   # 200 tokens = 2 blocks of 128
    >>> out = spaattn.block_sparse_attention(q, k, v, mask)
    >>> s = np.einsum("bqhd,bkhd->bhqk", q, k) / 8.0
    >>> p = np.exp(s - s.max(-1, keepdims=True))
    >>> ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)
    >>> bool(np.abs(out - ref).max() < 1e-4)
    True
    """
    T.check_layout(layout)
    num_text = T.integer(num_text, "num_text", bits=64)
    block_size = T.integer(block_size, "block_size")
    if T.is_torch(q):
        # One custom operator per call (spaattn._ops), as SparseAttention.forward.
        from . import _ops

        _ops.check_inputs(q, k, v)
        torch = T._torch()
        dense, row_offsets, col_indices = None, None, None
        if isinstance(mask, (tuple, list)):
            if len(mask) != 2:
                raise ValueError(
                    f"mask: expected a dense block mask or a (row_offsets, col_indices) pair, "
                    f"got a sequence of {len(mask)}"
                )
            row_offsets, col_indices = (
                x if isinstance(x, torch.Tensor) else torch.from_numpy(T.int32_array(x, name))
                for x, name in zip(mask, ("mask.row_offsets", "mask.col_indices"), strict=True)
            )
        else:
            T.check_array(mask, "mask")
            dense = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
        out, lse = _ops.block_sparse_attention(
            q, k, v, dense, row_offsets, col_indices, _ops.lengths_tensor(text_lengths, q),
            num_text, text_placement, block_size, 0.0 if scale is None else scale, kernel,
            layout, return_lse, precision,
        )
        return (out, lse) if return_lse else out
    out, lse = _block_sparse(q, k, v, mask, num_text, text_lengths, text_placement, block_size,
                             scale, layout, return_lse, kernel, precision)
    return (out, lse) if return_lse else out


def _block_sparse(q: Any, k: Any, v: Any, mask: Mask, num_text: int, text_lengths: Any,
                  text_placement: str, block_size: int, scale: float | None, layout: str,
                  return_lse: bool, kernel: str, precision: str = "input") -> tuple[Any, Any]:
    """The call itself: (out, lse or None) in q's framework."""
    qv, kv, vv = T.bshd(q, layout, "q"), T.bshd(k, layout, "k"), T.bshd(v, layout, "v")
    out, out_view = T.output(q, None, layout)
    lse: Any = None
    lse_view: Any = None
    if return_lse:
        lse, lse_view = T.lse_output(q, layout)
    lengths, lengths_host = T.text_lengths(text_lengths, q)
    dense = not isinstance(mask, (tuple, list)) and getattr(mask, "ndim", 0) == 4
    workspace = None
    if precision == "fp8" and T.is_cuda(q):  # elsewhere the binding names the precision
        size = _C.fp8_workspace_size(qv, kv, vv, num_text, text_placement, block_size)
        workspace = T._torch().empty(max(size, 1), dtype=T._torch().uint8, device=q.device)
    with T.device_of(q) as stream:
        row_offsets, col_indices = _mask_csr(mask, q, stream)
        _C.block_sparse_attention(
            qv, kv, vv, row_offsets, col_indices, out_view, lse_view, lengths, lengths_host,
            num_text, text_placement, block_size, 0.0 if scale is None else scale, kernel,
            precision, tuple(mask.shape) if dense else None, workspace, stream,
        )
    return out, lse


def rectified_attention(
    q: ArrayT,
    k: ArrayT,
    v: ArrayT,
    *,
    sparsity: float = 0.9,
    p: float = 0.3,
    grid: Sequence[int] | None = None,
    order: str | None = None,
    num_text: int = 0,
    text_lengths: Any = None,
    text_placement: str = "suffix",
    gapr: bool = True,
    neighbours: bool = True,
    first_frame_blocks: int = 0,
    block_size: int = 128,
    scale: float | None = None,
    layout: str = "bshd",
    precision: str = "input",
    return_stats: bool = False,
) -> ArrayT | tuple[ArrayT, CallStats]:
    """One call of Rectified SpaAttn (docs/methods.md, Rectified SpaAttn).

    Pooled implicit full attention picks at least ``floor((1 - sparsity) * NV)`` critical key
    blocks per query block (and the smallest prefix holding more than ``p`` of its mass), plus
    the block neighbours of the latent ``grid`` (T, H, W) and every text block; the sparse
    output is then rectified, ``O = R_i O_spa + C_i``, with gain-aware pooling (``gapr``).
    With a grid the video tokens are visited in ``order`` ("gilbert" by default, "tiles" or
    "raster") inside the call; inputs and output stay in raster order. The objects that hold
    the token order and the GPU workspace are kept for the last few settings and devices
    (``rectified_attention.cache_clear()`` drops them), so repeated calls do not rebuild them;
    no selection carries over between calls. ``precision="fp8"`` runs the Hopper kernel on
    8-bit operands (CUDA tensors, block size 128; see :class:`SparseAttention`). For layers and
    steps with state use :class:`SparseAttention`.

    >>> import numpy as np, spaattn
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 4 * 16 * 16, 2, 64), dtype=np.float32)
    ...            for _ in range(3))
    >>> out, stats = spaattn.rectified_attention(q, k, v, sparsity=0.9, grid=(4, 16, 16),
    ...                                          block_size=64, return_stats=True)
    >>> out.shape, stats.kind, bool(stats.density < 1.0)
    ((1, 1024, 2, 64), 'sparse', True)
    """
    settings = dict(sparsity=sparsity, p=p, grid=None if grid is None else tuple(grid),
                    order=order, gapr=gapr, neighbours=neighbours,
                    first_frame_blocks=first_frame_blocks, block_size=block_size, scale=scale,
                    precision=precision)
    device = str(q.device) if T.is_torch(q) else "cpu"  # type: ignore[attr-defined]
    cached = _attention_for(settings, device)
    with cached.lock:
        # Steps 0 and 1 in turn: each call makes a fresh selection (mask_period 1), and the state
        # and its memory stay allocated from one call to the next.
        cached.step ^= 1
        attention = cached.attention
        out = attention.forward(
            q, k, v, step=cached.step, num_text=num_text, text_lengths=text_lengths,
            text_placement=text_placement, layout=layout,
        )
        stats = attention.last_stats
    assert stats is not None
    return (out, stats) if return_stats else out


# rectified_attention's SparseAttention objects, by settings and device: the token order, the
# neighbour map, their device copies and the GPU workspace are made once, not per call. The
# least recently used object beyond _CACHE_SIZE is dropped (with its device memory).
_CACHE_SIZE = 4


class _Cached:
    """One cached object, the lock its calls take and the step of its last call."""

    def __init__(self, attention: SparseAttention) -> None:
        self.attention = attention
        self.lock = threading.Lock()
        self.step = 1


_cache: OrderedDict[tuple[Any, ...], _Cached] = OrderedDict()
_cache_lock = threading.Lock()


def _attention_for(settings: dict[str, Any], device: str) -> _Cached:
    key = (device, *sorted(settings.items()))
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            return entry
    # Made outside the lock (the constructor checks the settings and may raise).
    entry = _Cached(SparseAttention("rectified", **settings))
    with _cache_lock:
        entry = _cache.setdefault(key, entry)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return entry


def _cache_clear() -> None:
    """Drops the cached objects of :func:`rectified_attention` and their device memory."""
    with _cache_lock:
        _cache.clear()


rectified_attention.cache_clear = _cache_clear  # type: ignore[attr-defined]
