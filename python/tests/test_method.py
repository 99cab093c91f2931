"""SparseAttention on numpy arrays: methods, schedules and the state kept across steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import spaattn
from conftest import qkv, randn, reference

SHAPE = (2, 512 + 32, 2, 64)  # grid 2 x 16 x 16 video tokens, 32 text tokens


def test_dense_method_matches_float64():
    q, k, v = qkv(SHAPE)
    attention = spaattn.SparseAttention("dense", block_size=64)
    out = attention.forward(q, k, v, num_text=32, text_lengths=[32, 10])
    np.testing.assert_allclose(out, reference(q, k, v, num_text=32, text_lengths=[32, 10])[0],
                               atol=2e-5)
    assert attention.last_stats == spaattn.CallStats("dense", 1.0, False)


def test_rettention_schedule_and_correction():
    q, k, v = qkv(SHAPE, seed=2)
    dense = reference(q, k, v, num_text=32)[0]
    attention = spaattn.SparseAttention("rettention", sparsity=0.75, dense_steps=1,
                                        ref_period=2, block_size=64, grid=(2, 16, 16))
    kinds = []
    for step in range(5):
        out = attention.forward(q, k, v, layer=3, step=step, num_text=32)
        kinds.append(attention.last_stats.kind)
        if kinds[-1] != "sparse":
            np.testing.assert_allclose(out, dense, atol=2e-5)
        else:
            # The step after a reference on the same inputs: rho O_spa + Delta = O_full.
            np.testing.assert_allclose(out, dense, atol=1e-4)
            assert attention.last_stats.density < 1.0
    assert kinds == ["dense", "reference", "sparse", "reference", "sparse"]
    assert attention.state_count == 1


def test_rettention_step_without_its_reference_is_a_late_reference():
    q, k, v = qkv(SHAPE, seed=3)
    attention = spaattn.SparseAttention("rettention", sparsity=0.75, ref_period=4, block_size=64)
    attention.forward(q, k, v, step=0, num_text=32)
    attention.reset()
    assert attention.state_count == 0
    out = attention.forward(q, k, v, step=2, num_text=32)
    assert attention.last_stats.kind == "reference"
    dense = spaattn.SparseAttention("dense", block_size=64).forward(q, k, v, num_text=32)
    np.testing.assert_allclose(out, dense, atol=1e-5, rtol=0)
    attention.forward(q, k, v, step=3, num_text=32)
    assert attention.last_stats.kind == "sparse"


def test_state_is_kept_per_layer_and_entry():
    q, k, v = qkv(SHAPE, seed=4)
    attention = spaattn.SparseAttention("sparse", sparsity=0.5, block_size=64, mask_period=2)
    reused = []
    for step in range(3):
        for entry in (0, 1):
            attention.forward(q, k, v, layer=1, entry=entry, step=step, num_text=32)
            reused.append(attention.last_stats.mask_reused)
    assert reused == [False, False, True, True, False, False]
    assert attention.state_count == 2
    attention.reset()
    assert attention.state_count == 0


def test_dense_layers_and_steps():
    q, k, v = qkv(SHAPE, seed=5)
    attention = spaattn.SparseAttention(sparsity=0.8, block_size=64, dense_steps=2,
                                        dense_layers=[1])
    kinds = {}
    for step in range(3):
        for layer in range(3):
            attention.forward(q, k, v, layer=layer, step=step, num_text=32)
            kinds[step, layer] = attention.last_stats.kind
    assert [kinds[s, 0] for s in range(3)] == ["dense", "dense", "sparse"]
    assert [kinds[2, layer] for layer in range(3)] == ["sparse", "dense", "sparse"]


@pytest.mark.parametrize("method", ["sparse", "rectified", "rectified_rettention"])
def test_methods_and_output_dtypes(method):
    q, k, v = qkv(SHAPE, seed=6)
    attention = spaattn.SparseAttention(method, sparsity=0.75, block_size=64, grid=(2, 16, 16),
                                        ref_period=2, order="tiles", tile=(1, 8, 8))
    out = np.empty(SHAPE, dtype=np.float16)
    result = attention.forward(q, k, v, num_text=32, out=out)
    assert result is out and np.isfinite(out).all()
    assert attention.selector == "ipar"


def test_failed_call_leaves_the_state_untouched():
    q, k, v = qkv(SHAPE, seed=8)
    attention = spaattn.SparseAttention("rettention", sparsity=0.75, block_size=64)
    attention.forward(q, k, v, step=0, num_text=32)
    bad = randn((2, 512 + 32, 2, 96), seed=9)
    with pytest.raises(ValueError, match="q: expected head_dim 64 or 128, got 96"):
        attention.forward(bad, bad, bad, step=1, num_text=32)
    attention.forward(q, k, v, step=1, num_text=32)
    assert attention.last_stats.kind == "sparse"


def test_calibration_of_the_calibrated_method():
    """The errors each reference step measures per (b, h) at distances 0 and interval, and the
    choice at a distance: Re-ttention's correction after the first reference step (nothing
    measured at a distance: errors_then NaN), the least expected error after the next; None for
    other methods and before a reference step."""
    attention = spaattn.SparseAttention("calibrated", sparsity=0.75, dense_steps=1,
                                        ref_period=2, block_size=64, grid=(2, 16, 16),
                                        drift=0.03)
    rng = np.random.default_rng(3)
    q, k, v = qkv(SHAPE, seed=3)
    found = []
    for step in range(4):
        drift = [0.2 * step * rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]
        attention.forward(q + drift[0], k + drift[1], v + drift[2], layer=1, step=step,
                          num_text=32, text_lengths=[32, 10])
        found.append(attention.calibration(layer=1))
    assert found[0] is None  # dense warm-up
    first, second = found[1], found[3]
    # The sparse step keeps the reference step's measurements (NaN errors: compared as equal).
    assert (found[2].ref_step, found[2].interval, found[2].drift) == (
        first.ref_step, first.interval, first.drift)
    np.testing.assert_equal(found[2].errors_ref, first.errors_ref)
    np.testing.assert_equal(found[2].errors_then, first.errors_then)
    assert (first.ref_step, first.interval) == (1, 0)
    assert (second.ref_step, second.interval) == (3, 2)
    for calibration in (first, second):
        for distance in (1, 2, 3):
            choice = calibration.choice(distance)
            expected = calibration.expected(distance)
            assert len(choice) == 2 and all(len(row) == 2 for row in choice)
            for b in range(2):
                for h in range(2):
                    ref, then = calibration.errors_ref[b][h], calibration.errors_then[b][h]
                    assert list(ref) == list(then) == list(spaattn.CANDIDATES)
                    assert ref["rettention"] == 0.0
                    assert all(np.isfinite(e) and e >= 0 for e in ref.values())
                    if calibration is first:
                        assert all(np.isnan(e) for e in then.values())
                        assert all(np.isnan(e) for e in expected[b][h].values())
                        assert choice[b][h] == "rettention"
                        assert calibration.drift[b][h] == pytest.approx(0.03)
                        continue
                    assert all(np.isfinite(e) and e >= 0 for e in then.values())
                    # The norm linear in the distance through the two measured errors.
                    want = {c: max(0.0, math.sqrt(ref[c]) + (math.sqrt(then[c]) -
                                   math.sqrt(ref[c])) * distance / 2) ** 2 for c in ref}
                    for c in spaattn.CANDIDATES:
                        assert expected[b][h][c] == pytest.approx(want[c], rel=1e-12, abs=1e-15)
                    best = min(want, key=lambda c: (want[c], spaattn.CANDIDATES.index(c)))
                    assert want[choice[b][h]] == pytest.approx(want[best], rel=1e-12)
    with pytest.raises(ValueError, match="distance"):
        second.choice(0)
    with pytest.raises(TypeError, match="distance"):
        second.choice(1.5)  # type: ignore[arg-type]
    assert attention.calibration(layer=0) is None  # no state for that layer
    rectified = spaattn.SparseAttention("rectified", sparsity=0.75, block_size=64)
    rectified.forward(q, k, v, num_text=32)
    assert rectified.calibration() is None
    with pytest.raises(TypeError, match="layer"):
        attention.calibration(layer=1.5)  # type: ignore[arg-type]
