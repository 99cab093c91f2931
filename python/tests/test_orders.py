"""Token orders: gilbert curve, tiles, inverse permutations, block neighbours, token permutes."""

from __future__ import annotations

import numpy as np
import pytest
import spaattn
from conftest import randn


@pytest.mark.parametrize("grid", [(1, 1, 9), (2, 3, 4), (3, 5, 7), (4, 16, 16), (5, 2, 6)])
@pytest.mark.parametrize("axes", ["wht", "thw", "hwt"])
def test_gilbert_is_a_bijection_with_unit_steps(grid, axes):
    perm = spaattn.gilbert(grid, axes=axes)
    assert perm.dtype == np.int32 and sorted(perm.tolist()) == list(range(int(np.prod(grid))))
    coords = np.stack(np.unravel_index(perm, grid))
    assert (np.abs(np.diff(coords, axis=1)).sum(0) == 1).all()
    assert perm[0] == 0


def test_tiles_and_raster():
    grid = (2, 4, 4)
    tiles = spaattn.token_permutation("tiles", grid, tile=(2, 2, 2))
    assert tiles[:8].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]
    assert spaattn.token_permutation("raster", grid).tolist() == list(range(32))


def test_inverse_round_trip():
    perm = spaattn.gilbert((3, 6, 10))
    inv = spaattn.invert_permutation(perm)
    assert (inv[perm] == np.arange(perm.size)).all()
    assert (spaattn.invert_permutation(inv) == perm).all()


def test_block_neighbours_are_symmetric_and_hold_the_block():
    grid = (4, 8, 8)
    neighbours = spaattn.block_neighbours(grid, block_size=32)
    assert len(neighbours) == 8
    for i, row in enumerate(neighbours):
        assert i in row and row == sorted(row)
        for j in row:
            assert i in neighbours[j]


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_permute_tokens_round_trip_around_text(layout):
    grid, text = (2, 4, 8), 5
    x = randn((2, text + 64, 3, 64), seed=1)
    if layout == "bhsd":
        x = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
    perm = spaattn.gilbert(grid)
    y = spaattn.permute_tokens(x, perm, video_offset=text, layout=layout)
    seq = 2 if layout == "bhsd" else 1
    moved = np.take(x, text + perm, axis=seq)
    np.testing.assert_array_equal(np.take(y, np.arange(text, text + 64), axis=seq), moved)
    np.testing.assert_array_equal(np.take(y, np.arange(text), axis=seq),
                                  np.take(x, np.arange(text), axis=seq))
    back = spaattn.permute_tokens(y, perm, video_offset=text, inverse=True, layout=layout)
    np.testing.assert_array_equal(back, x)
