"""A small video DiT with joint video + text attention, 3D RoPE and adaLN-Zero conditioning.

- Video pixels ``[b, 3, T, H, W]`` are cut into patches ``(pt, ph, pw)`` (no VAE) and embedded; the
  video tokens come first in raster order ``T' x H' x W'``, then the ``N_t`` caption tokens (word
  embedding plus a learned position), as in HunyuanVideo's single-stream blocks: one sequence, one
  attention, shared weights. Word embeddings start at unit scale (positions at 0.5), so that the
  words stay visible in the text tokens' residual stream and in the pooled caption vector; with
  0.02 the captions were followed markedly less after the same training.
- 3D RoPE on video queries and keys: the head dimension is split into ``rope_split = (t, h, w)``
  parts, each rotated by its own grid coordinate; text tokens are not rotated.
- QK-norm (RMSNorm per head) before RoPE.
- Conditioning vector ``c`` = timestep embedding + projection of the masked mean of the caption's
  word embeddings; one shared ``Linear(c) -> 6 x width`` modulation plus a learned per-layer offset
  (adaLN-single as in PixArt-alpha), all initialised to zero (adaLN-Zero): every block starts as the
  identity and the output layer starts at zero.
- Every attention layer calls the replaceable ``attention`` function (see ``attention.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionFn, dense_attention
from .captions import MAX_TEXT_TOKENS, VOCAB


@dataclass
class ModelConfig:
    """Architecture of ``VideoDiT``."""

    width: int = 256
    depth: int = 10
    heads: int = 4
    mlp_hidden: int = 512
    patch: tuple[int, int, int] = (1, 4, 4)
    channels: int = 3
    text_tokens: int = MAX_TEXT_TOKENS
    vocab_size: int = len(VOCAB)
    rope_split: tuple[int, int, int] = (16, 24, 24)
    rope_theta: float = 10000.0
    frequency_dim: int = 256

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent sizes."""
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}")
        if sum(self.rope_split) != self.head_dim or any(p % 2 for p in self.rope_split):
            raise ValueError(f"rope_split={self.rope_split} must be even parts summing to head_dim={self.head_dim}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        for key in ("patch", "rope_split"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def rope_tables(grid: tuple[int, int, int], n_text: int, split: tuple[int, int, int], theta: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``, ``sin`` of shape ``[S, d/2]`` for the video grid (raster order), then identity rows for text."""
    coords = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij")
    angles = []
    for axis, dim in enumerate(split):
        inv = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        angles.append(coords[axis].reshape(-1, 1) * inv[None, :])
    video = torch.cat(angles, dim=1)
    text = torch.zeros(n_text, video.shape[1], device=device)
    full = torch.cat([video, text], dim=0)
    return torch.cos(full), torch.sin(full)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs ``(x[2i], x[2i+1])`` of ``x [b, S, H, d]`` by the table angles."""
    xf = x.float().unflatten(-1, (-1, 2))
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
    return out.to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[b, dim]`` of ``t * 1000`` for ``t`` in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


TIME_SHIFT = 4.0
"""Default timestep shift of training and sampling (see ``shift_time``)."""


def shift_time(t, shift: float):
    """Timestep shift ``s t / (1 + (s - 1) t)`` (adds ``log s`` to ``logit(t)``); ``t`` float or tensor.

    Training draws its times through this shift and the sampler spaces its steps with the same one:
    with many pixels per clip, the noisy input alone reveals the colours and shapes up to t near 0.96
    (16x64x64), so unshifted logit-normal times (above that once in 1,700 draws) never ask for the
    caption, and the sampler's first steps, where the layout is decided, fall where the model was
    hardly trained.
    """
    return shift * t / (1.0 + (shift - 1.0) * t)


@dataclass
class ForwardContext:
    """What every block needs beyond its input: attention function, step, text lengths, grid, RoPE."""

    attention: AttentionFn
    step_idx: int | None
    text_lengths: torch.Tensor
    grid: tuple[int, int, int]
    cos: torch.Tensor
    sin: torch.Tensor
    extras: dict = field(default_factory=dict)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation, QK-norm, RoPE and the attention hook."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.width)
        self.modulation = nn.Parameter(torch.zeros(6, cfg.width))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.modulation).unsqueeze(2).unbind(1)
        b, s, _ = x.shape
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(b, s, 3, self.heads, self.head_dim).unbind(2)
        q = apply_rope(self.q_norm(q.float()), ctx.cos, ctx.sin).to(v.dtype)
        k = apply_rope(self.k_norm(k.float()), ctx.cos, ctx.sin).to(v.dtype)
        o = ctx.attention(q, k, v, self.layer_idx, ctx.step_idx, ctx.text_lengths, grid=ctx.grid)
        x = x + gate1 * self.proj(o.reshape(b, s, -1))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class VideoDiT(nn.Module):
    """Predicts the rectified-flow velocity of a noisy video given the timestep and the caption."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        pt, ph, pw = cfg.patch
        self.patch_dim = cfg.channels * pt * ph * pw
        self.patch_embed = nn.Linear(self.patch_dim, cfg.width)
        self.word_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.text_pos = nn.Parameter(torch.zeros(cfg.text_tokens, cfg.width))
        self.pool_proj = nn.Linear(cfg.width, cfg.width)
        self.t_fc1 = nn.Linear(cfg.frequency_dim, cfg.width)
        self.t_fc2 = nn.Linear(cfg.width, cfg.width)
        self.adaln = nn.Linear(cfg.width, 6 * cfg.width)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.final_adaln = nn.Linear(cfg.width, 2 * cfg.width)
        self.final_proj = nn.Linear(cfg.width, self.patch_dim)
        self._init_weights()
        self.attention: AttentionFn = dense_attention

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.word_embed.weight, std=1.0)
        nn.init.normal_(self.text_pos, std=0.5)
        nn.init.normal_(self.t_fc1.weight, std=0.02)
        nn.init.normal_(self.t_fc2.weight, std=0.02)
        for m in (self.adaln, self.final_adaln, self.final_proj):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def set_attention(self, fn: AttentionFn | None) -> None:
        """Use ``fn`` in every attention layer (``None``: dense SDPA)."""
        object.__setattr__(self, "attention", fn if fn is not None else dense_attention)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Video token grid ``(T', H', W')`` of a ``frames x height x width`` video."""
        pt, ph, pw = self.cfg.patch
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"video {frames}x{height}x{width} is not divisible by patch {self.cfg.patch}")
        return frames // pt, height // ph, width // pw

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """``[b, C, T, H, W]`` -> ``[b, N_v, C*pt*ph*pw]`` in raster order of the token grid."""
        b, c, t, h, w = video.shape
        pt, ph, pw = self.cfg.patch
        x = video.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, self.patch_dim)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Inverse of ``patchify``."""
        b = tokens.shape[0]
        pt, ph, pw = self.cfg.patch
        gt, gh, gw = grid
        x = tokens.view(b, gt, gh, gw, self.cfg.channels, pt, ph, pw)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, self.cfg.channels, gt * pt, gh * ph, gw * pw)

    def forward(self, video: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, text_lengths: torch.Tensor,
                step_idx: int | None = None) -> torch.Tensor:
        """Velocity ``[b, C, T, H, W]`` for noisy ``video`` at times ``t [b]`` and captions ``tokens [b, N_t]``.

        ``text_lengths [b]`` (int) gives the valid caption tokens; the rest are padding and do not
        influence the output. ``step_idx`` is passed to the attention function.
        """
        b = video.shape[0]
        grid = self.token_grid(*video.shape[2:])
        n_text = tokens.shape[1]
        if n_text > self.cfg.text_tokens:
            raise ValueError(f"tokens has N_t={n_text} > text_tokens={self.cfg.text_tokens}")
        text_lengths = text_lengths.to(device=video.device, dtype=torch.int32)
        valid_text = torch.arange(n_text, device=video.device)[None, :] < text_lengths[:, None]

        words = self.word_embed(tokens)
        pooled = (words * valid_text[..., None]).sum(1) / text_lengths.clamp(min=1)[:, None].to(words.dtype)
        c = self.t_fc2(F.silu(self.t_fc1(timestep_embedding(t, self.cfg.frequency_dim)))) + self.pool_proj(pooled)
        c = F.silu(c)
        mod = self.adaln(c).view(b, 6, -1)

        video_tokens = self.patch_embed(self.patchify(video)).float()
        x = torch.cat([video_tokens, (words + self.text_pos[:n_text]).float()], dim=1)
        cos, sin = rope_tables(grid, n_text, self.cfg.rope_split, self.cfg.rope_theta, video.device)
        ctx = ForwardContext(self.attention, step_idx, text_lengths, grid, cos, sin)
        for block in self.blocks:
            x = block(x, mod, ctx)

        n_video = grid[0] * grid[1] * grid[2]
        shift, scale = self.final_adaln(c).unsqueeze(1).chunk(2, dim=-1)
        out = self.final_proj(self.final_norm(x[:, :n_video]) * (1 + scale) + shift)
        return self.unpatchify(out, grid)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
