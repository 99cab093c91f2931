"""Procedural data: determinism, caption grammar, and captions that match the pixels."""

from __future__ import annotations

import torch

from spaattn_testbed.captions import BACKGROUND_COLOURS, MAX_TEXT_TOKENS, SHAPE_COLOURS, VOCAB, decode, encode, tokenize
from spaattn_testbed.data import make_batch, render, scene_for


def _find(pred, seed: int = 0, limit: int = 2000):
    for i in range(limit):
        s = scene_for(seed, i)
        if pred(s):
            return s
    raise AssertionError("no scene found")


def test_scenes_and_batches_are_deterministic():
    assert scene_for(3, 17) == scene_for(3, 17)
    assert scene_for(3, 17) != scene_for(4, 17)
    a = make_batch(5, [1, 2, 3], (4, 16, 16))
    b = make_batch(5, [1, 2, 3], (4, 16, 16))
    assert torch.equal(a.video, b.video) and torch.equal(a.tokens, b.tokens)
    assert a.captions == b.captions
    c = make_batch(5, [2], (4, 16, 16))
    assert torch.equal(c.video[0], a.video[1])


def test_batch_shapes_ranges_and_padding():
    batch = make_batch(0, range(12), (8, 32, 48))
    assert batch.video.shape == (12, 3, 8, 32, 48)
    assert batch.video.min() >= -1 and batch.video.max() <= 1
    assert batch.tokens.shape == (12, MAX_TEXT_TOKENS)
    lengths = batch.text_lengths.tolist()
    assert len(set(lengths)) > 1 and max(lengths) <= MAX_TEXT_TOKENS
    for row, n in zip(batch.tokens, lengths):
        assert (row[n:] == 0).all() and (row[:n] != 0).all()


def test_caption_grammar_fits_and_round_trips():
    longest = 0
    for i in range(500):
        caption = scene_for(0, i).caption
        ids = encode(caption)
        assert decode(ids) == caption
        longest = max(longest, len(ids))
    assert longest <= MAX_TEXT_TOKENS
    tokens, lengths = tokenize(["", "a red circle grows over a plain gray background"])
    assert lengths.tolist() == [0, 9] and (tokens[0] == 0).all()
    assert VOCAB[0] == "<pad>" and len(set(VOCAB)) == len(VOCAB)


def _single_solid(s) -> bool:
    return len(s.shapes) == 1 and s.shapes[0].words.texture == "solid" and s.shapes[0].words.shape != "ring"


def test_caption_colours_match_pixels():
    scene = _find(lambda s: _single_solid(s) and s.background == "plain")
    shape = scene.shapes[0]
    frames, h, w = 4, 64, 64
    video = (render([scene], frames, h, w)[0] + 1) / 2
    x = int((shape.start[0] + 0.5) * w)
    y = int((shape.start[1] + 0.5) * h)
    assert torch.allclose(video[:, 0, y, x], torch.tensor(SHAPE_COLOURS[shape.words.colour]), atol=1e-4)
    assert scene.caption.split()[1] == shape.words.colour
    corner = video[:, 0, 0, 0]
    assert torch.allclose(corner, torch.tensor(BACKGROUND_COLOURS[scene.background_colour]), atol=1e-4)


def test_motion_direction_matches_caption():
    for direction, summed_dim, sign in (("left", 1, -1), ("right", 1, 1), ("up", 2, -1), ("down", 2, 1)):
        scene = _find(lambda s: _single_solid(s) and s.shapes[0].words.motion == direction)
        colour = torch.tensor(SHAPE_COLOURS[scene.shapes[0].words.colour]).view(3, 1, 1, 1)
        video = (render([scene], 8, 64, 64)[0] + 1) / 2
        mask = ((video - colour).abs().amax(0) < 0.02).float()  # [T, H, W]
        coords = torch.arange(64, dtype=torch.float32)
        profile = mask.sum(dim=summed_dim)  # [T, 64] along the moving axis
        centre = (profile * coords).sum(1) / profile.sum(1)
        assert sign * (centre[-1] - centre[0]) > 15, (direction, centre)
        assert f"moves {direction}" in scene.caption


def test_long_and_wide_clips_render():
    scene = scene_for(0, 7)
    assert render([scene], 32, 64, 128).shape == (1, 3, 32, 64, 128)
