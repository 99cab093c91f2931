"""Model: shapes, text padding, RoPE, patchify and the dense attention function."""

from __future__ import annotations

import torch

from spaattn_testbed.attention import dense_attention, reference_attention, token_valid_mask
from spaattn_testbed.captions import tokenize
from spaattn_testbed.model import ModelConfig, VideoDiT, apply_rope, count_parameters, rope_tables

from conftest import tiny_config

CAPTIONS = ["a red circle grows over a plain gray background",
            "a blue striped square moves left and a green star rotates over a checkered navy background "
            "while the background pans up",
            ""]


def _inputs(n_text: int = 32, frames: int = 4):
    torch.manual_seed(1)
    video = torch.randn(3, 3, frames, 16, 16)
    t = torch.tensor([0.1, 0.5, 0.9])
    tokens, lengths = tokenize(CAPTIONS, n_text)
    return video, t, tokens, lengths


def test_forward_shape_with_padded_text(tiny_model):
    video, t, tokens, lengths = _inputs()
    out = tiny_model(video, t, tokens, lengths)
    assert out.shape == video.shape and torch.isfinite(out).all()


def test_output_starts_at_zero():
    model = VideoDiT(tiny_config())
    video, t, tokens, lengths = _inputs()
    assert model(video, t, tokens, lengths).abs().max() == 0


def test_padding_text_tokens_do_not_change_video_output(tiny_model):
    video, t, tokens, lengths = _inputs(n_text=32)
    ref = tiny_model(video, t, tokens, lengths)
    short = tokens[:, :24]
    assert int(lengths.max()) <= 24
    out_short = tiny_model(video, t, short, lengths)
    garbage = tokens.clone()
    for row, n in enumerate(lengths.tolist()):
        garbage[row, n:] = torch.randint(1, 40, (32 - n,))
    out_garbage = tiny_model(video, t, garbage, lengths)
    assert torch.allclose(ref, out_short, atol=1e-5)
    assert torch.allclose(ref, out_garbage, atol=1e-5)


def test_caption_changes_output(tiny_model):
    video, t, tokens, lengths = _inputs()
    out = tiny_model(video, t, tokens, lengths)
    swapped = tiny_model(video, t, tokens.flip(0), lengths.flip(0))
    assert not torch.allclose(out[0], swapped[0], atol=1e-4)


def test_rope_depends_on_relative_position_only():
    grid = (6, 5, 7)
    cos, sin = rope_tables(grid, 3, (16, 24, 24), 10000.0, torch.device("cpu"))
    torch.manual_seed(0)
    q = torch.randn(1, cos.shape[0], 1, 64)
    k = torch.randn(1, cos.shape[0], 1, 64)
    q_same = q[:, :1].expand_as(q).contiguous()
    k_same = k[:, :1].expand_as(k).contiguous()
    rq, rk = apply_rope(q_same, cos, sin)[0, :, 0], apply_rope(k_same, cos, sin)[0, :, 0]

    def index(t: int, h: int, w: int) -> int:
        return (t * grid[1] + h) * grid[2] + w

    a = torch.dot(rq[index(1, 1, 2)], rk[index(3, 2, 4)])
    b = torch.dot(rq[index(3, 3, 3)], rk[index(5, 4, 5)])
    c = torch.dot(rq[index(1, 1, 2)], rk[index(3, 2, 5)])
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)
    n_video = grid[0] * grid[1] * grid[2]
    assert torch.equal(apply_rope(q, cos, sin)[:, n_video:], q[:, n_video:])
    assert torch.allclose(rq.norm(dim=-1), q_same[0, :, 0].norm(dim=-1), atol=1e-4)


def test_patchify_round_trip(tiny_model):
    video = torch.randn(2, 3, 4, 16, 16)
    tokens = tiny_model.patchify(video)
    assert tokens.shape == (2, 4 * 4 * 4, 48)
    assert torch.equal(tiny_model.unpatchify(tokens, (4, 4, 4)), video)
    assert torch.equal(tokens[0, 1], video[0, :, 0, 0:4, 4:8].reshape(-1))


def test_dense_attention_matches_reference_with_padding():
    torch.manual_seed(0)
    grid, n_text = (2, 3, 4), 5
    s = grid[0] * grid[1] * grid[2] + n_text
    q, k, v = (torch.randn(3, s, 2, 64) for _ in range(3))
    lengths = torch.tensor([5, 2, 0], dtype=torch.int32)
    out = dense_attention(q, k, v, 0, None, lengths, grid=grid)
    ref = reference_attention(q, k, v, 0, None, lengths, grid=grid)
    assert torch.allclose(out, ref, atol=1e-5)
    valid = token_valid_mask(lengths, 24, n_text)
    assert (out[~valid] == 0).all()
    k2 = k.clone()
    k2[1, 24 + 2:] = 100.0
    assert torch.allclose(dense_attention(q, k2, v, 0, None, lengths, grid=grid), out, atol=1e-5)


def test_default_config_fits_budget(tmp_path):
    from spaattn_testbed.checkpoint import save_model

    cfg = ModelConfig()
    assert cfg.head_dim == 64 and cfg.depth >= 8
    model = VideoDiT(cfg)
    path = tmp_path / "model.safetensors"
    save_model(model, path, step=0)
    assert path.stat().st_size <= 16 * 2**20
    assert 5e6 < count_parameters(model) < 8e6
    assert model.token_grid(32, 64, 64) == (32, 16, 16)


def test_bf16_autocast_forward_and_backward(tiny_model):
    video, t, tokens, lengths = _inputs()
    seen = []

    def spy(q, k, v, layer_idx, step_idx, text_lengths, *, grid):
        seen.append((q.dtype, k.dtype, v.dtype))
        return dense_attention(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)

    tiny_model.set_attention(spy)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = tiny_model(video, t, tokens, lengths)
    out.float().square().mean().backward()
    tiny_model.set_attention(None)
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen)
    assert torch.isfinite(out).all()
    assert all(p.grad is not None for p in tiny_model.parameters())
