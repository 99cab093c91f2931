"""spaattn's attention calls on torch tensors as torch custom operators.

torch.compile, CUDA-graph capture and torch's other tracing tools see each call as one operator,
``torch.ops.spaattn.sparse_attention`` (a :class:`spaattn.SparseAttention` call),
``torch.ops.spaattn.block_sparse_attention`` (:func:`spaattn.block_sparse_attention`) or
``torch.ops.spaattn.model_attention`` (a call of spaattn's diffusers processors), instead of
tracing into the binding: ``torch.compile(model, fullgraph=True)`` compiles a model that calls
spaattn without a graph break. The operators reach the per-layer state through an opaque handle,
an integer naming a live Python object; the state itself (selections, Re-ttention caches, the
step clock of a diffusers model) is read and changed when the operator runs, never while a graph
is traced. Their fake implementations (used on meta and fake tensors while tracing) make the
same checks as a real call, from the tensors' metadata, and raise the same errors.

spaattn computes no gradients: inputs that require grad while grad mode is on are an error.

This module is imported when torch is: by ``import spaattn`` after ``import torch``, by
:mod:`spaattn.diffusers`, or by the first call of spaattn on torch tensors.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

_objects: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_next_handle = itertools.count(1)


def register(obj: Any) -> int:
    """An opaque handle for `obj`, valid while `obj` lives; operators take it as an int."""
    handle = next(_next_handle)
    _objects[handle] = obj
    return handle


def _resolve(handle: int) -> Any:
    obj = _objects.get(handle)
    if obj is None:
        raise RuntimeError(f"spaattn: handle {handle} names an object that no longer exists")
    return obj


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def meta(x: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], str, str]:
    """(shape, strides, dtype, device) of a tensor, as the binding's shape-only checks take them.

    Meta tensors are checked as host tensors: their output is a meta tensor of the right shape.
    """
    device = x.device.type
    return (tuple(x.shape), tuple(x.stride()), str(x.dtype).removeprefix("torch."),
            "cpu" if device == "meta" else device)


def lengths_meta(text_lengths: Tensor | None, q: Tensor) -> Any:
    """The text lengths as the call will pass them: int32 on q's device (values not read)."""
    if text_lengths is None:
        return None
    device = "cpu" if q.device.type == "meta" else q.device.type
    return (tuple(text_lengths.shape), (1,), "int32", device)


def check_inputs(q: Any, k: Any, v: Any) -> None:
    """What the binding cannot report with the argument's name: the framework, the dtype of a
    torch tensor, and gradients, which spaattn does not compute."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor (as q), got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{name}: expected dtype float32, bfloat16 or float16, got "
                f"{str(x.dtype).removeprefix('torch.')}"
            )
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name}: expected a tensor that does not require grad (spaattn computes no "
                "gradients): run under torch.no_grad() or torch.inference_mode(), or detach it"
            )


def lengths_tensor(text_lengths: Any, q: Tensor) -> Tensor | None:
    """Text lengths as a tensor: an int (one per batch item) or a sequence of ints becomes an
    int64 CPU tensor after a range check; a tensor is passed on as it is (checked when the call
    runs, where its values can be read)."""
    if text_lengths is None or isinstance(text_lengths, Tensor):
        return text_lengths
    values: Sequence[Any]
    if isinstance(text_lengths, int):
        values = [text_lengths] * (q.shape[0] if q.dim() >= 1 else 1)
    else:
        values = list(text_lengths)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"text_lengths: expected integers, got {type(value).__name__}")
        if not -(2**31) <= value < 2**31:
            raise ValueError(f"text_lengths: expected values < 2^31, got {value}")
    return torch.tensor(values, dtype=torch.int64)


@torch.library.custom_op("spaattn::sparse_attention", mutates_args=())
def sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, text_lengths: Tensor | None, handle: int, layer: int,
    entry: int, step: int, num_text: int, text_placement: str, layout: str,
) -> Tensor:
    """One call of the SparseAttention named by `handle`; returns a new contiguous output of q's
    shape in the caller's layout."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _resolve(handle)._run(q, k, v, out, text_lengths, layer, entry, step, num_text,
                          text_placement, layout)
    return out


@sparse_attention.register_fake
def _(q, k, v, text_lengths, handle, layer, entry, step, num_text, text_placement, layout):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _resolve(handle)._check(q, k, v, out, text_lengths, layer, entry, step, num_text,
                            text_placement, layout)
    return out


@torch.library.custom_op("spaattn::sparse_attention_out", mutates_args=("out",))
def sparse_attention_out(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, text_lengths: Tensor | None, handle: int,
    layer: int, entry: int, step: int, num_text: int, text_placement: str, layout: str,
) -> None:
    """sparse_attention into a preallocated `out`."""
    _resolve(handle)._run(q, k, v, out, text_lengths, layer, entry, step, num_text,
                          text_placement, layout)


@sparse_attention_out.register_fake
def _(q, k, v, out, text_lengths, handle, layer, entry, step, num_text, text_placement, layout):
    _resolve(handle)._check(q, k, v, out, text_lengths, layer, entry, step, num_text,
                            text_placement, layout)


@torch.library.custom_op("spaattn::model_attention", mutates_args=())
def model_attention(
    q: Tensor, k: Tensor, v: Tensor, text_lengths: Tensor | None, handle: int, layer: int,
    grid: list[int], num_text: int, text_placement: str,
) -> Tensor:
    """One call of a diffusers model's layer on [b, S, H, d] tensors (any strides): the model
    control named by `handle` supplies the attention object of `grid` (empty: no grid) and the
    denoising step and entry of this call when it runs. The output is contiguous [b, S, H, d]."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _resolve(handle).run_layer(q, k, v, out, text_lengths, layer, tuple(grid), num_text,
                               text_placement)
    return out


@model_attention.register_fake
def _(q, k, v, text_lengths, handle, layer, grid, num_text, text_placement):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _resolve(handle).check_layer(q, k, v, out, text_lengths, layer, tuple(grid), num_text,
                                 text_placement)
    return out


@torch.library.custom_op("spaattn::block_sparse_attention", mutates_args=())
def block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, row_offsets: Tensor | None,
    col_indices: Tensor | None, text_lengths: Tensor | None, num_text: int, text_placement: str,
    block_size: int, scale: float, kernel: str, layout: str, return_lse: bool, precision: str,
) -> tuple[Tensor, Tensor]:
    """spaattn.block_sparse_attention over a dense block mask or CSR lists (the other None);
    returns (out, lse), lse empty unless `return_lse`. `scale` 0: 1/sqrt(d)."""
    from .attention import _block_sparse

    out, lse = _block_sparse(
        q, k, v, mask if mask is not None else (row_offsets, col_indices), num_text,
        text_lengths, text_placement, block_size, scale or None, layout, return_lse, kernel,
        precision,
    )
    return out, lse if lse is not None else torch.empty(0, dtype=torch.float32, device=q.device)


@block_sparse_attention.register_fake
def _(q, k, v, mask, row_offsets, col_indices, text_lengths, num_text, text_placement, block_size,
      scale, kernel, layout, return_lse, precision):
    from . import _C  # type: ignore[attr-defined]
    from . import _tensors as T

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(tuple(q.shape[:3]) if return_lse else (0,), dtype=torch.float32,
                      device=q.device)
    lse_view = (lse.transpose(1, 2) if layout == "bhsd" else lse) if return_lse else None
    views = [T.bshd(x, layout, name) for x, name in ((q, "q"), (k, "k"), (v, "v"), (out, "out"))]
    _C.check_block_sparse_attention(
        *(meta(x) for x in views), None if lse_view is None else meta(lse_view),
        lengths_meta(text_lengths, q), num_text, text_placement, block_size, scale, kernel,
        precision,
    )
    return out, lse
