"""Tensors on the Python side of the binding: numpy arrays and torch tensors (CPU or CUDA).

The C++ core takes any DLPack tensor without copying; this module prepares what it cannot do
itself: views in the [b, S, H, d] layout, outputs and scratch memory allocated by the caller's
framework, integer side inputs on the right device, and torch's current CUDA stream.
"""

from __future__ import annotations

import contextlib
import operator
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


def _as_int(value: Any, name: str, expected: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}") from None


def _check_range(lowest: int, highest: int, name: str, *, bits: int, low: int | None,
                 what: str = "values") -> None:
    """Raises naming `name` unless [lowest, highest] lies within [low, 2^(bits-1))."""
    if low is not None and lowest < low:
        raise ValueError(f"{name}: expected {what} >= {low}, got {lowest}")
    if lowest < -(2 ** (bits - 1)):
        raise ValueError(f"{name}: expected {what} >= -2^{bits - 1}, got {lowest}")
    if highest >= 2 ** (bits - 1):
        raise ValueError(f"{name}: expected {what} < 2^{bits - 1}, got {highest}")


def integer(value: Any, name: str, *, bits: int = 32, low: int | None = None) -> int:
    """`value` as a Python int that fits the core's signed `bits`-bit integer.

    Python ints have no size, so an unchecked value would wrap (or be refused by the binding
    without naming the argument). ``low`` narrows the range where negative values make no sense.
    """
    number = _as_int(value, name, "an int")
    _check_range(number, number, name, bits=bits, low=low, what="a value")
    return number


def triple(values: Any, name: str, labels: str) -> tuple[int, int, int]:
    """Three ints that fit int64, e.g. a grid (T, H, W); the core checks what they mean."""
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(f"{name}: expected {labels}, got {values!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name}: expected {labels}, got {items}")
    t, h, w = (_as_int(x, name, "integers") for x in items)
    _check_range(min(t, h, w), max(t, h, w), name, bits=64, low=None)
    return t, h, w


def int32_array(values: Any, name: str, *, low: int | None = None) -> np.ndarray:
    """`values` (any integer array or sequence) as a contiguous int32 numpy array.

    Every value is checked against the int32 range (and ``low``) before the conversion, so an
    out-of-range index is an error naming the argument and the value, never a wrapped index.
    An empty sequence is an empty index array (numpy would type ``[]`` as float64).
    """
    if isinstance(values, Iterator):
        values = list(values)
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name}: expected integers, got a {type(values).__name__} numpy cannot convert "
            f"({error})"
        ) from None
    if array.size == 0 and not isinstance(values, np.ndarray):
        array = array.astype(np.int32)
    if array.dtype == object:
        # Python ints beyond int64 (or other objects): checked one by one.
        items = array.ravel().tolist()
        odd = [x for x in items if isinstance(x, bool) or not isinstance(x, (int, np.integer))]
        if odd:
            raise ValueError(f"{name}: expected integers, got {type(odd[0]).__name__}")
        items = [int(x) for x in items]
        if items:
            _check_range(min(items), max(items), name, bits=32, low=low)
        return np.ascontiguousarray(np.array(items, dtype=np.int32).reshape(array.shape))
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {array.dtype}")
    if array.size > 0:
        info = np.iinfo(array.dtype)
        if info.min < -(2**31) or info.max >= 2**31 or (low is not None and info.min < low):
            _check_range(int(array.min()), int(array.max()), name, bits=32, low=low)
    return np.ascontiguousarray(array, dtype=np.int32)


def int32_on(values: Any, like: Any, name: str) -> Any:
    """`values` as a contiguous int32 vector on like's device (copied only when needed).

    Values outside int32 are an error naming the argument (see :func:`int32_array`); a wider
    tensor on the GPU is range-checked there, which synchronises once (int32 needs no check).
    """
    if is_torch(values):
        torch = _torch()
        values = values.detach()
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise ValueError(f"{name}: expected integers, got dtype {values.dtype}")
        info = torch.iinfo(values.dtype)
        if values.numel() > 0 and (info.min < -(2**31) or info.max >= 2**31):
            lowest, highest = torch.aminmax(values.flatten())
            _check_range(int(lowest), int(highest), name, bits=32, low=None)
        target = like.device if is_torch(like) else "cpu"
        values = values.to(device=target, dtype=torch.int32).contiguous()
        return values if is_torch(like) else values.numpy()
    array = int32_array(values, name)
    if is_torch(like):
        return _torch().from_numpy(array).to(like.device)
    return array


def text_lengths(values: Any, q: Any) -> tuple[Any | None, Any | None]:
    """(L_t per batch item on q's device, their host copy when q is on the GPU).

    An int means the same length for every batch item. Host values are checked by the C++ core
    before any work; lengths already on the GPU are used as they are (reading them back would
    synchronise), except that a dtype wider than int32 is range-checked before it is narrowed.
    """
    if values is None:
        return None, None
    if isinstance(values, (int, np.integer)):
        # q's rank is checked by the core; a scalar length still needs a batch to fill.
        batch = q.shape[0] if q.ndim >= 1 else 1
        values = np.full(batch, int32_array([values], "text_lengths")[0], dtype=np.int32)
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
        # `stream` (0: none) waits for every call that used the block: torch's allocator may
        # hand it out again only after the work queued there so far.
        block = self._blocks.pop(ptr, None)
        if block is not None and stream:
            block.record_stream(_torch().cuda.ExternalStream(stream, device=block.device))
