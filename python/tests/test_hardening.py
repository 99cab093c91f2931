"""Hostile arguments at the Python entry points: validation runs before any arithmetic on the
arguments, integers are range-checked before the core narrows them to int32, and zero-size
arrays get an empty result where one exists and a message naming the argument otherwise."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import spaattn
from conftest import qkv, randn

FULL = np.ones((1, 2, 1, 1), dtype=bool)


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter, so that a crash fails this test, not the whole run."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def message(error_type: type[Exception], call, *args, **kwargs) -> str:
    with pytest.raises(error_type) as error:
        call(*args, **kwargs)
    return str(error.value)


# Validation before arithmetic: block_size is checked before it divides anything.


@pytest.mark.parametrize("mask", ["dense", "csr"])
def test_block_size_zero_is_rejected_before_the_blocks_are_counted(mask):
    result = run_isolated(f"""
        import numpy as np, spaattn
        q = np.zeros((1, 128, 2, 64), np.float32)
        mask = np.ones((1, 2, 1, 1), bool) if {mask!r} == "dense" else ([0, 1, 2], [0, 0])
        try:
            spaattn.block_sparse_attention(q, q, q, mask, block_size=0)
        except ValueError as error:
            print(error)
    """)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr}"
    assert result.stdout.strip() == "layout.block_size: expected 64 or 128, got 0"


def test_block_size_zero_at_every_entry_point():
    q, k, v = qkv((1, 128, 2, 64))
    assert message(ValueError, spaattn.rectified_attention, q, k, v, block_size=0) == (
        "config.block_size: expected 64 or 128, got 0"
    )
    assert message(ValueError, spaattn.SparseAttention, "dense", block_size=0) == (
        "config.block_size: expected 64 or 128, got 0"
    )
    assert message(ValueError, spaattn.SparseAttention, grid=(1, 4, 4), order="raster",
                   block_size=0) == "config.block_size: expected 64 or 128, got 0"
    assert message(ValueError, spaattn.block_neighbours, (1, 4, 4), block_size=0) == (
        "block_size: expected >= 1, got 0"
    )
    assert message(ValueError, spaattn.block_neighbours, (1, 4, 4), block_size=-3) == (
        "block_size: expected >= 1, got -3"
    )


def test_block_size_beyond_int32_and_of_the_wrong_type():
    q, k, v = qkv((1, 128, 2, 64))
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, FULL,
                   block_size=2**32 + 64) == "block_size: expected a value < 2^31, got 4294967360"
    assert message(ValueError, spaattn.SparseAttention, block_size=-(2**31) - 1) == (
        "block_size: expected a value >= -2^31, got -2147483649"
    )
    assert message(ValueError, spaattn.block_neighbours, (1, 4, 4), block_size=2**40) == (
        "block_size: expected a value < 2^31, got 1099511627776"
    )
    assert message(TypeError, spaattn.rectified_attention, q, k, v, block_size=64.0) == (
        "block_size: expected an int, got float"
    )


# Integers that cross into the core: no silent wrap to int32.


def test_text_lengths_beyond_int32_are_rejected():
    q, k, v = qkv((1, 128, 2, 64))
    mask = np.ones((1, 2, 2, 2), dtype=bool)  # 112 video + 16 text tokens: 2 blocks
    expected = "text_lengths: expected values < 2^31, got 4294967301"
    for lengths in ([2**32 + 5], 2**32 + 5, np.array([2**32 + 5], dtype=np.uint64)):
        assert message(ValueError, spaattn.block_sparse_attention, q, k, v, mask, num_text=16,
                       text_lengths=lengths) == expected
        assert message(ValueError, spaattn.SparseAttention("dense", block_size=64).forward, q, k,
                       v, num_text=16, text_lengths=lengths) == expected
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, mask, num_text=16,
                   text_lengths=[-(2**32)]) == (
        "text_lengths: expected values >= -2^31, got -4294967296"
    )
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, mask, num_text=16,
                   text_lengths=[2**70]) == (
        "text_lengths: expected values < 2^31, got 1180591620717411303424"
    )
    # In range but negative: the core's check, with the batch item.
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, mask, num_text=16,
                   text_lengths=[-1]) == (
        "text_lengths: expected 0 <= L_t <= num_text (16), got -1 for batch item 0"
    )
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, mask, num_text=16,
                   text_lengths=np.array([True])) == (
        "text_lengths: expected integers, got dtype bool"
    )
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, mask, num_text=16,
                   text_lengths=[1, None]) == "text_lengths: expected integers, got NoneType"
    # Values that fit are taken from any integer dtype.
    lengths = np.array([9], dtype=np.uint64)
    out = spaattn.block_sparse_attention(q, k, v, mask, num_text=16, text_lengths=lengths)
    ref = spaattn.block_sparse_attention(q, k, v, mask, num_text=16, text_lengths=9)
    np.testing.assert_array_equal(out, ref)


def test_csr_indices_beyond_int32_are_rejected():
    q, k, v = qkv((1, 256, 2, 64))
    row_offsets, col_indices = spaattn.dense_to_csr(np.ones((1, 2, 2, 2), dtype=bool))
    wide = col_indices.astype(np.int64)
    wide[0] = 2**32  # would read as block 0 after a wrap
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, (row_offsets, wide)) == (
        "mask.col_indices: expected values < 2^31, got 4294967296"
    )
    offsets = row_offsets.astype(np.int64)
    offsets[-1] += 2**32
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, (offsets, col_indices)) == (
        "mask.row_offsets: expected values < 2^31, got 4294967304"
    )
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v,
                   (row_offsets, col_indices.astype(np.float32))) == (
        "mask.col_indices: expected integers, got dtype float32"
    )
    negative = col_indices.copy()
    negative[0] = -1
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v,
                   (row_offsets, negative)) == (
        "mask.col_indices: expected sorted unique block ids in [0, 2), got -1 in row 0"
    )
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v,
                   (row_offsets, [[0, 1], [0]])).startswith("mask.col_indices: expected integers")


def test_permutation_entries_beyond_int32_are_rejected():
    assert message(ValueError, spaattn.invert_permutation, [2**32 + 1, 0]) == (
        "perm: expected values < 2^31, got 4294967297"
    )
    x = randn((1, 2, 1, 64), seed=0)
    assert message(ValueError, spaattn.permute_tokens, x, np.array([2**32 + 1, 0])) == (
        "perm: expected values < 2^31, got 4294967297"
    )
    assert message(ValueError, spaattn.invert_permutation, [0.0, 1.0]) == (
        "perm: expected integers, got dtype float64"
    )
    assert message(ValueError, spaattn.invert_permutation, [0, -1]) == (
        "perm: expected values in [0, 2), got perm[1] = -1"
    )


def test_grids_whose_size_overflows_are_rejected():
    huge = "order.grid: expected at most 2147483647 tokens, got 4294967296x4294967296x1"
    for order in ("raster", "gilbert", "tiles", None):
        assert message(ValueError, spaattn.SparseAttention, grid=(2**32, 2**32, 1),
                       order=order) == huge
    assert message(ValueError, spaattn.SparseAttention, grid=(2**62, 4, 1), order="raster") == (
        "order.grid: expected at most 2147483647 tokens, got 4611686018427387904x4x1"
    )
    assert message(ValueError, spaattn.rectified_attention, *qkv((1, 128, 1, 64)),
                   grid=(2**32, 2**32, 1)) == huge
    assert message(ValueError, spaattn.gilbert, (2**32, 2**32, 1)) == huge
    assert message(ValueError, spaattn.block_neighbours, (2**32, 2**32, 1)) == huge
    assert message(ValueError, spaattn.gilbert, (2**63, 1, 1)) == (
        "grid: expected values < 2^63, got 9223372036854775808"
    )
    assert message(ValueError, spaattn.SparseAttention, grid=(1, 1, -(2**63) - 1)) == (
        "grid: expected values >= -2^63, got -9223372036854775809"
    )
    assert message(TypeError, spaattn.gilbert, (1.7, 4, 4)) == "grid: expected integers, got float"
    assert message(TypeError, spaattn.SparseAttention, grid=5) == "grid: expected (T, H, W), got 5"
    assert message(ValueError, spaattn.token_permutation, "tiles", (1, 2, 2),
                   tile=(2**64, 1, 1)) == "tile: expected values < 2^63, got 18446744073709551616"
    assert message(ValueError, spaattn.token_permutation, "tiles", (1, 2, 2), tile=(1, 1)) == (
        "tile: expected (t, h, w), got (1, 1)"
    )


def test_a_given_grid_is_always_checked():
    # An empty grid used to read as "no grid" with the raster order.
    for grid in ((0, 5, 5), (-1, 4, 0), (0, 0, 0)):
        t, h, w = grid
        assert message(ValueError, spaattn.SparseAttention, grid=grid, order="raster") == (
            f"order.grid: expected t, h, w >= 1, got {t}x{h}x{w}"
        )
    attention = spaattn.SparseAttention("dense", grid=(1, 8, 16), order="raster", block_size=64)
    assert attention.grid == (1, 8, 16)
    q, k, v = qkv((1, 100, 1, 64))
    assert message(ValueError, attention.forward, q, k, v) == (
        "args.layout.num_video: expected the grid's t*h*w = 128, got 100"
    )


def test_call_numbers_beyond_int32_are_rejected():
    q, k, v = qkv((1, 128, 1, 64))
    attention = spaattn.SparseAttention("dense", block_size=64)
    assert message(ValueError, attention.forward, q, k, v, layer=2**31) == (
        "layer: expected a value < 2^31, got 2147483648"
    )
    assert message(ValueError, attention.forward, q, k, v, step=2**32) == (
        "step: expected a value < 2^31, got 4294967296"
    )
    assert message(ValueError, attention.forward, q, k, v, entry=-(2**40)) == (
        "entry: expected a value >= -2^31, got -1099511627776"
    )
    assert message(ValueError, attention.forward, q, k, v, step=-1) == (
        "call: expected layer, entry and step >= 0, got 0, 0, -1"
    )
    assert message(TypeError, attention.forward, q, k, v, layer="0") == (
        "layer: expected an int, got str"
    )
    assert message(ValueError, attention.forward, q, k, v, num_text=-1) == (
        "num_text: expected a value >= 0, got -1"
    )
    assert message(ValueError, attention.forward, q, k, v, num_text=2**63) == (
        "num_text: expected a value < 2^63, got 9223372036854775808"
    )
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, FULL[:, :1],
                   num_text=-(2**63)) == "num_text: expected a value >= 0, got -9223372036854775808"


def test_schedule_numbers_are_range_checked():
    assert message(ValueError, spaattn.SparseAttention, dense_layers=[0, -1]) == (
        "dense_layers: expected values >= 0, got -1"
    )
    assert message(ValueError, spaattn.SparseAttention, dense_layers=[2**31]) == (
        "dense_layers: expected values < 2^31, got 2147483648"
    )
    assert message(ValueError, spaattn.SparseAttention, dense_steps=2**31) == (
        "dense_steps: expected a value < 2^31, got 2147483648"
    )
    assert message(ValueError, spaattn.SparseAttention, "rettention", ref_period=2**32 + 1) == (
        "ref_period: expected a value < 2^31, got 4294967297"
    )
    assert message(ValueError, spaattn.SparseAttention, mask_period=-(2**31) - 1) == (
        "mask_period: expected a value >= -2^31, got -2147483649"
    )
    assert message(ValueError, spaattn.SparseAttention, first_frame_blocks=2**63) == (
        "first_frame_blocks: expected a value < 2^63, got 9223372036854775808"
    )
    assert message(ValueError, spaattn.SparseAttention, first_frame_blocks=-1) == (
        "config.select.first_frame_blocks: expected >= 0, got -1"
    )
    x = randn((1, 4, 1, 64), seed=0)
    assert message(ValueError, spaattn.permute_tokens, x, [0], video_offset=2**64) == (
        "video_offset: expected a value < 2^63, got 18446744073709551616"
    )
    # In range: the layer list still works, from any integer array or iterable.
    q, k, v = qkv((1, 256, 1, 64))
    for layers in (np.array([1], dtype=np.uint8), (layer for layer in [1])):
        attention = spaattn.SparseAttention("sparse", dense_layers=layers, block_size=64,
                                            sparsity=0.5)
        attention.forward(q, k, v, layer=1)
        assert attention.last_stats is not None and attention.last_stats.kind == "dense"
        attention.forward(q, k, v, layer=0)
        assert attention.last_stats.kind == "sparse"


# Zero-size arrays.


def test_empty_permutations():
    for perm in ([], (), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)[::-1],
                 np.zeros((0, 3), dtype=np.int32)[:, 0]):
        inv = spaattn.invert_permutation(perm)
        assert inv.dtype == np.int32 and inv.shape == (0,)
    x = randn((2, 5, 1, 64), seed=3)
    np.testing.assert_array_equal(spaattn.permute_tokens(x, [], video_offset=2), x)
    assert message(ValueError, spaattn.invert_permutation, np.zeros(0, dtype=np.float32)) == (
        "perm: expected integers, got dtype float32"
    )


def test_empty_masks_to_csr():
    for shape in ((0, 2, 3, 3), (2, 0, 3, 3), (2, 1, 0, 3)):
        row_offsets, col_indices = spaattn.dense_to_csr(np.zeros(shape, dtype=bool))
        assert row_offsets.tolist() == [0] and col_indices.tolist() == []
    row_offsets, col_indices = spaattn.dense_to_csr(np.zeros((2, 1, 3, 0), dtype=bool))
    assert row_offsets.tolist() == [0] * 7 and col_indices.tolist() == []
    # numpy gives zero-size arrays arbitrary (here zero) strides, transposed or not.
    view = np.zeros((0, 2, 3, 3), dtype=np.uint8).transpose(3, 1, 2, 0)
    row_offsets, col_indices = spaattn.dense_to_csr(view)
    assert row_offsets.tolist() == [0] * 19 and col_indices.tolist() == []
    assert message(ValueError, spaattn.dense_to_csr, np.zeros(0, dtype=bool)) == (
        "mask: expected a dense [batch, heads, num_q_blocks, num_k_blocks] mask, got 1 dimensions"
    )
    assert message(ValueError, spaattn.dense_to_csr, np.array(True)) == (
        "mask: expected 1 to 4 dimensions, got 0"
    )


def test_dense_mask_dtypes():
    for dtype in (np.int64, np.float32, np.complex64):
        assert message(ValueError, spaattn.dense_to_csr, np.ones((1, 1, 2, 2), dtype=dtype)) == (
            f"mask: expected dtype bool or uint8, got {np.dtype(dtype)}"
        )
    row_offsets, col_indices = spaattn.dense_to_csr(np.eye(2, dtype=np.uint8)[None, None])
    assert row_offsets.tolist() == [0, 1, 2] and col_indices.tolist() == [0, 1]


def test_mask_wider_than_int32_block_ids():
    wide = np.broadcast_to(np.zeros(1, dtype=bool), (1, 1, 1, 2**31))  # no memory behind it
    assert message(ValueError, spaattn.dense_to_csr, wide) == (
        "mask: expected fewer than 2^31 key blocks, got 2147483648"
    )


def test_empty_lists_at_attention():
    q, k, v = qkv((1, 256, 2, 64))
    rows = 1 * 2 * 2
    out, lse = spaattn.block_sparse_attention(q, k, v, ([0] * (rows + 1), []), return_lse=True)
    assert (out == 0).all() and np.isneginf(lse).all()
    assert message(ValueError, spaattn.block_sparse_attention, q, k, v, FULL,
                   text_lengths=[]) == "text_lengths: expected shape [1], got [0]"
    empty = np.zeros((0, 256, 2, 64), dtype=np.float32)
    assert message(ValueError, spaattn.block_sparse_attention, empty, empty, empty, FULL) == (
        "q: expected batch >= 1, got 0"
    )
    assert message(ValueError, spaattn.SparseAttention("dense", block_size=64).forward, empty,
                   empty, empty, text_lengths=3) == "q: expected batch >= 1, got 0"


def test_rectified_attention_reuses_its_object_but_no_selection():
    import spaattn.attention as A

    A._cache_clear()
    rng = np.random.default_rng(11)
    shape = (1, 4 * 16 * 16, 2, 64)
    first = [rng.standard_normal(shape, dtype=np.float32) for _ in range(3)]
    second = [rng.standard_normal(shape, dtype=np.float32) for _ in range(3)]
    options = dict(sparsity=0.8, grid=(4, 16, 16), block_size=64)
    out_first = spaattn.rectified_attention(*first, **options)
    assert len(A._cache) == 1
    out_second = spaattn.rectified_attention(*second, **options)
    assert len(A._cache) == 1  # the same object served both calls
    # Each call equals a fresh object's: the second did not reuse the first's selection.
    fresh = spaattn.SparseAttention("rectified", **options).forward(*second)
    np.testing.assert_array_equal(out_second, fresh)
    fresh = spaattn.SparseAttention("rectified", **options).forward(*first)
    np.testing.assert_array_equal(out_first, fresh)
    for sparsity in (0.5, 0.6, 0.7, 0.9, 0.95):
        spaattn.rectified_attention(*first, **dict(options, sparsity=sparsity))
    assert len(A._cache) == A._CACHE_SIZE
    spaattn.rectified_attention.cache_clear()
    assert not A._cache
