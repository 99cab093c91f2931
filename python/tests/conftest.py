"""Shared helpers of the Python tests: seeded inputs, a float64 reference of attention, the GPU skip."""

from __future__ import annotations

import os

# torch's OpenMP workers spin after each operation and starve the C++ core's CPU threads (a
# tiny model's forward runs 10x slower on two cores); set before any test imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import spaattn  # noqa: E402


def randn(shape: tuple[int, ...], seed: int, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def qkv(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return randn(shape, seed), randn(shape, seed + 1), randn(shape, seed + 2)


def logical_blocks(seq: int, num_text: int, placement: str, block: int) -> np.ndarray:
    """The logical block of every sequence position: video blocks first, then text blocks."""
    num_video = seq - num_text
    nv = -(-num_video // block)
    pos = np.arange(seq)
    video0 = num_text if placement == "prefix" else 0
    text0 = 0 if placement == "prefix" else num_video
    return np.where(
        (pos >= video0) & (pos < video0 + num_video),
        (pos - video0) // block,
        nv + (pos - text0) // block,
    )


def reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    num_text: int = 0,
    text_lengths: list[int] | None = None,
    placement: str = "suffix",
    mask: np.ndarray | None = None,
    block: int = 128,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(out, lse) of block-sparse attention (docs/methods.md) in float64.

    q, k, v [b, S, H, d], mask [b, H, n, n]."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    b, seq, heads, d = q.shape
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    allowed = np.ones((b, heads, seq, seq), dtype=bool)
    text0 = 0 if placement == "prefix" else seq - num_text
    lengths = [num_text] * b if text_lengths is None else text_lengths
    valid = np.ones((b, seq), dtype=bool)
    for i, length in enumerate(lengths):
        valid[i, text0 + length : text0 + num_text] = False
    allowed &= valid[:, None, None, :]
    if mask is not None:
        blocks = logical_blocks(seq, num_text, placement, block)
        allowed &= mask[:, :, blocks][:, :, :, blocks].astype(bool)
    logits = np.where(allowed, logits, -np.inf)
    top = logits.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.exp(logits - top)
    total = weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights / np.where(total > 0, total, 1.0), v)
    with np.errstate(divide="ignore"):
        lse = (np.log(total[..., 0]) + top[..., 0]).transpose(0, 2, 1)
    out[~valid] = 0.0
    lse[~valid] = -np.inf
    return out, lse


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def gpu_pipeline():
    """Skips when torch, a CUDA device or SparseAttention's GPU path (this build) is missing."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    q = torch.zeros(1, 128, 1, 64, dtype=torch.bfloat16, device="cuda")
    try:
        spaattn.SparseAttention("dense", block_size=64).forward(q, q, q)
    except RuntimeError as error:
        if "not available in this version" in str(error):
            pytest.skip(f"SparseAttention's GPU path: {error}")
        raise
