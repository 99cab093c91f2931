"""Euler sampling of the rectified flow, with a pluggable attention function and q/k/v capture.

    PYTHONPATH=. python3 -m spaattn_testbed.sample --ckpt runs/main --out runs/main/samples --gif

The same prompts and seeds give the same initial noise on any device (drawn on the CPU per prompt),
so videos made with different attention functions can be compared frame by frame.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .attention import AttentionFn, CaptureAttention, dense_attention
from .captions import tokenize
from .checkpoint import load_model
from .data import render, scene_for
from .model import TIME_SHIFT, VideoDiT, shift_time

PROMPT_SEED = 1
"""Scene stream of the evaluation prompts (training uses stream 0)."""


def timesteps(steps: int, shift: float = TIME_SHIFT) -> list[float]:
    """``steps + 1`` times from 1 to 0, uniform, then shifted: ``s t / (1 + (s - 1) t)`` (``shift_time``)."""
    return [shift_time(1.0 - i / steps, shift) for i in range(steps + 1)]


def trained_time_shift(meta: dict[str, str]) -> float:
    """The timestep shift a model file was trained with (1.0 for files from before the shift)."""
    return float(json.loads(meta.get("train_config", "{}")).get("time_shift", 1.0))


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Noise ``[n, *shape]``, item ``i`` from ``torch.Generator().manual_seed(seeds[i])`` on the CPU."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


def eval_prompts(n: int, seed: int = PROMPT_SEED) -> list[str]:
    """Captions of the first ``n`` scenes of the evaluation stream."""
    return [scene_for(seed, i).caption for i in range(n)]


@torch.no_grad()
def sample(model: VideoDiT, captions: Sequence[str], pixels: tuple[int, int, int] = (32, 64, 64), steps: int = 30,
           cfg_scale: float = 4.0, seed: int = 0, shift: float = TIME_SHIFT, attention: AttentionFn | None = None,
           autocast: bool | None = None,
           on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Videos ``[n, 3, T, H, W]`` in [-1, 1] for ``captions`` by ``steps`` Euler steps from t=1 to t=0.

    Prompt ``i`` starts from the noise of seed ``seed + i``. ``shift`` spaces the steps as training
    drew its times (``trained_time_shift`` of the model file). With ``cfg_scale != 1`` the conditional
    and unconditional (caption length 0) inputs run as one batch of ``2n``: items ``0..n-1`` are
    conditional. ``attention`` replaces the attention of every layer for this call; it receives
    ``step_idx`` = the step index. ``on_step(i, x)`` is called after each step.
    """
    device = next(model.parameters()).device
    autocast = device.type == "cuda" if autocast is None else autocast
    n = len(captions)
    tokens, lengths = tokenize(list(captions), model.cfg.text_tokens)
    tokens, lengths = tokens.to(device), lengths.to(device)
    guided = cfg_scale != 1.0
    if guided:
        tokens = torch.cat([tokens, torch.zeros_like(tokens)])
        lengths = torch.cat([lengths, torch.zeros_like(lengths)])
    x = initial_noise([seed + i for i in range(n)], (model.cfg.channels, *pixels), device)
    ts = timesteps(steps, shift)
    previous = model.attention
    model.set_attention(attention or dense_attention)
    try:
        for i in range(steps):
            inp = torch.cat([x, x]) if guided else x
            t = torch.full((inp.shape[0],), ts[i], device=device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                v = model(inp, t, tokens, lengths, step_idx=i).float()
            if guided:
                v = v[n:] + cfg_scale * (v[:n] - v[n:])
            x = x + (ts[i + 1] - ts[i]) * v
            if on_step is not None:
                on_step(i, x)
    finally:
        model.set_attention(previous)
    return x


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[n, 3, T, H, W]`` in [-1, 1] -> ``[n, T, H, W, 3]`` uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def frame_row(video: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """``columns`` evenly spaced frames of ``video [T, H, W, 3]`` side by side (white gaps)."""
    t = video.shape[0]
    picks = np.linspace(0, t - 1, min(columns, t)).round().astype(int)
    h, w = video.shape[1:3]
    row = np.full((h, len(picks) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for j, f in enumerate(picks):
        row[:, j * (w + gap): j * (w + gap) + w] = video[f]
    return row


def save_strip(path: str | Path, rows: Sequence[tuple[str, np.ndarray]], columns: int = 8, scale: float = 2.0) -> None:
    """PNG with one labelled row of frames per ``(label, video [T, H, W, 3])``; labels are wrapped."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [frame_row(v, columns) for _, v in rows]
    h, w = images[0].shape[:2]
    dpi = 100
    chars = max(20, int(w * scale / 5.2))
    labels = [textwrap.fill(label, chars) for label, _ in rows]
    lines = [label.count("\n") + 1 for label in labels]
    heights = [h * scale + 12 * n + 6 for n in lines]
    fig = plt.figure(figsize=(w * scale / dpi, sum(heights) / dpi), dpi=dpi)
    top = 1.0
    for label, img, height, n in zip(labels, images, heights, lines):
        frac = height / sum(heights)
        image_frac = h * scale / sum(heights)
        ax = fig.add_axes((0.0, top - frac, 1.0, image_frac))
        ax.imshow(img, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        fig.text(0.005, top - 0.002, label, fontsize=7.5, va="top", ha="left", family="monospace")
        top -= frac
    fig.savefig(str(path), dpi=dpi)
    plt.close(fig)


def save_gif(path: str | Path, videos: Sequence[np.ndarray], fps: float = 8.0, columns: int = 4, gap: int = 2) -> None:
    """Animated GIF tiling ``videos`` (each ``[T, H, W, 3]``, same size) in a grid."""
    import imageio.v2 as imageio

    n = len(videos)
    cols = min(columns, n)
    grid_rows = (n + cols - 1) // cols
    t, h, w = videos[0].shape[:3]
    frames = np.full((t, grid_rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, v in enumerate(videos):
        r, c = divmod(i, cols)
        frames[:, r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = v
    imageio.mimsave(str(path), list(frames), duration=1.0 / fps, loop=0)


def _ints(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="model.safetensors or a run folder")
    p.add_argument("--out", required=True, help="output folder (strip.png, samples.gif, videos.npz)")
    p.add_argument("--prompt", action="append", help="caption (repeatable); default: evaluation scenes")
    p.add_argument("--n", type=int, default=6, help="number of evaluation scenes when no --prompt")
    p.add_argument("--prompt-seed", type=int, default=PROMPT_SEED)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--shift", type=float, default=None, help="timestep shift (default: the one the model was trained with)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gif", action="store_true", help="also write samples.gif")
    p.add_argument("--attention", default="sdpa",
                   help="attention of every layer: sdpa (the model's own) or a spaattn method: dense, sparse, "
                        "rectified, rettention, rectified_rettention (needs the spaattn package)")
    p.add_argument("--sparsity", type=float, default=0.9, help="target sparsity of a spaattn method")
    p.add_argument("--block-size", type=int, default=128, help="block size of a spaattn method (64 or 128)")
    p.add_argument("--capture-layers", help="layers whose q/k/v to capture, e.g. 0,4,9")
    p.add_argument("--capture-steps", help="steps to capture at, e.g. 0,15,29")
    p.add_argument("--capture-items", default="0", help="batch items to keep (0..n-1 conditional, n..2n-1 not)")
    p.add_argument("--capture-heads", help="heads to keep, e.g. 0,2 (default: all)")
    p.add_argument("--capture-out", help="safetensors file for the captured q/k/v (default: OUT/qkv.safetensors)")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_model(args.ckpt, device=args.device)
    shift = trained_time_shift(meta) if args.shift is None else args.shift
    pixels = (args.frames, args.height, args.width)
    grid = model.token_grid(*pixels)
    if args.prompt:
        captions, references = list(args.prompt), None
    else:
        scenes = [scene_for(args.prompt_seed, i) for i in range(args.n)]
        captions = [s.caption for s in scenes]
        references = to_uint8(render(scenes, *pixels))
    attention: AttentionFn = dense_attention
    if args.attention != "sdpa":
        from .switch import SpaattnAttention

        attention = SpaattnAttention(args.attention, sparsity=args.sparsity, block_size=args.block_size,
                                     neighbours=False)
    capture = None
    if args.capture_layers or args.capture_steps:
        pairs = [(layer, step) for layer in _ints(args.capture_layers) for step in _ints(args.capture_steps)]
        heads = _ints(args.capture_heads) or None
        capture = CaptureAttention(attention, pairs, batch_items=_ints(args.capture_items), heads=heads)
        attention = capture
    n_video = grid[0] * grid[1] * grid[2]
    print(f"model step {meta.get('step')}, grid {grid} = {n_video} video tokens + {model.cfg.text_tokens} text tokens, "
          f"{args.steps} steps, cfg {args.cfg}, time shift {shift}, attention {args.attention}", flush=True)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    videos = to_uint8(sample(model, captions, pixels, args.steps, args.cfg, args.seed, shift, attention))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows: list[tuple[str, np.ndarray]] = []
    for i, caption in enumerate(captions):
        if references is not None:
            rows.append((f"{i}: reference render: {caption}", references[i]))
        rows.append((f"{i}: sample (seed {args.seed + i}): {caption}", videos[i]))
    save_strip(out / "strip.png", rows)
    np.savez_compressed(out / "videos.npz", videos=videos, captions=np.array(captions))
    if args.gif:
        save_gif(out / "samples.gif", list(videos))
    if capture is not None:
        capture.save(str(out / "qkv.safetensors") if not args.capture_out else args.capture_out,
                     {"captions": json.dumps(captions), "model_step": meta.get("step", "")})
    for i, caption in enumerate(captions):
        print(f"{i}: {caption}")
    print(f"sampled {len(captions)} videos in {seconds:.1f} s; wrote {out}", flush=True)


if __name__ == "__main__":
    main()
