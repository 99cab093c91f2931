"""Caption grammar and the word-level tokenizer.

The grammar is built from the same attribute lists that the renderer in ``data.py`` uses, so a
caption is a faithful description of its video:

    a red striped square moves left and a blue circle grows
    over a checkered gray background while the background pans right

Token id 0 is padding; every other id is one word of the fixed vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHAPE_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "purple": (0.55, 0.15, 0.75),
    "cyan": (0.10, 0.85, 0.90),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.97, 0.97, 0.97),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "gray": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
    "brown": (0.45, 0.28, 0.12),
    "navy": (0.10, 0.12, 0.38),
    "beige": (0.85, 0.80, 0.62),
    "teal": (0.08, 0.45, 0.45),
    "olive": (0.45, 0.45, 0.12),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
TEXTURES: tuple[str, ...] = ("solid", "striped", "checkered")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "rotates", "grows", "shrinks")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "gradient")
PANS: tuple[str, ...] = ("none", "left", "right", "up", "down")

MAX_TEXT_TOKENS = 32
"""Text sequence length N_t; the longest caption of the grammar has 30 words."""

_FIXED_WORDS: tuple[str, ...] = (
    "a", "an", "and", "over", "background", "while", "the", "pans", "moves",
    "left", "right", "up", "down", "rotates", "grows", "shrinks",
    "striped", "checkered", "plain", "gradient",
)


def _build_vocab() -> tuple[str, ...]:
    words: list[str] = ["<pad>"]
    for word in (*_FIXED_WORDS, *SHAPE_COLOURS, *BACKGROUND_COLOURS, *SHAPES):
        if word not in words:
            words.append(word)
    return tuple(words)


VOCAB: tuple[str, ...] = _build_vocab()
WORD_TO_ID: dict[str, int] = {word: i for i, word in enumerate(VOCAB)}


@dataclass(frozen=True)
class ShapeWords:
    """The caption-relevant attributes of one shape."""

    colour: str
    texture: str
    shape: str
    motion: str


def shape_phrase(words: ShapeWords) -> str:
    """Phrase for one shape, e.g. ``a red striped square moves left`` or ``an orange star grows``."""
    parts = ["an" if words.colour[0] in "aeiou" else "a", words.colour]
    if words.texture != "solid":
        parts.append(words.texture)
    parts.append(words.shape)
    if words.motion in ("left", "right", "up", "down"):
        parts += ["moves", words.motion]
    else:
        parts.append(words.motion)
    return " ".join(parts)


def make_caption(shapes: list[ShapeWords], background: str, background_colour: str, pan: str) -> str:
    """Full caption: shape phrases joined by ``and``, the background, then the pan."""
    text = " and ".join(shape_phrase(s) for s in shapes)
    text += f" over a {background} {background_colour} background"
    if pan != "none":
        text += f" while the background pans {pan}"
    return text


def encode(caption: str) -> list[int]:
    """Word ids of a caption (no padding). Raises ``KeyError`` naming an unknown word."""
    ids = []
    for word in caption.split():
        if word not in WORD_TO_ID:
            raise KeyError(f"word {word!r} is not in the caption vocabulary")
        ids.append(WORD_TO_ID[word])
    if len(ids) > MAX_TEXT_TOKENS:
        raise ValueError(f"caption has {len(ids)} words, more than MAX_TEXT_TOKENS={MAX_TEXT_TOKENS}")
    return ids


def decode(ids: list[int]) -> str:
    """Caption text of word ids, padding dropped."""
    return " ".join(VOCAB[i] for i in ids if i != 0)


def tokenize(captions: list[str], length: int = MAX_TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[n, length]`` (int64, zero padded) and lengths ``[n]`` (int32) of captions.

    An empty caption gives length 0: the unconditional input of classifier-free guidance.
    """
    tokens = torch.zeros(len(captions), length, dtype=torch.int64)
    lengths = torch.zeros(len(captions), dtype=torch.int32)
    for row, caption in enumerate(captions):
        ids = encode(caption)
        if len(ids) > length:
            raise ValueError(f"caption {caption!r} has {len(ids)} words, more than length={length}")
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        lengths[row] = len(ids)
    return tokens, lengths
