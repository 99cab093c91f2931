"""Shared fixtures: a tiny model config that runs in milliseconds on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from spaattn_testbed.model import ModelConfig, VideoDiT  # noqa: E402


def tiny_config() -> ModelConfig:
    """Width 64, 2 layers, 2 heads of 32."""
    return ModelConfig(width=64, depth=2, heads=2, mlp_hidden=128, rope_split=(8, 12, 12))


TINY_TRAIN_ARGS = ["--width", "64", "--depth", "2", "--heads", "2", "--mlp-hidden", "128", "--rope-split", "8,12,12",
                   "--grids", "4x16x16:3@0.5,8x16x16:2@0.5", "--device", "cpu", "--log-every", "2"]


@pytest.fixture
def tiny_model() -> VideoDiT:
    """A tiny model with non-zero output layers (so outputs depend on every input)."""
    torch.manual_seed(0)
    model = VideoDiT(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.normal_(std=0.05)
    return model.eval()
