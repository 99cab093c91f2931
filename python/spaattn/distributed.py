"""Ulysses sequence parallelism: spaattn across the ranks of a torch.distributed process group.

Each of N ranks holds an equal, contiguous shard of the sequence (text tokens included, in the
positions the model puts them) for every head. :class:`UlyssesAttention` exchanges the shards
with one ``all_to_all_single`` per tensor so that each rank holds the whole sequence for H / N
of the heads, runs its :class:`spaattn.SparseAttention` on those heads, and exchanges the output
back to the rank's sequence shard of every head. Rank r computes heads ``r * H / N`` to
``(r + 1) * H / N - 1``; as spaattn's selection, corrections and Re-ttention statistics are per
head, each rank's attention object holds the state of its own heads across layers and steps,
and the result equals the one-process result on the whole tensors.

Sharding contract (what the caller's model does): rank r of the group holds sequence positions
``r * S / N`` to ``(r + 1) * S / N - 1`` of q, k and v, all ranks with the same shape, so
``S`` is a multiple of N; ``H`` must be a multiple of N. ``num_text``, ``text_lengths`` and
``text_placement`` describe the whole sequence, as for a one-process call. :func:`shard` and
:func:`gather` split a whole tensor into this rank's shard and put the shards back together.

Communication goes through torch.distributed and the group's backend (NCCL for CUDA tensors,
gloo for CPU tensors); every argument is checked on each rank before any collective, so an
invalid call raises the same error on every rank instead of leaving the others waiting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import _ops
from . import _tensors as T
from .method import CallStats, SparseAttention


def _group_size_rank(group: Any) -> tuple[int, int]:
    """(size, rank) of `group` (None: the default group); errors before any communication."""
    if not dist.is_available():
        raise RuntimeError("spaattn.distributed: this torch build has no torch.distributed")
    if not dist.is_initialized():
        raise RuntimeError(
            "spaattn.distributed: the default process group is not initialised; call "
            "torch.distributed.init_process_group first"
        )
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: expected a process group this rank belongs to, got one it "
                         "does not")
    return size, rank


def _check_backend(group: Any, x: Tensor) -> None:
    """Refuses a tensor the group's backend cannot move (CPU tensors in an NCCL-only group)."""
    backend = str(dist.get_backend(group))
    if backend == "nccl" and x.device.type != "cuda":
        raise ValueError(f"q: expected a cuda tensor for the group's NCCL backend, got device "
                         f"{x.device.type}")


def _seq_dim(layout: str) -> int:
    return 1 if layout == "bshd" else 2


def _head_dim(layout: str) -> int:
    return 2 if layout == "bshd" else 1


def shard(x: Tensor, group: Any = None, *, layout: str = "bshd") -> Tensor:
    """This rank's contiguous shard of the sequence of a whole tensor ([b, S, H, d], or
    [b, H, S, d] with ``layout="bhsd"``): positions ``rank * S / N`` to ``(rank + 1) * S / N - 1``
    of a group of N ranks. A view; S must be a multiple of N."""
    T.check_layout(layout)
    size, rank = _group_size_rank(group)
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-dimensional torch.Tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    seq = x.shape[_seq_dim(layout)]
    if seq % size:
        raise ValueError(f"S: expected a multiple of the group's size {size}, got {seq}")
    return x.narrow(_seq_dim(layout), rank * (seq // size), seq // size)


def gather(x: Tensor, group: Any = None, *, layout: str = "bshd") -> Tensor:
    """The whole sequence from every rank's equal shard (the inverse of :func:`shard`), on
    every rank; one ``all_gather_into_tensor``."""
    T.check_layout(layout)
    size, _ = _group_size_rank(group)
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-dimensional torch.Tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    _check_backend(group, x)
    dim = _seq_dim(layout)
    # Rank-major: [N, ...x.shape], then the rank dim is moved next to the sequence dim.
    parts = torch.empty((size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(parts, x.contiguous(), group=group)
    return parts.unflatten(0, (size, x.shape[0])).movedim(0, dim).flatten(dim, dim + 1)


class UlyssesAttention:
    """A :class:`spaattn.SparseAttention` run with Ulysses sequence parallelism.

    Args:
        attention: the attention object of this rank (one per rank, made with the same options
            on every rank); it keeps the state of this rank's heads across layers and steps.
        group: the torch.distributed process group of the N ranks that share the sequence
            (None: the default group).

    :meth:`forward` takes this rank's sequence shard of q, k and v and returns this rank's
    shard of the output (see the module's docstring for the sharding contract).
    ``last_stats`` and ``reset()`` are those of the wrapped object; the statistics describe this
    rank's heads.
    """

    def __init__(self, attention: SparseAttention, group: Any = None) -> None:
        if not isinstance(attention, SparseAttention):
            raise TypeError(f"attention: expected a spaattn.SparseAttention, got "
                            f"{type(attention).__name__}")
        self.attention = attention
        self.group = group
        self.world_size, self.rank = _group_size_rank(group)

    @property
    def last_stats(self) -> CallStats | None:
        """The last call's statistics on this rank's heads."""
        return self.attention.last_stats

    def reset(self) -> None:
        """Drops the wrapped object's state (call it on every rank between runs)."""
        self.attention.reset()

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        layer: int = 0,
        step: int = 0,
        entry: int = 0,
        num_text: int = 0,
        text_lengths: Any = None,
        text_placement: str = "suffix",
        layout: str = "bshd",
    ) -> Tensor:
        """Attention of one layer at one step on this rank's sequence shard.

        q, k, v: [b, S / N, H, d] (``layout="bhsd"``: [b, H, S / N, d]), this rank's shard;
        the other arguments as :meth:`spaattn.SparseAttention.forward`, describing the whole
        sequence. Returns this rank's shard of the output, [b, S / N, H, d] (or [b, H, S / N, d])
        in q's dtype. Every rank of the group must make the same call (same arguments, equal
        shapes).
        """
        T.check_layout(layout)
        call = (T.integer(layer, "layer"), T.integer(entry, "entry"), T.integer(step, "step"))
        num_text = T.integer(num_text, "num_text", bits=64)
        _ops.check_inputs(q, k, v)
        lengths = _ops.lengths_tensor(text_lengths, q)
        size = self.world_size
        head_dim = _head_dim(layout)
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.dim() != 4:
                raise ValueError(f"{name}: expected 4 dimensions, got {x.dim()}")
            if x.shape[head_dim] % size:
                raise ValueError(f"{name}: expected a number of heads divisible by the group's "
                                 f"size {size}, got {x.shape[head_dim]}")
        _check_backend(self.group, q)
        # The one-process call's checks on the shapes this rank's call will have (whole
        # sequence, local heads), before any communication.
        mq, mk, mv = (whole_meta(x, size, layout) for x in (q, k, v))
        self.attention._impl.check(mq, mk, mv, mq, _ops.lengths_meta(lengths, q), *call,
                                   num_text, text_placement)

        qh, kh, vh = sequence_to_heads_many((q, k, v), size, self.group, layout)
        out = self.attention.forward(
            qh, kh, vh, layer=call[0], step=call[2], entry=call[1], num_text=num_text,
            text_lengths=lengths, text_placement=text_placement, layout=layout,
        )
        return heads_to_sequence(out, size, self.group, layout)

    __call__ = forward


def whole_meta(x: Tensor, n: int, layout: str = "bshd", *,
               whole_tokens: int = 0) -> tuple[Any, ...]:
    """What the core's checks take of the tensor a rank of `n` gets in place of its shard `x`
    after :func:`sequence_to_heads` (whole sequence, local heads, contiguous in `layout`), seen
    as [b, S, H, d]: the one-process call's checks can run before any communication.
    `whole_tokens`: the shard's last tokens that every rank holds whole (not exchanged)."""
    shape = list(x.shape)
    shape[_seq_dim(layout)] = (shape[_seq_dim(layout)] - whole_tokens) * n + whole_tokens
    shape[_head_dim(layout)] //= n
    strides = list(_contiguous_strides(tuple(shape)))
    if layout == "bhsd":
        shape[1], shape[2], strides[1], strides[2] = shape[2], shape[1], strides[2], strides[1]
    return (tuple(shape), tuple(strides), str(x.dtype).removeprefix("torch."), x.device.type)


def _exchange(send: Tensor, group: Any) -> Tensor:
    """One all-to-all of a contiguous [N, ...] tensor: slice j goes to rank j, slice i of the
    result came from rank i."""
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received


def _pack_heads(x: Tensor, n: int, layout: str) -> Tensor:
    """The all-to-all send buffer of a sequence shard: [N, ...] with head group j in slice j."""
    if layout == "bshd":
        b, s, h, d = x.shape
        return x.unflatten(2, (n, h // n)).permute(2, 0, 1, 3, 4).contiguous()  # [N, b, s, h, d]
    b, h, s, d = x.shape
    return x.unflatten(1, (n, h // n)).transpose(0, 1).contiguous()  # [N, b, H/N, s, d]


def _unpack_sequence(received: Tensor, layout: str) -> Tensor:
    """The received buffer (slice i = sequence shard i of this rank's heads) -> the whole
    sequence: [b, S, H/N, d] (a view when b == 1) or [b, H/N, S, d]."""
    n = received.shape[0]
    if layout == "bshd":
        _, b, s, h, d = received.shape
        return received.transpose(0, 1).reshape(b, n * s, h, d)
    _, b, h, s, d = received.shape
    return received.permute(1, 2, 0, 3, 4).reshape(b, h, n * s, d)


def sequence_to_heads(x: Tensor, n: int, group: Any, layout: str = "bshd") -> Tensor:
    """This rank's sequence shard of every head ([b, S/N, H, d]) -> the whole sequence of its
    heads ([b, S, H/N, d]); one all-to-all over the `n` ranks of `group` (unchecked)."""
    return _unpack_sequence(_exchange(_pack_heads(x, n, layout), group), layout)


def sequence_to_heads_many(xs: list[Tensor] | tuple[Tensor, ...], n: int, group: Any,
                           layout: str = "bshd") -> list[Tensor]:
    """:func:`sequence_to_heads` of several tensors (q, k and v), overlapped: each tensor's
    all-to-all runs on the communicator while the next one's send buffer is packed."""
    works, received = [], []
    for x in xs:
        send = _pack_heads(x, n, layout)
        buffer = torch.empty_like(send)
        works.append(dist.all_to_all_single(buffer, send, group=group, async_op=True))
        received.append(buffer)
    for work in works:
        work.wait()
    return [_unpack_sequence(buffer, layout) for buffer in received]


def heads_to_sequence(out: Tensor, n: int, group: Any, layout: str = "bshd") -> Tensor:
    """The whole sequence of this rank's heads ([b, S, H/N, d]) -> this rank's sequence shard of
    every head ([b, S/N, H, d]); one all-to-all (unchecked)."""
    if layout == "bshd":
        b, s, h, d = out.shape  # s: the whole sequence, h: the local heads
        # [b, N, S/N, H/N, d] -> [N, b, S/N, H/N, d]: sequence shard j goes to rank j
        # (a view when b == 1).
        send = out.unflatten(1, (n, s // n)).transpose(0, 1).contiguous()
        received = _exchange(send, group)  # slice i = head group i
        return received.permute(1, 2, 0, 3, 4).reshape(b, s // n, n * h, d)
    b, h, s, d = out.shape
    send = out.unflatten(2, (n, s // n)).permute(2, 0, 1, 3, 4).contiguous()  # [N, b, h, s/N, d]
    received = _exchange(send, group)
    return received.transpose(0, 1).reshape(b, n * h, s // n, d)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, running = [], 1
    for extent in reversed(shape):
        strides.append(running)
        running *= extent
    return tuple(reversed(strides))


__all__ = ["UlyssesAttention", "gather", "heads_to_sequence", "sequence_to_heads",
           "sequence_to_heads_many", "shard"]
