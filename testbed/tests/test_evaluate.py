"""Attention switch, monitor, video metrics and the eval command, on the CPU with a tiny model.

The switch needs the spaattn package (``pip install .`` at the repository root); without it these
tests are reported as skipped, never as passed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spaattn_testbed.attention import dense_attention, reference_attention, token_valid_mask
from spaattn_testbed.checkpoint import save_model
from spaattn_testbed.metrics import psnr, ssim
from spaattn_testbed.model import ModelConfig, VideoDiT
from spaattn_testbed.monitor import AttentionMonitor

spaattn = pytest.importorskip("spaattn")

from spaattn_testbed import evaluate  # noqa: E402
from spaattn_testbed.sample import sample  # noqa: E402
from spaattn_testbed.switch import SpaattnAttention  # noqa: E402

GRID = (4, 8, 8)  # 256 video tokens: 4 blocks of 64
N_TEXT = 7


def qkv(b=2, heads=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = GRID[0] * GRID[1] * GRID[2] + N_TEXT
    return [torch.randn(b, s, heads, d, generator=g) for _ in range(3)]


def head64_model() -> VideoDiT:
    """Width 128, 2 layers, 2 heads of 64 (spaattn's smallest head dim), non-zero output layers."""
    torch.manual_seed(0)
    model = VideoDiT(ModelConfig(width=128, depth=2, heads=2, mlp_hidden=128, rope_split=(16, 24, 24)))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.normal_(std=0.05)
    return model.eval()


def test_psnr_ssim():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    assert torch.isinf(psnr(a, a)).all()
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    mse = (((a + 1) / 2 - (b + 1) / 2) ** 2).flatten(1).double().mean(1)
    assert torch.allclose(psnr(b, a), 10 * torch.log10(1 / mse))
    s = ssim(b, a)
    assert ((s > 0) & (s < 1)).all()
    assert (ssim(b, a) > ssim((a + 0.5 * torch.randn(a.shape, generator=g)).clamp(-1, 1), a)).all()
    with pytest.raises(ValueError, match="reference"):
        psnr(a, a[:1])
    with pytest.raises(ValueError, match="video"):
        ssim(a[:, :, :, :8, :8], a[:, :, :, :8, :8])


def test_dense_switch_matches_reference():
    q, k, v = qkv()
    lengths = torch.tensor([5, 0], dtype=torch.int32)
    switch = SpaattnAttention("dense", block_size=64)
    out = switch(q, k, v, 0, 0, lengths, grid=GRID)
    ref = reference_attention(q, k, v, 0, 0, lengths, grid=GRID)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    valid = token_valid_mask(lengths, 256, N_TEXT)
    assert (out[~valid] == 0).all()  # padding text rows written as zero
    assert switch.kinds == {"dense": 1}


@pytest.mark.parametrize("method", ["sparse", "rectified", "rettention", "rectified_rettention"])
def test_sparse_methods_close_but_not_equal(method):
    q, k, v = qkv(seed=3)
    lengths = torch.tensor([7, 3], dtype=torch.int32)
    switch = SpaattnAttention(method, sparsity=0.5, block_size=64, ref_period=2, neighbours=False)
    ref = reference_attention(q, k, v, 0, 0, lengths, grid=GRID)
    for step in range(3):
        out = switch(q, k, v, 0, step, lengths, grid=GRID)
        assert torch.isfinite(out).all()
        rel = ((out - ref).norm() / ref.norm()).item()
        assert rel < 1.0
    assert sum(switch.kinds.values()) == 3
    if method.endswith("rettention"):
        assert switch.kinds.get("reference", 0) >= 1 and switch.kinds.get("sparse", 0) >= 1
    else:
        assert switch.kinds == {"sparse": 3} and rel > 1e-4


def test_switch_errors_and_reset():
    with pytest.raises(ValueError, match="method"):
        SpaattnAttention("fast")
    with pytest.raises(ValueError, match="sparsity"):
        SpaattnAttention("rectified", sparsity=1.5)
    q, k, v = qkv()
    lengths = torch.tensor([7, 7], dtype=torch.int32)
    switch = SpaattnAttention("rettention", sparsity=0.5, block_size=64, ref_period=3)
    with pytest.raises(ValueError, match="step_idx"):
        switch(q, k, v, 0, None, lengths, grid=GRID)
    for step in range(2):
        switch(q, k, v, 0, step, lengths, grid=GRID)
    assert switch.kinds == {"reference": 1, "sparse": 1}
    switch(q, k, v, 0, 0, lengths, grid=GRID)  # a new run: state dropped, step 0 is a reference again
    assert switch.kinds == {"reference": 1}


def test_monitor_error_and_time():
    q, k, v = qkv(seed=5)
    lengths = torch.tensor([7, 2], dtype=torch.int32)

    def scaled(q, k, v, layer_idx, step_idx, text_lengths, *, grid):
        return 1.1 * dense_attention(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)

    monitor = AttentionMonitor(scaled, layers=2, steps=3)
    monitor(q, k, v, 1, 2, lengths, grid=GRID)
    res = monitor.results()
    assert res.calls == 1 and res.milliseconds > 0
    assert abs(res.rel_l2[1, 2] - 0.1) < 1e-5 and abs(res.cos[1, 2] - 1.0) < 1e-6
    assert np.isnan(res.rel_l2[0, 0])
    with pytest.raises(ValueError, match="layer_idx, step_idx"):
        monitor(q, k, v, 2, 0, lengths, grid=GRID)


def test_sample_through_switch_dense_matches_sdpa():
    model = head64_model()
    captions = ["a red square moves left over a plain blue background", "a green circle grows"]
    a = sample(model, captions, pixels=(4, 32, 32), steps=3, cfg_scale=2.0)
    b = sample(model, captions, pixels=(4, 32, 32), steps=3, cfg_scale=2.0,
               attention=SpaattnAttention("dense", block_size=64))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_eval_command(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    save_model(head64_model(), ckpt, step=0)
    out = tmp_path / "eval"
    result = evaluate.main(["--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", "--n", "2", "--frames", "4",
                            "--height", "32", "--width", "32", "--steps", "4", "--block-size", "64",
                            "--sparsities", "0.5,0.75", "--strip-sparsity", "0.5", "--ref-period", "2",
                            "--neighbours", "off", "--capture-layers", "1", "--capture-steps", "0,2", "--capture-heads", "1"])
    rows = result["rows"]
    methods = ["dense", "sparse", "rectified", "rettention", "rectified_rettention"]
    assert [r["method"] for r in rows] == ["sdpa"] + ["dense"] + [m for m in methods[1:] for _ in (0, 1)]
    by = {(r["method"], r["sparsity"]): r for r in rows}
    assert by[("dense", 0.0)]["psnr"] is None or by[("dense", 0.0)]["psnr"] > 60
    assert by[("dense", 0.0)]["attn_rel_l2"] < 1e-5
    for m in methods[1:]:
        for s in (0.5, 0.75):
            r = by[(m, s)]
            assert math.isfinite(r["psnr"]) and 0 < r["ssim"] < 1
            assert 0 < r["attn_rel_l2"] < 1 and r["calls"] == 2 * 4
            assert r["attention_ms"] > 0
    assert by[("dense", 0.0)]["density"] == 1.0 and by[("dense", 0.0)]["full_attention_calls"] == 1.0
    for s in (0.5, 0.75):  # a sparse call computes a share of the pairs; references count as 1
        assert 0 < by[("sparse", s)]["density"] < 1
        assert 0.5 < by[("rettention", s)]["density"] < 1  # half of the calls are references
    assert by[("sparse", 0.75)]["density"] <= by[("sparse", 0.5)]["density"]
    assert by[("rettention", 0.5)]["full_attention_calls"] == 0.5  # reference steps 0 and 2 of 4
    assert by[("sparse", 0.5)]["full_attention_calls"] == 0.0
    data = json.loads((out / "eval.json").read_text())
    assert data["settings"]["grid"] == [4, 8, 8]
    # The per-layer table: one row per corrected method and sparsity, a share per layer.
    layers = (out / "eval.md").read_text().split("plain sparse attention's:")[1].strip().splitlines()
    assert len(layers) == 2 + 3 * 2 and layers[2].startswith("| rectified | 0.50 |")
    assert all(len(line.split("|")) == 2 + 2 + 2 + 2 for line in layers[2:])
    assert np.array(data["per_layer_step"]["rectified@0.50"]["rel_l2"]).shape == (2, 4)
    for name in ("eval.md", "strip.png", "strip.gif", "error_vs_sparsity.png", "frontier.png", "layer_error.png",
                 "videos.npz", "qkv.safetensors"):
        assert (out / name).stat().st_size > 0, name
    from safetensors import safe_open

    with safe_open(str(out / "qkv.safetensors"), "pt") as f:
        assert f.get_tensor("layer1.step2.q").shape == (1, 256 + 32, 1, 64)
        assert json.loads(f.metadata()["pairs"]) == [[1, 0], [1, 2]]


def test_sample_command_with_a_spaattn_method(tmp_path):
    from spaattn_testbed import sample as sample_cli

    ckpt = tmp_path / "model.safetensors"
    save_model(head64_model(), ckpt, step=0)
    common = ["--ckpt", str(ckpt), "--n", "1", "--frames", "4", "--height", "32", "--width", "32", "--steps", "2",
              "--device", "cpu", "--block-size", "64"]
    sample_cli.main(common + ["--out", str(tmp_path / "sdpa")])
    sample_cli.main(common + ["--out", str(tmp_path / "sparse"), "--attention", "sparse", "--sparsity", "0.75"])
    a = np.load(tmp_path / "sdpa" / "videos.npz")["videos"]
    b = np.load(tmp_path / "sparse" / "videos.npz")["videos"]
    assert a.shape == b.shape and (tmp_path / "sparse" / "strip.png").stat().st_size > 0
    assert not np.array_equal(a, b)  # the sparse attention changed the video
    with pytest.raises(ValueError, match="method"):
        sample_cli.main(common + ["--out", str(tmp_path / "x"), "--attention", "fast"])
