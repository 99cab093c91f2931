"""Errors: the C++ core's checks arrive as ValueError / RuntimeError with the core's message."""

from __future__ import annotations

import numpy as np
import pytest
import spaattn
from conftest import qkv, randn

FULL = np.ones((1, 2, 1, 1), dtype=bool)


def attention_error(*args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        spaattn.block_sparse_attention(*args, **kwargs)
    return str(error.value)


def test_tensor_checks_name_the_argument_and_the_value():
    q, k, v = qkv((1, 128, 2, 64))
    q96 = randn((1, 128, 2, 96), seed=1)
    assert attention_error(q96, q96, q96, FULL) == "q: expected head_dim 64 or 128, got 96"
    assert attention_error(q, k.astype(np.float16), v, FULL) == (
        "k: expected dtype float32 (as q), got float16"
    )
    assert attention_error(q.astype(np.float64), k, v, FULL) == (
        "q: expected dtype float32, bfloat16 or float16, got float64"
    )
    assert attention_error(q, k, v[..., :32].copy(), FULL) == (
        "v: expected shape [1, 128, 2, 64], got [1, 128, 2, 32]"
    )
    wide = randn((1, 128, 2, 128), seed=2)
    assert attention_error(wide[..., ::2], k, v, FULL) == (
        "q: expected unit stride on head_dim, got 2"
    )
    assert attention_error(q[0], k[0], v[0], FULL) == (
        "q: expected 4 dimensions [b, S, H, d], got 3"
    )
    empty = np.zeros((1, 0, 2, 64), dtype=np.float32)
    assert attention_error(empty, empty, empty, FULL) == (
        "q: expected a non-empty sequence, got seq_len 0"
    )


def test_layout_and_text_checks():
    q, k, v = qkv((1, 128, 2, 64))
    assert attention_error(q, k, v, FULL, num_text=16, text_lengths=[17]) == (
        "text_lengths: expected 0 <= L_t <= num_text (16), got 17 for batch item 0"
    )
    assert attention_error(q, k, v, FULL, block_size=96) == (
        "layout.block_size: expected 64 or 128, got 96"
    )
    assert attention_error(q, k, v, FULL, text_placement="middle") == (
        "text_placement: expected 'suffix' or 'prefix', got 'middle'"
    )
    assert attention_error(q, k, v, FULL, layout="sbhd") == (
        "layout: expected 'bshd' or 'bhsd', got 'sbhd'"
    )
    assert attention_error(q, k, v, np.ones((1, 2, 3, 3), dtype=bool)) == (
        "mask: expected 1 x 1 blocks (layout), got 3 x 3"
    )
    assert attention_error(q, k, v, FULL, text_lengths=[1.5], num_text=16) == (
        "text_lengths: expected integers, got dtype float64"
    )
    with pytest.raises(TypeError, match="q: expected a torch.Tensor or numpy.ndarray, got list"):
        spaattn.block_sparse_attention(q.tolist(), k, v, FULL)


def test_config_checks():
    cases = {
        "config.select.sparsity: expected 0 <= sparsity < 1, got 1": dict(sparsity=1.0),
        "config.select.p: expected 0 <= p <= 1, got 2": dict(p=2.0),
        "config.block_size: expected 64 or 128, got 32": dict(block_size=32),
        "config.rettention.ref_period: expected >= 1, got 0": dict(ref_period=0),
        "order: expected 'raster', 'gilbert' or 'tiles', got 'zigzag'": dict(
            order="zigzag", grid=(1, 2, 2)),
        "selector: expected 'automatic', 'ipar', 'band' or 'local', got 'best'": dict(
            selector="best"),
        "precision: expected input or fp8, got 'fp4'": dict(precision="fp4"),
        "config.precision: fp8 needs block_size 128, got 64": dict(precision="fp8",
                                                                   block_size=64),
    }
    for message, options in cases.items():
        with pytest.raises(ValueError) as error:
            spaattn.SparseAttention(**options)
        assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        spaattn.SparseAttention("foo")
    assert str(error.value) == (
        "method: expected one of dense, sparse, rectified, rettention, rectified_rettention, "
        "calibrated, got 'foo'"
    )


def test_fp8_needs_cuda_tensors():
    # FP8 exists only as the Hopper kernel: CPU tensors are refused, never run in 16 bits.
    q, k, v = qkv((1, 256, 2, 64))
    attention = spaattn.SparseAttention("sparse", precision="fp8")
    with pytest.raises(ValueError) as error:
        attention.forward(q, k, v)
    assert str(error.value) == "config.precision: fp8 needs CUDA tensors (the Hopper FP8 " \
        "kernel), got cpu tensors"
    assert attention.state_count == 0


def test_block_sparse_attention_precision():
    # The functional block-sparse call takes the same setting; FP8 runs on CUDA tensors only.
    q, k, v = qkv((1, 256, 2, 64))
    mask = np.ones((1, 2, 2, 2), dtype=bool)
    assert attention_error(q, k, v, mask, precision="fp4") == (
        "precision: expected input or fp8, got 'fp4'"
    )
    assert attention_error(q, k, v, mask, precision="fp8") == (
        "precision: fp8 needs CUDA tensors (the Hopper FP8 kernel), got cpu tensors"
    )


def test_rectified_attention_precision():
    # The functional call takes the same precision setting, checked the same way.
    q, k, v = qkv((1, 256, 2, 64))
    with pytest.raises(ValueError) as error:
        spaattn.rectified_attention(q, k, v, precision="fp4")
    assert str(error.value) == "precision: expected input or fp8, got 'fp4'"
    with pytest.raises(ValueError) as error:
        spaattn.rectified_attention(q, k, v, precision="fp8", block_size=64)
    assert str(error.value) == "config.precision: fp8 needs block_size 128, got 64"
    with pytest.raises(ValueError) as error:
        spaattn.rectified_attention(q, k, v, precision="fp8")
    assert str(error.value) == "config.precision: fp8 needs CUDA tensors (the Hopper FP8 " \
        "kernel), got cpu tensors"
    spaattn.rectified_attention.cache_clear()


def test_grid_must_match_the_video_tokens():
    q, k, v = qkv((1, 1000, 2, 64))
    attention = spaattn.SparseAttention(grid=(4, 16, 16), block_size=64)
    with pytest.raises(ValueError) as error:
        attention.forward(q, k, v)
    assert str(error.value) == "args.layout.num_video: expected the grid's t*h*w = 1024, got 1000"


def test_order_checks():
    with pytest.raises(ValueError, match=r"^order\.grid: "):
        spaattn.gilbert((0, 4, 4))
    with pytest.raises(ValueError, match=r"^order\.axes: "):
        spaattn.gilbert((2, 4, 4), axes="whx")
    with pytest.raises(ValueError, match=r"^grid: expected \(T, H, W\)"):
        spaattn.gilbert((4, 4))
    with pytest.raises(ValueError, match=r"^perm: "):
        spaattn.invert_permutation([0, 0, 1])
