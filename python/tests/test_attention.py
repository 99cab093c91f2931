"""block_sparse_attention, dense_to_csr and rectified_attention on numpy arrays (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import spaattn
from conftest import qkv, reference


@pytest.mark.parametrize(
    "shape, num_text, lengths, placement, block",
    [
        ((1, 200, 2, 64), 0, None, "suffix", 128),
        ((2, 300, 3, 128), 44, [44, 20], "suffix", 64),
        ((2, 257, 1, 64), 77, [0, 77], "prefix", 128),
        ((1, 113, 2, 128), 13, [5], "prefix", 64),
    ],
)
def test_full_mask_matches_float64(shape, num_text, lengths, placement, block):
    q, k, v = qkv(shape)
    n = -(-(shape[1] - num_text) // block) + -(-num_text // block)
    mask = np.ones((shape[0], shape[2], n, n), dtype=bool)
    out, lse = spaattn.block_sparse_attention(
        q, k, v, mask, num_text=num_text, text_lengths=lengths, text_placement=placement,
        block_size=block, return_lse=True,
    )
    ref, ref_lse = reference(q, k, v, num_text=num_text, text_lengths=lengths,
                             placement=placement)
    assert out.dtype == np.float32 and out.shape == shape and lse.shape == shape[:3]
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, atol=2e-5)


def test_random_mask_dense_and_csr_agree(rng):
    shape, num_text, block = (2, 400, 2, 64), 72, 64
    q, k, v = qkv(shape, seed=3)
    n = -(-(shape[1] - num_text) // block) + -(-num_text // block)
    mask = rng.random((2, 2, n, n)) < 0.4
    mask[0, 1, 2] = False  # an empty row: zeros and lse = -inf
    out, lse = spaattn.block_sparse_attention(q, k, v, mask, num_text=num_text, block_size=block,
                                              text_lengths=[72, 30], return_lse=True)
    csr = spaattn.dense_to_csr(mask)
    out_csr = spaattn.block_sparse_attention(q, k, v, csr, num_text=num_text, block_size=block,
                                             text_lengths=[72, 30])
    ref, ref_lse = reference(q, k, v, num_text=num_text, text_lengths=[72, 30], mask=mask,
                             block=block)
    np.testing.assert_array_equal(out, out_csr)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    finite = np.isfinite(ref_lse)
    np.testing.assert_array_equal(np.isfinite(lse), finite)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], atol=2e-5)
    assert not np.isnan(out).any()
    assert (out[0, 2 * 64 : 3 * 64, 1] == 0).all()


def test_dense_to_csr_lists_rows_in_order():
    mask = np.zeros((1, 2, 3, 3), dtype=np.uint8)
    mask[0, 0, 0, [0, 2]] = 1
    mask[0, 1, 2, :] = 1
    row_offsets, col_indices = spaattn.dense_to_csr(mask)
    assert row_offsets.dtype == np.int32
    assert row_offsets.tolist() == [0, 2, 2, 2, 2, 2, 5]
    assert col_indices.tolist() == [0, 2, 0, 1, 2]


def test_bhsd_layout_is_a_view_of_the_same_attention():
    q, k, v = qkv((2, 192, 3, 64), seed=5)
    mask = np.ones((2, 3, 2, 2), dtype=bool)
    out = spaattn.block_sparse_attention(q, k, v, mask)
    tq, tk, tv = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in (q, k, v))
    out_t, lse_t = spaattn.block_sparse_attention(tq, tk, tv, mask, layout="bhsd",
                                                  return_lse=True)
    assert out_t.shape == (2, 3, 192, 64) and out_t.flags.c_contiguous
    assert lse_t.shape == (2, 3, 192)
    np.testing.assert_array_equal(out_t.transpose(0, 2, 1, 3), out)


def test_scale_and_half_precision():
    q, k, v = qkv((1, 130, 2, 64), seed=7)
    mask = np.ones((1, 2, 2, 2), dtype=bool)
    out = spaattn.block_sparse_attention(q, k, v, mask, scale=0.05)
    np.testing.assert_allclose(out, reference(q, k, v, scale=0.05)[0], atol=2e-5)
    half = spaattn.block_sparse_attention(*(x.astype(np.float16) for x in (q, k, v)), mask)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), reference(q, k, v)[0], atol=5e-3)


def test_huge_logits_stay_finite():
    q, k, v = qkv((1, 128, 1, 64), seed=9)
    q *= 300.0
    k *= 300.0
    out = spaattn.block_sparse_attention(q, k, v, np.ones((1, 1, 1, 1), dtype=bool))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference(q, k, v)[0], atol=1e-4)


@pytest.mark.parametrize("num_text", [0, 40])
def test_rectified_at_sparsity_zero_is_dense(num_text):
    grid = (2, 8, 16)
    q, k, v = qkv((2, 256 + num_text, 2, 64), seed=11)
    out, stats = spaattn.rectified_attention(
        q, k, v, sparsity=0.0, grid=grid, num_text=num_text, block_size=64, return_stats=True,
        text_lengths=[num_text, num_text // 2],
    )
    assert stats.kind == "sparse" and stats.density == 1.0
    ref = reference(q, k, v, num_text=num_text, text_lengths=[num_text, num_text // 2])[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_rectified_at_sparsity_09_computes_fewer_blocks():
    grid = (4, 16, 16)
    q, k, v = qkv((1, 1024, 2, 64), seed=13)
    out, stats = spaattn.rectified_attention(q, k, v, sparsity=0.9, grid=grid, block_size=64,
                                             neighbours=False, return_stats=True)
    assert stats.kind == "sparse" and 0.0 < stats.density < 0.5
    assert out.shape == q.shape and np.isfinite(out).all()
