"""Sampler: attention hook per layer and step, determinism, q/k/v capture, strip and GIF files."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import safe_open

from spaattn_testbed.attention import CaptureAttention, dense_attention, reference_attention
from spaattn_testbed.model import TIME_SHIFT, shift_time
from spaattn_testbed.sample import eval_prompts, initial_noise, sample, save_gif, save_strip, timesteps, to_uint8

PIXELS = (4, 16, 16)


def test_timesteps():
    ts = timesteps(10, shift=1.0)
    assert len(ts) == 11 and ts[0] == 1.0 and ts[-1] == 0.0
    shifted = timesteps(10, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert all(a > b for a, b in zip(shifted, shifted[1:]))
    assert shifted[5] > ts[5]
    assert timesteps(10) == [shift_time(t, TIME_SHIFT) for t in ts]


def test_noise_is_per_seed():
    a = initial_noise([3, 4], (3, 2, 4, 4), "cpu")
    b = initial_noise([4], (3, 2, 4, 4), "cpu")
    assert torch.equal(a[1], b[0])


def test_hook_called_for_every_layer_and_step(tiny_model):
    calls = []

    def spy(q, k, v, layer_idx, step_idx, text_lengths, *, grid):
        calls.append((layer_idx, step_idx, q.shape, text_lengths.tolist(), grid))
        assert q.shape == k.shape == v.shape
        return dense_attention(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)

    prompts = eval_prompts(2)
    out = sample(tiny_model, prompts, PIXELS, steps=3, cfg_scale=3.0, attention=spy)
    assert out.shape == (2, 3, *PIXELS)
    depth = tiny_model.cfg.depth
    assert [(c[0], c[1]) for c in calls] == [(layer, step) for step in range(3) for layer in range(depth)]
    n_video = 4 * 4 * 4
    for _, _, shape, lengths, grid in calls:
        assert shape == (4, n_video + 32, 2, 32)
        assert grid == (4, 4, 4)
        assert lengths[2:] == [0, 0] and min(lengths[:2]) > 0
    assert tiny_model.attention is dense_attention


def test_sampling_is_deterministic_and_attention_is_swappable(tiny_model):
    prompts = ["a red circle grows over a plain gray background"]
    a = sample(tiny_model, prompts, PIXELS, steps=4, seed=5)
    b = sample(tiny_model, prompts, PIXELS, steps=4, seed=5)
    c = sample(tiny_model, prompts, PIXELS, steps=4, seed=5, attention=reference_attention)
    d = sample(tiny_model, prompts, PIXELS, steps=4, seed=6)
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(a, d)
    assert to_uint8(a).shape == (1, 4, 16, 16, 3)


def test_capture_writes_qkv(tiny_model, tmp_path):
    capture = CaptureAttention(dense_attention, [(0, 1), (1, 2)], batch_items=[0])
    seen = {}

    def spy(q, k, v, layer_idx, step_idx, text_lengths, *, grid):
        if (layer_idx, step_idx) == (1, 2):
            seen["q"] = q[0].clone()
        return capture(q, k, v, layer_idx, step_idx, text_lengths, grid=grid)

    sample(tiny_model, eval_prompts(2), PIXELS, steps=3, attention=spy)
    path = tmp_path / "qkv.safetensors"
    capture.save(str(path), {"note": "test"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        q = f.get_tensor("layer1.step2.q")
        lengths = f.get_tensor("layer1.step2.text_lengths")
    assert keys == {f"layer{lay}.step{st}.{n}" for lay, st in ((0, 1), (1, 2)) for n in ("q", "k", "v", "text_lengths")}
    assert q.shape == (1, 64 + 32, 2, 32) and q.dtype == torch.bfloat16
    assert torch.equal(q[0], seen["q"].to(torch.bfloat16))
    assert lengths.tolist()[0] > 0
    assert json.loads(meta["grid"]) == [4, 4, 4] and meta["n_video"] == "64" and meta["n_text"] == "32"
    assert json.loads(meta["pairs"]) == [[0, 1], [1, 2]] and meta["note"] == "test"


def test_strip_and_gif(tmp_path):
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8) for _ in range(3)]
    save_strip(tmp_path / "strip.png", [(f"video {i}", v) for i, v in enumerate(videos)], columns=4)
    save_gif(tmp_path / "s.gif", videos)
    assert (tmp_path / "strip.png").stat().st_size > 1000
    assert (tmp_path / "s.gif").stat().st_size > 1000
