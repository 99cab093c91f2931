"""torch tensors: agreement with torch's scaled_dot_product_attention at density 1 (CPU float32
everywhere, CUDA bfloat16 / float16 on a GPU), zero-copy layouts, streams and SparseAttention's
GPU path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import spaattn

torch = pytest.importorskip("torch")
F = torch.nn.functional

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def blocks(seq: int, num_text: int, block: int) -> int:
    return -(-(seq - num_text) // block) + -(-num_text // block)


def sdpa(q, k, v, key_valid=None):
    """torch's attention in float32 on [b, H, S, d] tensors; key_valid: bool [b, S]."""
    mask = None if key_valid is None else key_valid[:, None, None, :]
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)


def inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("d", [64, 128])
def test_cpu_float32_matches_sdpa(d):
    q, k, v = inputs((2, 3, 300, d))  # [b, H, S, d], as SDPA takes them
    mask = torch.ones(2, 3, blocks(300, 0, 128), blocks(300, 0, 128), dtype=torch.bool)
    out = spaattn.block_sparse_attention(q, k, v, mask, layout="bhsd")
    assert out.shape == q.shape and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, sdpa(q, k, v), atol=2e-5, rtol=0)


def test_cpu_text_padding_matches_masked_sdpa():
    num_text, lengths = 40, [40, 7]
    q, k, v = inputs((2, 296, 2, 64), seed=1)  # [b, S, H, d]
    n = blocks(296, num_text, 64)
    out = spaattn.block_sparse_attention(
        q, k, v, torch.ones(2, 2, n, n, dtype=torch.bool), num_text=num_text,
        text_lengths=torch.tensor(lengths), block_size=64,
    )
    valid = torch.ones(2, 296, dtype=torch.bool)
    valid[1, 256 + 7 :] = False
    ref = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), valid).transpose(1, 2)
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=0)
    assert (out[~valid] == 0).all()


def test_cpu_sparse_attention_methods_match_sdpa():
    q, k, v = inputs((1, 4, 512, 64), seed=2, dtype=torch.float32)
    q.requires_grad_(True)  # spaattn computes no gradients: an error unless grad mode is off
    ref = sdpa(q.detach(), k, v)
    rect = spaattn.SparseAttention("rectified", sparsity=0.0, grid=(2, 16, 16), block_size=64)
    for call in (lambda: rect.forward(q, k, v, layout="bhsd"),
                 lambda: spaattn.block_sparse_attention(q, k, v, torch.ones(1, 4, 8, 8, dtype=torch.bool),
                                                        layout="bhsd", block_size=64)):
        with pytest.raises(ValueError, match="q: expected a tensor that does not require grad"):
            call()
    with torch.no_grad():
        dense = spaattn.SparseAttention("dense", block_size=64).forward(q, k, v, layout="bhsd")
        out = rect.forward(q, k, v, layout="bhsd")
    torch.testing.assert_close(dense, ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert rect.last_stats.density == 1.0


def test_cpu_bfloat16():
    q, k, v = inputs((1, 2, 256, 64), dtype=torch.bfloat16, seed=3)
    mask = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    out = spaattn.block_sparse_attention(q, k, v, mask, layout="bhsd")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), sdpa(q, k, v), atol=2e-2, rtol=0)


def test_torch_and_numpy_agree():
    q, k, v = inputs((1, 200, 2, 64), seed=4)
    mask = torch.rand(1, 2, 2, 2, generator=torch.Generator().manual_seed(0)) < 0.6
    out = spaattn.block_sparse_attention(q, k, v, mask)
    ref = spaattn.block_sparse_attention(q.numpy(), k.numpy(), v.numpy(), mask.numpy())
    np.testing.assert_array_equal(out.numpy(), ref)


# ---- CUDA -------------------------------------------------------------------------------------


def bf16_error_bound(q, k, v, ref):
    """Error of torch's own bfloat16 attention against the float32 reference (FA3's yardstick)."""
    own = F.scaled_dot_product_attention(q, k, v).float()
    return (own - ref).abs().max().item()


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d, seq", [(64, 1000), (128, 4096)])
def test_cuda_matches_sdpa_at_density_one(dtype, d, seq):
    q, k, v = inputs((2, 4, seq, d), dtype=dtype, device="cuda", seed=5)
    n = blocks(seq, 0, 128)
    out, lse = spaattn.block_sparse_attention(
        q, k, v, torch.ones(2, 4, n, n, dtype=torch.bool, device="cuda"), layout="bhsd",
        return_lse=True,
    )
    ref = sdpa(q, k, v)
    assert out.dtype == dtype and out.device.type == "cuda" and out.shape == q.shape
    assert (out.float() - ref).abs().max().item() <= 2 * bf16_error_bound(q, k, v, ref) + 1e-3
    ref_lse = torch.logsumexp(q.float() @ k.float().transpose(-1, -2) / d**0.5, dim=-1)
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=0)


@cuda
def test_cuda_masks_text_and_cpu_agreement():
    num_text, seq, block = 77, 1101, 64
    q, k, v = inputs((2, seq, 2, 128), dtype=torch.bfloat16, device="cuda", seed=6)
    n = blocks(seq, num_text, block)
    mask = torch.rand(2, 2, n, n, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    mask = mask < 0.5
    lengths = torch.tensor([77, 12], dtype=torch.int32, device="cuda")
    kwargs = dict(num_text=num_text, text_lengths=lengths, block_size=block)
    out = spaattn.block_sparse_attention(q, k, v, mask, **kwargs)
    out_csr = spaattn.block_sparse_attention(q, k, v, spaattn.dense_to_csr(mask), **kwargs)
    torch.testing.assert_close(out, out_csr, atol=0, rtol=0)
    host = spaattn.block_sparse_attention(
        *(x.float().cpu() for x in (q, k, v)), mask.cpu(), num_text=num_text,
        text_lengths=[77, 12], block_size=block,
    )
    torch.testing.assert_close(out.float().cpu(), host, atol=2e-2, rtol=0)


@cuda
def test_cuda_runs_on_the_current_stream():
    q, k, v = inputs((1, 2, 2048, 64), dtype=torch.bfloat16, device="cuda", seed=7)
    mask = torch.ones(1, 2, 16, 16, dtype=torch.bool, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = spaattn.block_sparse_attention(q, k, v, mask, layout="bhsd")
    stream.synchronize()
    ref = sdpa(q, k, v)
    assert (out.float() - ref).abs().max().item() <= 2 * bf16_error_bound(q, k, v, ref) + 1e-3


@cuda
def test_cuda_errors():
    q, k, v = inputs((1, 128, 2, 64), device="cuda")
    mask = torch.ones(1, 2, 1, 1, dtype=torch.bool, device="cuda")
    with pytest.raises(ValueError) as error:
        spaattn.block_sparse_attention(q, k, v, mask)
    assert str(error.value) == "q: expected dtype bfloat16 or float16 on the GPU, got float32"
    with pytest.raises(ValueError) as error:
        spaattn.block_sparse_attention(q.bfloat16(), k.bfloat16().cpu(), v.bfloat16(), mask)
    assert str(error.value) == "k: expected device cuda, got cpu"


def test_cuda_sparse_attention(gpu_pipeline):
    q, k, v = inputs((2, 4, 1024, 128), dtype=torch.bfloat16, device="cuda", seed=8)
    ref = sdpa(q, k, v)
    bound = 2 * bf16_error_bound(q, k, v, ref) + 1e-3
    for method in ("dense", "rectified", "sparse"):
        attention = spaattn.SparseAttention(method, sparsity=0.0, grid=(4, 16, 16))
        out = attention.forward(q, k, v, layout="bhsd")
        assert (out.float() - ref).abs().max().item() <= bound, method
    rett = spaattn.SparseAttention("rettention", sparsity=0.75, ref_period=2, grid=(4, 16, 16))
    kinds = []
    for step in range(3):
        out = rett.forward(q, k, v, step=step, layout="bhsd")
        kinds.append(rett.last_stats.kind)
        assert torch.isfinite(out).all()
    assert kinds == ["reference", "sparse", "reference"]
    rett.reset()
    assert rett.state_count == 0
    memory = rett._memory
    del rett
    assert not memory._blocks  # every block the GPU path took was given back


def test_cuda_fp8_agrees_with_the_16_bit_path(gpu_pipeline):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("FP8 runs on compute capability 9.0 devices only")
    q, k, v = inputs((1, 1024 + 40, 2, 128), dtype=torch.bfloat16, device="cuda", seed=11)
    options = dict(sparsity=0.75, grid=(4, 16, 16), block_size=128)
    for method in ("rectified", "rettention"):
        half = spaattn.SparseAttention(method, **options)
        fp8 = spaattn.SparseAttention(method, precision="fp8", **options)
        for step in range(2):
            a = half.forward(q, k, v, num_text=40, step=step)
            b = fp8.forward(q, k, v, num_text=40, step=step)
            # 8-bit operands: 0.027-0.039 measured on random inputs (tests/gpu/test_fp8.cpp).
            assert ((b.float() - a.float()).norm() / a.float().norm()).item() < 0.05, method


def test_cuda_block_sparse_fp8_agrees_with_the_16_bit_kernel(gpu_pipeline):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("FP8 runs on compute capability 9.0 devices only")
    q, k, v = inputs((1, 1000 + 77, 2, 128), dtype=torch.bfloat16, device="cuda", seed=12)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(1, 2, 9, 9, generator=g) < 0.5  # 8 video blocks (the last partial), 1 text
    mask[..., 0] = True
    mask = mask.cuda()
    options = dict(num_text=77, text_lengths=50, return_lse=True)
    a, lse_a = spaattn.block_sparse_attention(q, k, v, mask, **options)
    b, lse_b = spaattn.block_sparse_attention(q, k, v, mask, precision="fp8", **options)
    # 8-bit operands: 0.027-0.039 measured on random inputs (tests/gpu/test_fp8.cpp).
    assert ((b.float() - a.float()).norm() / a.float().norm()).item() < 0.05
    valid = torch.isfinite(lse_a)
    assert torch.equal(valid, torch.isfinite(lse_b))  # text padding rows: -inf in both
    assert (lse_b[valid] - lse_a[valid]).abs().max().item() < 0.01
    # The same bits from CSR lists and through torch.compile (FP8 is deterministic).
    c, _ = spaattn.block_sparse_attention(q, k, v, spaattn.dense_to_csr(mask), precision="fp8",
                                          **options)
    assert torch.equal(c, b)

    def fp8(q, k, v):
        return spaattn.block_sparse_attention(q, k, v, mask, num_text=77, precision="fp8")

    compiled = torch.compile(fp8, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q, k, v), fp8(q, k, v))
    with pytest.raises(ValueError, match="kernel: fp8 runs on the hopper kernel family only"):
        spaattn.block_sparse_attention(q, k, v, mask, precision="fp8", kernel="portable")
    with pytest.raises(ValueError, match="layout.block_size: FP8 precision supports block_size"):
        spaattn.block_sparse_attention(q, k, v, torch.ones(1, 2, 18, 18, dtype=torch.bool,
                                                           device="cuda"),
                                       precision="fp8", block_size=64, num_text=77)


def test_cuda_sparse_attention_agrees_with_cpu(gpu_pipeline):
    q, k, v = inputs((1, 1024 + 40, 2, 64), dtype=torch.bfloat16, device="cuda", seed=9)
    options = dict(sparsity=0.75, grid=(4, 16, 16), block_size=64)
    gpu = spaattn.SparseAttention("rectified", **options).forward(q, k, v, num_text=40)
    cpu = spaattn.SparseAttention("rectified", **options).forward(
        *(x.float().cpu() for x in (q, k, v)), num_text=40)
    err = (gpu.float().cpu() - cpu).norm() / cpu.norm()
    assert err < 2e-2


def test_cuda_calibrated_agrees_with_cpu(gpu_pipeline):
    """The calibrated method on CUDA tensors over a run (dense, reference, sparse, sparse,
    reference, sparse, sparse: choices at distances 1 and 2 after a measured interval) against
    the CPU path on the same inputs: every output, and the calibration of each reference step
    (errors within 5% of each other, choices at distances 1-3 equal where the CPU's best is
    clearly ahead, drift within 1e-3)."""
    options = dict(sparsity=0.75, dense_steps=1, ref_period=3, grid=(4, 16, 16), block_size=64)
    gpu = spaattn.SparseAttention("calibrated", **options)
    cpu = spaattn.SparseAttention("calibrated", **options)
    kinds = []
    for step in range(7):
        q, k, v = inputs((2, 1024 + 40, 2, 64), dtype=torch.bfloat16, device="cuda",
                         seed=20 + step)
        a = gpu.forward(q, k, v, num_text=40, step=step, layer=3)
        b = cpu.forward(*(x.float().cpu() for x in (q, k, v)), num_text=40, step=step, layer=3)
        kinds.append(gpu.last_stats.kind)
        assert kinds[-1] == cpu.last_stats.kind
        assert ((a.float().cpu() - b).norm() / b.norm()).item() < 2e-2, step
        got, want = gpu.calibration(layer=3), cpu.calibration(layer=3)
        assert (got is None) == (want is None)
        if want is None:
            continue
        assert (got.ref_step, got.interval) == (want.ref_step, want.interval)
        for bi in range(2):
            for h in range(2):
                top = max(e for errors in (want.errors_ref, want.errors_then)
                          for e in errors[bi][h].values() if math.isfinite(e))
                for errors_got, errors_want in ((got.errors_ref, want.errors_ref),
                                                (got.errors_then, want.errors_then)):
                    w, g = errors_want[bi][h], errors_got[bi][h]
                    for c in spaattn.CANDIDATES:
                        if math.isnan(w[c]):
                            assert math.isnan(g[c])
                        else:
                            assert abs(g[c] - w[c]) <= 0.05 * w[c] + 1e-3 * top, (step, c)
                for distance in (1, 2, 3):
                    w = want.expected(distance)[bi][h]
                    ranked = sorted((e, c) for c, e in w.items() if math.isfinite(e))
                    if (len(ranked) < 2 or
                            ranked[1][0] - ranked[0][0] > 0.1 * ranked[1][0] + 2e-3 * top):
                        assert (got.choice(distance)[bi][h] ==
                                want.choice(distance)[bi][h]), (step, distance)
                assert abs(got.drift[bi][h] - want.drift[bi][h]) < 1e-3
    assert kinds == ["dense", "reference", "sparse", "sparse", "reference", "sparse", "sparse"]
    memory = gpu._memory
    del gpu
    assert not memory._blocks  # every block the GPU path took was given back


def test_cuda_density_is_measured_on_request(gpu_pipeline):
    q, k, v = inputs((1, 1024 + 40, 2, 64), dtype=torch.bfloat16, device="cuda", seed=10)
    options = dict(sparsity=0.75, grid=(4, 16, 16), block_size=64, neighbours=False)
    cpu = spaattn.SparseAttention("sparse", **options)
    cpu.forward(*(x.float().cpu() for x in (q, k, v)), num_text=40)
    plain = spaattn.SparseAttention("sparse", **options)
    plain.forward(q, k, v, num_text=40)
    assert math.isnan(plain.last_stats.density)  # reading it back would synchronise
    measured = spaattn.SparseAttention("sparse", measure_density=True, **options)
    measured.forward(q, k, v, num_text=40)
    assert 0 < measured.last_stats.density < 1
    assert abs(measured.last_stats.density - cpu.last_stats.density) < 0.01
    dense = spaattn.SparseAttention("dense", measure_density=True, **options)
    dense.forward(q, k, v, num_text=40)
    assert dense.last_stats.density == 1.0
