"""Tensors on the Python side of the binding: numpy arrays and torch tensors (CPU or CUDA).

The C++ core takes any DLPack tensor without copying; this module prepares what it cannot do
itself: views in the [b, S, H, d] layout, outputs and scratch memory allocated by the caller's
framework, integer side inputs on the right device, and torch's current CUDA stream.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")
"""A numpy array or a torch tensor; outputs come back in the framework of the inputs."""

LAYOUTS = ("bshd", "bhsd")


def _torch() -> Any:
    """The torch module if it is already imported (spaattn never imports it for numpy users)."""
    return sys.modules.get("torch")


def is_torch(x: object) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda(x: object) -> bool:
    return is_torch(x) and x.device.type == "cuda"  # type: ignore[attr-defined]


def check_array(x: object, name: str) -> None:
    if not (isinstance(x, np.ndarray) or is_torch(x)):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected 'bshd' or 'bhsd', got {layout!r}")


def bshd(x: Any, layout: str, name: str) -> Any:
    """A [b, S, H, d] view of `x` (no copy); torch tensors are detached for DLPack export."""
    check_array(x, name)
    if is_torch(x):
        x = x.detach()
    if layout == "bhsd" and x.ndim == 4:
        return x.transpose(1, 2) if is_torch(x) else np.swapaxes(x, 1, 2)
    return x


def empty(like: Any, shape: Sequence[int], dtype: str | None = None) -> Any:
    """An uninitialised array of `like`'s framework and device; dtype None keeps like's."""
    if is_torch(like):
        torch = _torch()
        dt = like.dtype if dtype is None else getattr(torch, dtype)
        return torch.empty(tuple(shape), dtype=dt, device=like.device)
    return np.empty(tuple(shape), dtype=like.dtype if dtype is None else np.dtype(dtype))


def output(q: Any, out: Any | None, layout: str) -> tuple[Any, Any]:
    """(out in the caller's layout, its [b, S, H, d] view); allocated like q when not given."""
    if out is None:
        out = empty(q, q.shape)
    else:
        check_array(out, "out")
    return out, bshd(out, layout, "out")


def lse_output(q: Any, layout: str) -> tuple[Any, Any]:
    """(lse float32 [b, S, H] or [b, H, S] as the layout, its [b, S, H] view)."""
    shape = q.shape[:3]
    lse = empty(q, shape, "float32")
    if layout == "bhsd" and len(shape) == 3:
        return lse, lse.transpose(1, 2) if is_torch(lse) else np.swapaxes(lse, 1, 2)
    return lse, lse


def int32_on(values: Any, like: Any, name: str) -> Any:
    """`values` as a contiguous int32 vector on like's device (copied only when needed)."""
    if is_torch(values):
        torch = _torch()
        target = like.device if is_torch(like) else "cpu"
        values = values.detach().to(device=target, dtype=torch.int32).contiguous()
        return values if is_torch(like) else values.numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.int32)
    if is_torch(like):
        return _torch().from_numpy(array).to(like.device)
    return array


def text_lengths(values: Any, q: Any) -> tuple[Any | None, Any | None]:
    """(L_t per batch item on q's device, their host copy when q is on the GPU).

    An int means the same length for every batch item. Host values are checked by the C++ core
    before any work; lengths already on the GPU are used as they are (reading them back would
    synchronise).
    """
    if values is None:
        return None, None
    if isinstance(values, (int, np.integer)):
        values = np.full(q.shape[0], int(values), dtype=np.int32)
    if is_cuda(q) and is_cuda(values):
        return int32_on(values, q, "text_lengths"), None
    host = int32_on(values.cpu() if is_torch(values) else values, np.empty(0), "text_lengths")
    if is_cuda(q):
        return _torch().from_numpy(host).to(q.device), host
    return host, None


@contextlib.contextmanager
def device_of(x: Any) -> Iterator[int]:
    """Makes x's CUDA device current and yields torch's current stream on it (0 on the CPU)."""
    if not is_cuda(x):
        yield 0
        return
    torch = _torch()
    with torch.cuda.device(x.device):
        yield torch.cuda.current_stream(x.device).cuda_stream


class TorchMemory:
    """DeviceMemory for SparseAttention's GPU path: uint8 tensors from torch's allocator.

    The C++ core asks for memory when it first sees a shape or a (layer, entry) and gives it
    back on reset() or destruction; the tensors are kept alive here until then.
    """

    def __init__(self) -> None:
        self.device: Any = None
        self._blocks: dict[int, Any] = {}

    def allocate(self, nbytes: int, stream: int) -> int:
        torch = _torch()
        if torch is None or self.device is None:
            raise RuntimeError("spaattn: GPU memory requested outside a call on torch tensors")
        block = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device)
        self._blocks[block.data_ptr()] = block
        return block.data_ptr()

    def release(self, ptr: int, nbytes: int, stream: int) -> None:
        self._blocks.pop(ptr, None)
