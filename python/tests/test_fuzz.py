"""A bounded fuzz run of the Python entry points on the CPU.

Seeded random calls of block_sparse_attention, rectified_attention, SparseAttention(...).forward,
dense_to_csr and the token-order functions with awkward and invalid arguments: wrong shapes and
dtypes, huge, negative and zero sizes and indices, non-contiguous, reversed and zero-stride views,
empty arrays, NaN. Every call must return a result of the documented shape or raise ValueError,
TypeError or RuntimeError with a message. The calls run in a child interpreter that prints each
call before making it, so a crash fails the test and names the call.

Run alone: ``python test_fuzz.py SEED CALLS``.
"""

from __future__ import annotations

import faulthandler
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import spaattn

EXPECTED_ERRORS = (ValueError, TypeError, RuntimeError)

# Integers at the edges of the core's int32 / int64 and of meaning, and things that are not ints.
EDGE_INTS: list[Any] = [0, 1, -1, 2, 3, 64, 128, 2**31 - 1, 2**31, 2**32 + 5, -(2**31) - 1,
                        2**63, -(2**63), 2**64, np.int64(64), np.uint64(2**40), True]
NOT_INTS: list[Any] = [3.5, float("nan"), "64", None, np.float32(64), [64]]
DTYPES = [np.float32, np.float32, np.float32, np.float16, np.float64, np.int32, np.int64,
          np.uint8, np.bool_, np.complex64]


class Fuzzer:
    """Draws arguments from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def integer(self, typical: list[int], p_edge: float = 0.2, p_odd: float = 0.05) -> Any:
        if self.chance(p_odd):
            return self.pick(NOT_INTS)
        if self.chance(p_edge):
            return self.pick(EDGE_INTS)
        return self.pick(typical)

    def awkward(self, x: np.ndarray) -> Any:
        """x, or a view or copy of it that a caller could plausibly pass by mistake."""
        kind = self.pick(["same"] * 6 + ["strided", "reversed", "broadcast", "transposed",
                                          "fortran", "empty", "dtype", "nan", "rank", "list",
                                          "scalar"])
        if kind == "strided" and x.ndim >= 2:
            wide = np.repeat(x, 2, axis=1)
            return wide[:, ::2]
        if kind == "reversed" and x.ndim >= 2:
            return x[:, ::-1]
        if kind == "broadcast" and x.ndim >= 2:
            return np.broadcast_to(x[:, :1], x.shape)
        if kind == "transposed" and x.ndim >= 3:
            return np.swapaxes(x, 1, 2)
        if kind == "fortran":
            return np.asfortranarray(x)
        if kind == "empty" and x.ndim >= 1:
            axis = int(self.rng.integers(x.ndim))
            return np.take(x, np.arange(0), axis=axis)
        if kind == "dtype":
            return x.astype(self.pick(DTYPES))
        if kind == "nan" and x.dtype.kind == "f" and x.size:
            y = x.copy()
            y.flat[int(self.rng.integers(y.size))] = self.pick([np.nan, np.inf, -np.inf])
            return y
        if kind == "rank":
            return x.reshape(x.shape + (1,)) if self.chance(0.5) else x.reshape(-1)
        if kind == "list":
            return x.tolist() if x.size <= 64 else x
        if kind == "scalar":
            return self.pick([np.float32(1.0), 1.0, None, "q", np.zeros((), np.float32)])
        return x

    def qkv(self) -> tuple[Any, Any, Any, int, int]:
        """(q, k, v, S, num_text) with small shapes, mostly valid, sometimes not."""
        b = self.pick([1, 1, 2, 0])
        seq = self.pick([1, 7, 64, 128, 129, 200, 256])
        heads = self.pick([1, 2])
        dim = self.pick([64, 64, 128, 96, 0, 1])
        num_text = self.pick([0, 0, 5, 16, min(seq, 40)])
        dtype = self.pick([np.float32, np.float32, np.float16])
        q, k, v = (self.rng.standard_normal((b, seq, heads, dim)).astype(dtype) for _ in range(3))
        if self.chance(0.35):
            which = int(self.rng.integers(3))
            arrays = [q, k, v]
            arrays[which] = self.awkward(arrays[which])
            q, k, v = arrays
        if self.chance(0.1) and isinstance(k, np.ndarray) and k.ndim == 4 and k.shape[1] > 1:
            k = k[:, :-1]
        return q, k, v, seq, num_text

    def blocks(self, seq: int, num_text: int, block: Any) -> int:
        if not isinstance(block, int) or block < 1:
            return 1
        video = max(seq - num_text, 0)
        return -(-video // block) + -(-num_text // block)

    def dense_mask(self, batch: int, heads: int, n: int) -> Any:
        shape = [batch, heads, n, n]
        if self.chance(0.2):
            shape[int(self.rng.integers(4))] = self.pick([0, 1, 3, n + 1])
        mask = self.rng.random(shape) < self.pick([0.0, 0.3, 1.0])
        return self.awkward(mask) if self.chance(0.3) else mask

    def csr_mask(self, batch: int, heads: int, n: int) -> Any:
        dense = self.rng.random((max(batch, 1), heads, n, n)) < 0.5
        row_offsets, col_indices = spaattn.dense_to_csr(dense)
        lists: list[Any] = [row_offsets.astype(np.int64), col_indices.astype(np.int64)]
        which = int(self.rng.integers(2))
        edit = self.pick(["none", "none", "huge", "negative", "wrap", "large", "shuffle", "float",
                          "empty", "2d", "broadcast", "short", "list"])
        target = lists[which]
        if edit in ("huge", "negative", "wrap", "large") and target.size:
            value = {"huge": 2**40, "negative": -3, "wrap": 2**32, "large": 10**6}[edit]
            target[int(self.rng.integers(target.size))] = value
        elif edit == "shuffle":
            lists[which] = self.rng.permutation(target)
        elif edit == "float":
            lists[which] = target.astype(np.float64)
        elif edit == "empty":
            lists[which] = np.zeros(0, np.int64) if self.chance(0.5) else []
        elif edit == "2d":
            lists[which] = target.reshape(1, -1)
        elif edit == "broadcast":
            lists[which] = np.broadcast_to(np.int64(0), target.shape)
        elif edit == "short" and target.size:
            lists[which] = target[:-1]
        elif edit == "list":
            lists[which] = target.tolist()
        if self.chance(0.05):
            return tuple(lists) + (None,)
        return tuple(lists)

    def text_lengths(self, batch: int, num_text: int) -> Any:
        kind = self.pick(["none", "none", "int", "list", "array", "odd"])
        if kind == "int":
            return self.integer([0, num_text, max(num_text - 3, 0)])
        if kind == "list":
            return [self.integer([0, num_text]) for _ in range(max(batch, 0))]
        if kind == "array":
            dtype = self.pick([np.int32, np.int64, np.uint64, np.uint8, np.float32, np.bool_])
            values = self.rng.integers(0, num_text + 1, size=max(batch, 0))
            return self.awkward(values.astype(dtype))
        if kind == "odd":
            return self.pick([[], "5", [1.5], [[1]], np.zeros((2, 2), np.int32)])
        return None

    def grid(self) -> Any:
        return self.pick([None, (1, 8, 16), (2, 8, 8), (1, 4, 4), (0, 4, 4), (-1, 4, 4),
                          (2**32, 2**32, 1), (2**62, 4, 1), (2**63, 1, 1), (1.5, 2, 2), (4, 4),
                          "abc", 7, (0, 0, 0), (1, 1, 1)])

    def scale(self) -> Any:
        return self.pick([None, None, 0.0, 0.125, -1.0, float("nan"), float("inf"), 1e40, "s"])


def check_output(out: Any, q: Any) -> None:
    """Outputs come in q's framework and shape (the caller's layout)."""
    shape = q.shape if isinstance(q, np.ndarray) else None
    if not isinstance(out, np.ndarray) or (shape is not None and out.shape != shape):
        raise AssertionError(f"output of shape {getattr(out, 'shape', None)}, q {shape}")


def describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray{value.shape}/{value.dtype}/strides{value.strides}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(x) for x in value[:4])
        return f"{type(value).__name__}[{inner}{', ...' if len(value) > 4 else ''}]"
    text = repr(value)
    return text if len(text) < 40 else text[:37] + "..."


def calls(f: Fuzzer) -> Callable[[], tuple[str, dict[str, Any], Callable[[], None]]]:
    """One random call: (entry point, its arguments, the call with its result checks)."""

    def block_sparse() -> tuple[str, dict[str, Any], Callable[[], None]]:
        q, k, v, seq, num_text = f.qkv()
        block = f.integer([64, 128], p_edge=0.25)
        heads = q.shape[2] if isinstance(q, np.ndarray) and q.ndim == 4 else 1
        batch = q.shape[0] if isinstance(q, np.ndarray) and q.ndim == 4 else 1
        n = f.blocks(seq, num_text, block)
        mask = f.dense_mask(batch, heads, n) if f.chance(0.5) else f.csr_mask(batch, heads, n)
        kwargs = dict(num_text=f.integer([num_text], p_edge=0.15), block_size=block,
                      text_lengths=f.text_lengths(batch, num_text),
                      text_placement=f.pick(["suffix", "prefix", "suffix", "middle"]),
                      scale=f.scale(), layout=f.pick(["bshd", "bshd", "bhsd"]),
                      return_lse=f.chance(0.3), kernel=f.pick(["auto", "auto", "portable", "x"]))

        def run() -> None:
            result = spaattn.block_sparse_attention(q, k, v, mask, **kwargs)
            out = result[0] if kwargs["return_lse"] else result
            check_output(out, q)

        return "block_sparse_attention", dict(q=q, k=k, v=v, mask=mask, **kwargs), run

    def rectified() -> tuple[str, dict[str, Any], Callable[[], None]]:
        q, k, v, seq, num_text = f.qkv()
        grid = f.grid()
        if grid == (1, 8, 16):  # make the grid fit the video tokens now and then
            q, k, v = (f.rng.standard_normal((1, 128 + num_text, 1, 64)).astype(np.float32)
                       for _ in range(3))
        kwargs = dict(sparsity=f.pick([0.0, 0.5, 0.9, 1.0, -0.1, float("nan")]),
                      p=f.pick([0.3, 0.0, 1.0, 2.0]), grid=grid,
                      order=f.pick([None, "raster", "gilbert", "tiles", "zigzag"]),
                      num_text=f.integer([num_text]), block_size=f.integer([64, 128]),
                      first_frame_blocks=f.integer([0, 1, 2]), gapr=f.chance(0.5),
                      text_lengths=f.text_lengths(1, num_text), scale=f.scale())

        def run() -> None:
            check_output(spaattn.rectified_attention(q, k, v, **kwargs), q)

        return "rectified_attention", dict(q=q, k=k, v=v, **kwargs), run

    def method() -> tuple[str, dict[str, Any], Callable[[], None]]:
        q, k, v, seq, num_text = f.qkv()
        options = dict(method=f.pick(["dense", "sparse", "rectified", "rettention",
                                      "rectified_rettention", "nope"]),
                       sparsity=f.pick([0.5, 0.9]), block_size=f.integer([64, 128]),
                       grid=f.grid(), tile=f.pick([(2, 8, 8), (1, 1, 1), (0, 1, 1), (2**64, 1, 1),
                                                   (1, 2)]),
                       dense_steps=f.integer([0, 1]), dense_layers=f.pick(
                           [(), [0], [1, 2], [-1], [2**31], [1.5], np.array([3], np.uint8)]),
                       mask_period=f.integer([1, 2]), ref_period=f.integer([1, 5]),
                       first_frame_blocks=f.integer([0, 1]), selector=f.pick(
                           ["automatic", "ipar", "band", "local"]))
        if options["grid"] == (1, 8, 16):
            q, k, v = (f.rng.standard_normal((1, 128 + num_text, 1, 64)).astype(np.float32)
                       for _ in range(3))
        steps = [dict(layer=f.integer([0, 1]), step=f.integer([s, s + 1]),
                      entry=f.integer([0]), num_text=f.integer([num_text], p_edge=0.1),
                      text_lengths=f.text_lengths(1, num_text),
                      layout=f.pick(["bshd", "bshd", "bhsd"]),
                      out=f.pick([None, None, None, "like", "f16", "readonly", "overlap"]))
                 for s in range(int(f.rng.integers(1, 4)))]

        def output(kind: str | None) -> Any:
            if kind is None or not isinstance(q, np.ndarray):
                return None
            if kind == "like":
                return np.empty_like(q)
            if kind == "f16":
                return np.empty(q.shape, np.float16)
            if kind == "overlap" and q.ndim == 4:  # writable, every token on the same memory
                row = np.zeros(q.shape[3], np.float32)
                return np.lib.stride_tricks.as_strided(row, q.shape, (0, 0, 0, row.strides[0]))
            return np.broadcast_to(np.zeros((1,) * q.ndim, np.float32), q.shape)  # read-only

        def run() -> None:
            attention = spaattn.SparseAttention(**options)
            for call in steps:
                arguments = dict(call, out=output(call["out"]))
                check_output(attention.forward(q, k, v, **arguments), q)
            attention.reset()

        return "SparseAttention", dict(q=q, k=k, v=v, **options, steps=steps), run

    def to_csr() -> tuple[str, dict[str, Any], Callable[[], None]]:
        shape = [f.pick([0, 1, 2]), f.pick([0, 1, 3]), f.pick([0, 1, 4]), f.pick([0, 1, 5])]
        mask = f.rng.random(shape) < 0.5
        if f.chance(0.6):
            mask = f.awkward(mask)
        if f.chance(0.05):
            mask = np.broadcast_to(np.zeros(1, bool), (1, 1, 1, 2**31))

        def run() -> None:
            row_offsets, col_indices = spaattn.dense_to_csr(mask)
            assert row_offsets.dtype == np.int32 and col_indices.dtype == np.int32
            dense = np.asarray(mask)
            assert row_offsets.tolist()[-1] == int(np.count_nonzero(dense))
            assert row_offsets.shape[0] == int(np.prod(dense.shape[:3])) + 1
            assert (np.diff(row_offsets) >= 0).all()

        return "dense_to_csr", dict(mask=mask), run

    def orders() -> tuple[str, dict[str, Any], Callable[[], None]]:
        which = f.pick(["gilbert", "token_permutation", "invert_permutation", "block_neighbours",
                        "permute_tokens"])
        grid = f.grid()
        if grid is None:
            grid = (1, 2, 3)
        axes = f.pick(["wht", "thw", "hwt", "wwt", "ab", 5])
        if which == "gilbert":
            def run() -> None:
                perm = spaattn.gilbert(grid, axes=axes)
                assert sorted(perm.tolist()) == list(range(int(np.prod(grid))))
            return which, dict(grid=grid, axes=axes), run
        if which == "token_permutation":
            kind = f.pick(["raster", "gilbert", "tiles", "spiral"])
            tile = f.pick([(2, 8, 8), (1, 1, 1), (0, 2, 2), (-1, 2, 2), (2**63, 1, 1), (1, 2)])

            def run() -> None:
                perm = spaattn.token_permutation(kind, grid, axes=axes, tile=tile)
                assert sorted(perm.tolist()) == list(range(int(np.prod(grid))))
            return which, dict(kind=kind, grid=grid, axes=axes, tile=tile), run
        if which == "block_neighbours":
            block = f.integer([1, 4, 64])
            order = f.pick(["gilbert", "raster", "tiles", "nope"])

            def run() -> None:
                neighbours = spaattn.block_neighbours(grid, block_size=block, order=order)
                assert all(i in row for i, row in enumerate(neighbours))
            return which, dict(grid=grid, block_size=block, order=order), run
        n = f.pick([0, 1, 5, 16])
        perm: Any = f.rng.permutation(n).astype(f.pick([np.int32, np.int64, np.uint64]))
        edit = f.pick(["none", "none", "huge", "negative", "duplicate", "float", "list",
                       "reversed", "broadcast", "2d", "empty"])
        if edit == "huge" and n and perm.dtype != np.int32:
            perm[0] += 2**32  # the same index after a wrap to int32
        elif edit == "negative" and n and perm.dtype != np.uint64:
            perm[-1] = -1
        elif edit == "duplicate" and n > 1:
            perm[0] = perm[1]
        elif edit == "float":
            perm = perm.astype(np.float64)
        elif edit == "list":
            perm = perm.tolist()
        elif edit == "reversed":
            perm = perm[::-1]
        elif edit == "broadcast" and n:
            perm = np.broadcast_to(perm[:1], perm.shape)
        elif edit == "2d":
            perm = perm.reshape(1, -1)
        elif edit == "empty":
            perm = f.pick([[], np.zeros(0, np.int64)[::-1], np.zeros((0, 2), np.int32)[:, 0]])
        if which == "invert_permutation":
            def run() -> None:
                inv = spaattn.invert_permutation(perm)
                p = np.asarray(perm, dtype=np.int64).reshape(-1)
                assert (inv[p] == np.arange(p.size)).all()
            return which, dict(perm=perm), run
        x = f.rng.standard_normal((f.pick([1, 2, 0]), n + f.pick([0, 3]), 2, 64)).astype(np.float32)
        x = f.awkward(x) if f.chance(0.3) else x
        kwargs = dict(video_offset=f.integer([0, 3]), inverse=f.chance(0.5),
                      layout=f.pick(["bshd", "bshd", "bhsd", "sbhd"]))

        def run() -> None:
            y = spaattn.permute_tokens(x, perm, **kwargs)
            assert isinstance(y, np.ndarray) and y.shape == np.shape(x)
        return which, dict(x=x, perm=perm, **kwargs), run

    entry_points = [block_sparse, block_sparse, rectified, method, method, to_csr, orders, orders]
    return lambda: f.pick(entry_points)()


def main(seed: int, count: int) -> int:
    """Runs `count` random calls; prints each before making it, then a JSON summary."""
    faulthandler.enable()
    f = Fuzzer(seed)
    draw = calls(f)
    outcomes: dict[str, int] = {}
    for index in range(count):
        name, arguments, run = draw()
        text = ", ".join(f"{key}={describe(value)}" for key, value in arguments.items())
        print(f"call {index}: {name}({text})", flush=True)
        try:
            run()
            outcome = "ok"
        except EXPECTED_ERRORS as error:
            if not str(error).strip():
                print(f"FAIL: {type(error).__name__} without a message", flush=True)
                return 1
            outcome = type(error).__name__
        except Exception as error:  # noqa: BLE001 - any other exception is what the run looks for
            print(f"FAIL: unexpected {type(error).__name__}: {error}", flush=True)
            return 1
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps({"calls": count, "outcomes": outcomes}), flush=True)
    return 0


def test_entry_points_survive_random_arguments():
    count = 500
    result = subprocess.run([sys.executable, __file__, "20260101", str(count)],
                            capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    tail = "\n".join(lines[-3:])
    assert result.returncode == 0, (
        f"exit status {result.returncode} after:\n{tail}\nstderr:\n{result.stderr[-3000:]}"
    )
    summary = json.loads(lines[-1])
    assert summary["calls"] == count
    outcomes = summary["outcomes"]
    # Both sides were exercised: calls that work and each kind of rejection the API makes.
    assert outcomes.get("ok", 0) >= count // 10, outcomes
    assert outcomes.get("ValueError", 0) >= count // 10, outcomes
    assert outcomes.get("TypeError", 0) > 0, outcomes


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
