"""Command lines end to end on a tiny model: train, sample with capture, plot the loss."""

from __future__ import annotations

import numpy as np
from safetensors import safe_open

from spaattn_testbed import plot_loss, sample, train

from conftest import TINY_TRAIN_ARGS


def test_train_sample_plot(tmp_path, capsys):
    run = tmp_path / "run"
    summary = train.main(TINY_TRAIN_ARGS + ["--out", str(run), "--steps", "4", "--total-steps", "10", "--time-shift", "2.5"])
    assert summary["step"] == 4
    out = tmp_path / "samples"
    sample.main(["--ckpt", str(run), "--out", str(out), "--n", "2", "--frames", "8", "--height", "16",
                 "--width", "32", "--steps", "2", "--gif", "--capture-layers", "1", "--capture-steps", "0,1", "--capture-heads", "1",
                 "--device", "cpu"])
    for name in ("strip.png", "samples.gif", "videos.npz", "qkv.safetensors"):
        assert (out / name).stat().st_size > 0, name
    videos = np.load(out / "videos.npz")["videos"]
    assert videos.shape == (2, 8, 16, 32, 3) and videos.dtype == np.uint8
    with safe_open(str(out / "qkv.safetensors"), framework="pt") as f:
        assert f.get_tensor("layer1.step1.k").shape == (1, 8 * 4 * 8 + 32, 1, 32)
        assert f.metadata()["heads"] == "[1]"
    plot_loss.main([str(run / "loss.csv")])
    assert (run / "loss.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "summary:" in text and "sampled 2 videos" in text
    assert "time shift 2.5" in text  # the sampler spaces its steps as the model was trained
