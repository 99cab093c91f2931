"""Procedural videos of moving, rotating, textured shapes, with captions.

A scene is drawn from ``(seed, index)`` alone (``scene_for``), so any sample of the stream can be
regenerated anywhere; ``render`` turns a list of scenes into pixels on any device, batched and
vectorised in torch, at any frame count and size (motion is defined over normalised clip time, so a
32-frame clip shows the same motion as a 16-frame one, sampled twice as densely).

Coordinates: positions and motion are fractions of the frame (x of the width, y of the height,
origin at the frame centre, y pointing down); sizes are fractions of ``min(height, width)``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from .captions import (
    BACKGROUND_COLOURS,
    MAX_TEXT_TOKENS,
    SHAPE_COLOURS,
    ShapeWords,
    make_caption,
    tokenize,
)

MAX_SHAPES = 3
TRAVEL = 0.45
"""Distance a moving shape covers over the clip, as a fraction of the frame."""
PAN_TRAVEL = 0.5
"""Distance a panning background covers over the clip, as a fraction of the frame."""
MARGIN = 0.15
PATTERN_PERIOD = 0.25
"""Background pattern period as a fraction of ``min(height, width)``."""

# Star-polygon description of each shape: (points k, inner radius, rotation of the first vertex).
# A regular k-gon is a star whose inner vertices lie on its edges: inner radius cos(pi/k).
_POLYGONS: dict[str, tuple[float, float, float]] = {
    "circle": (1.0, 1.0, 0.0),
    "ring": (1.0, 1.0, 0.0),
    "square": (4.0, math.cos(math.pi / 4), math.pi / 4),
    "triangle": (3.0, 0.5, math.pi / 2),
    "star": (5.0, 0.45, math.pi / 2),
}
_SIZE_FACTOR: dict[str, float] = {"circle": 1.0, "ring": 1.1, "square": 1.0, "triangle": 1.3, "star": 1.3}
_TEXTURE_ID = {"solid": 0, "striped": 1, "checkered": 2}
_BACKGROUND_ID = {"plain": 0, "striped": 1, "checkered": 2, "gradient": 3}
_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "none": (0.0, 0.0)
}


@dataclass(frozen=True)
class ShapeSpec:
    """One shape and its motion over the clip (time tau from 0 to 1)."""

    words: ShapeWords
    start: tuple[float, float]
    end: tuple[float, float]
    angle: tuple[float, float]
    scale: tuple[float, float]
    size: float


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene: shapes in painting order, background and its pan."""

    shapes: tuple[ShapeSpec, ...]
    background: str
    background_colour: str
    pan: str

    @property
    def caption(self) -> str:
        return make_caption([s.words for s in self.shapes], self.background, self.background_colour, self.pan)


@dataclass
class Batch:
    """Rendered videos ``[b, 3, T, H, W]`` in [-1, 1] with their tokenized captions."""

    video: torch.Tensor
    tokens: torch.Tensor
    text_lengths: torch.Tensor
    captions: list[str]


def _luminance(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def alternate_colour(colour: Sequence[float], threshold: float = 0.45) -> tuple[float, float, float]:
    """Second colour of a pattern: darker for light colours, lighter for dark ones."""
    if _luminance(colour) > threshold:
        return tuple(0.55 * c for c in colour)  # type: ignore[return-value]
    return tuple(0.55 * c + 0.45 for c in colour)  # type: ignore[return-value]


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _sample_shape(rng: random.Random, colour: str, placed: list[tuple[float, float]]) -> ShapeSpec:
    shape = rng.choice(("circle", "square", "triangle", "star", "ring"))
    texture = rng.choices(("solid", "striped", "checkered"), weights=(0.5, 0.25, 0.25))[0]
    motions = ["left", "right", "up", "down", "grows", "shrinks"]
    if shape not in ("circle", "ring"):
        motions.append("rotates")
    motion = rng.choice(motions)
    size = rng.uniform(0.13, 0.18) * _SIZE_FACTOR[shape]
    lo, hi = -0.5 + MARGIN, 0.5 - MARGIN
    best: tuple[float, float] = (0.0, 0.0)
    best_gap = -1.0
    for _ in range(16):
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        dx, dy = _DIRECTIONS.get(motion, (0.0, 0.0))
        if dx:
            x = rng.uniform(lo, hi - TRAVEL) if dx > 0 else rng.uniform(lo + TRAVEL, hi)
        if dy:
            y = rng.uniform(lo, hi - TRAVEL) if dy > 0 else rng.uniform(lo + TRAVEL, hi)
        gap = min((_distance((x, y), p) for p in placed), default=1.0)
        if gap > best_gap:
            best, best_gap = (x, y), gap
        if gap >= 0.3:
            break
    x, y = best
    dx, dy = _DIRECTIONS.get(motion, (0.0, 0.0))
    end = (x + dx * TRAVEL, y + dy * TRAVEL)
    angle = (0.0, 0.0)
    if motion == "rotates":
        turn = rng.uniform(0.6, 1.0) * math.pi * rng.choice((-1.0, 1.0))
        angle = (0.0, turn)
    scale = {"grows": (0.55, 1.35), "shrinks": (1.35, 0.55)}.get(motion, (1.0, 1.0))
    words = ShapeWords(colour=colour, texture=texture, shape=shape, motion=motion)
    return ShapeSpec(words=words, start=(x, y), end=end, angle=angle, scale=scale, size=size)


def scene_for(seed: int, index: int) -> SceneSpec:
    """The scene number ``index`` of the stream ``seed`` (pure function of both)."""
    rng = random.Random(f"spaattn-testbed:{seed}:{index}")
    background = rng.choice(("plain", "striped", "checkered", "gradient"))
    bg_name = rng.choice(tuple(BACKGROUND_COLOURS))
    bg = BACKGROUND_COLOURS[bg_name]
    bg_alt = alternate_colour(bg)
    pan = "none"
    if background in ("striped", "checkered") and rng.random() < 0.5:
        pan = rng.choice(("left", "right", "up", "down"))
    n_shapes = rng.choices((1, 2, 3), weights=(0.45, 0.35, 0.2))[0]
    colours = [
        name for name, c in SHAPE_COLOURS.items()
        if _distance(c, bg) > 0.45 and (background == "plain" or _distance(c, bg_alt) > 0.35)
    ]
    chosen = rng.sample(colours, n_shapes)
    shapes: list[ShapeSpec] = []
    for colour in chosen:
        shapes.append(_sample_shape(rng, colour, [s.start for s in shapes]))
    return SceneSpec(shapes=tuple(shapes), background=background, background_colour=bg_name, pan=pan)


def _square_wave(x: torch.Tensor, sharpness: float = 3.0) -> torch.Tensor:
    """Soft square wave in [-1, 1] with period 1 (anti-aliased pattern edges)."""
    return torch.clamp(sharpness * torch.sin(2 * math.pi * x), -1.0, 1.0)


def _pattern(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor, period: float) -> torch.Tensor:
    """Pattern weight in [0, 1] (1 = main colour) of kind 1 (diagonal stripes), 2 (checks), else solid."""
    stripes = 0.5 + 0.5 * _square_wave((u + v) / (period * math.sqrt(2.0)))
    checks = 0.5 + 0.5 * torch.clamp(4.0 * _square_wave(u / period) * _square_wave(v / period), -1.0, 1.0)
    k = kind.view(-1, *([1] * (u.dim() - 1)))
    out = torch.ones_like(u + v)
    out = torch.where(k == 1, stripes, out)
    out = torch.where(k == 2, checks, out)
    return out


def _lerp(pair: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Per-frame values ``[b, T, 1, 1]`` interpolated linearly from ``pair[:, 0]`` to ``pair[:, 1]``."""
    return (pair[:, :1] + (pair[:, 1:] - pair[:, :1]) * tau).view(pair.shape[0], -1, 1, 1)


def render(scenes: Sequence[SceneSpec], frames: int, height: int, width: int,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixels ``[b, 3, frames, height, width]`` (float32 in [-1, 1]) of the scenes."""
    dev = torch.device(device)
    b, k_max = len(scenes), MAX_SHAPES
    f32 = dict(dtype=torch.float32, device=dev)
    unit = float(min(height, width))

    bg_kind = torch.tensor([_BACKGROUND_ID[s.background] for s in scenes], device=dev)
    bg_col = torch.tensor([BACKGROUND_COLOURS[s.background_colour] for s in scenes], **f32)
    bg_alt = torch.tensor([alternate_colour(BACKGROUND_COLOURS[s.background_colour]) for s in scenes], **f32)
    pan = torch.tensor([_DIRECTIONS[s.pan] for s in scenes], **f32) * PAN_TRAVEL

    tau = torch.arange(frames, **f32) / max(frames - 1, 1)
    xs = torch.arange(width, **f32) + 0.5 - width / 2
    ys = torch.arange(height, **f32) + 0.5 - height / 2
    x = xs.view(1, 1, 1, width)
    y = ys.view(1, 1, height, 1)

    bx = x - (pan[:, 0, None] * width * tau).view(b, frames, 1, 1)
    by = y - (pan[:, 1, None] * height * tau).view(b, frames, 1, 1)
    weight = _pattern(bg_kind, bx, by, PATTERN_PERIOD * unit)
    gradient = (0.5 - y / height).expand(b, frames, height, width)
    weight = torch.where(bg_kind.view(b, 1, 1, 1) == 3, gradient, weight)
    img = bg_alt.view(b, 3, 1, 1, 1) + (bg_col - bg_alt).view(b, 3, 1, 1, 1) * weight.unsqueeze(1)

    for slot in range(k_max):
        rows = [s.shapes[slot] if slot < len(s.shapes) else None for s in scenes]
        if all(r is None for r in rows):
            break
        present = torch.tensor([r is not None for r in rows], **f32)
        filled = [r if r is not None else scenes[0].shapes[0] for r in rows]
        poly = torch.tensor([_POLYGONS[r.words.shape] for r in filled], **f32)
        ring = torch.tensor([r.words.shape == "ring" for r in filled], device=dev)
        circle = torch.tensor([r.words.shape in ("circle", "ring") for r in filled], device=dev)
        texture = torch.tensor([_TEXTURE_ID[r.words.texture] for r in filled], device=dev)
        col = torch.tensor([SHAPE_COLOURS[r.words.colour] for r in filled], **f32)
        alt = torch.tensor([alternate_colour(SHAPE_COLOURS[r.words.colour], 0.5) for r in filled], **f32)
        start = torch.tensor([r.start for r in filled], **f32)
        end = torch.tensor([r.end for r in filled], **f32)
        angle = torch.tensor([r.angle for r in filled], **f32)
        scale = torch.tensor([r.scale for r in filled], **f32)
        size = torch.tensor([r.size for r in filled], **f32)

        cx = _lerp(torch.stack([start[:, 0], end[:, 0]], 1), tau) * width
        cy = _lerp(torch.stack([start[:, 1], end[:, 1]], 1), tau) * height
        theta = _lerp(angle, tau)
        radius = _lerp(scale, tau) * size.view(b, 1, 1, 1) * unit
        dx, dy = x - cx, y - cy
        cos, sin = torch.cos(theta), torch.sin(theta)
        u = (cos * dx + sin * dy) / radius
        v = (-sin * dx + cos * dy) / radius
        r = torch.sqrt(u * u + v * v)
        points, inner, rot = (poly[:, i].view(b, 1, 1, 1) for i in range(3))
        sector = 2 * math.pi / points
        a = torch.remainder(torch.atan2(-v, u) - rot, sector)
        phi = torch.minimum(a, sector - a)
        edge_y = inner * torch.sin(math.pi / points)
        edge_x = inner * torch.cos(math.pi / points) - 1.0
        bound = edge_y / (torch.cos(phi) * edge_y - torch.sin(phi) * edge_x)
        bound = torch.where(circle.view(b, 1, 1, 1), torch.ones_like(bound), bound)
        inside = (bound - r) * radius
        inside = torch.where(ring.view(b, 1, 1, 1), (0.2 - (r - 0.8).abs()) * radius, inside)
        alpha = torch.clamp(inside + 0.5, 0.0, 1.0) * present.view(b, 1, 1, 1)
        tex = _pattern(texture, u, v, 0.6)
        colour = alt.view(b, 3, 1, 1, 1) + (col - alt).view(b, 3, 1, 1, 1) * tex.unsqueeze(1)
        img = img + (colour - img) * alpha.unsqueeze(1)

    return img * 2.0 - 1.0


def make_batch(seed: int, indices: Sequence[int], grid: tuple[int, int, int],
               device: torch.device | str = "cpu", text_tokens: int = MAX_TEXT_TOKENS) -> Batch:
    """Scenes ``indices`` of stream ``seed`` rendered at ``grid = (frames, height, width)`` pixels."""
    scenes = [scene_for(seed, i) for i in indices]
    captions = [s.caption for s in scenes]
    tokens, lengths = tokenize(captions, text_tokens)
    video = render(scenes, *grid, device=device)
    return Batch(video=video, tokens=tokens.to(device), text_lengths=lengths.to(device), captions=captions)
