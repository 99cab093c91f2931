"""Rectified-flow training of ``VideoDiT`` on the procedural video stream, in resumable calls.

    PYTHONPATH=. python3 -m spaattn_testbed.train --out runs/main --minutes 8

Each call trains until ``--minutes`` (counted from the start of the process, saving included) or
``--steps`` or ``--total-steps`` is reached, then saves ``model.safetensors``, the training state
and appends to ``loss.csv`` (see ``checkpoint.py``). A call on a folder that holds a state resumes
from it: the step counter, weights and AdamW moments are restored, and since every batch (scenes,
grid, timesteps, noise, caption dropping) is a function of ``(seed, step)`` the data stream goes on
exactly where it stopped. Model options apply to fresh runs only; a resumed run keeps its config.

Objective: ``x_t = (1 - t) x_0 + t noise``, the model predicts ``noise - x_0``; ``t`` is logit-normal,
shifted towards noise by ``--time-shift`` (``model.shift_time``; the sampler reads the value from the
model file and spaces its steps with it); 10% of captions are dropped (length 0) for classifier-free
guidance. Learning rate: linear warm-up, constant, then linear cool-down over the last ``--cooldown``
fraction of ``--total-steps``.
"""

from __future__ import annotations

import time

_PROCESS_START = time.monotonic()

import argparse
import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import MODEL_FILE, load_train_state, read_train_info, save_model, save_train_state
from .data import Batch, make_batch
from .model import TIME_SHIFT, ModelConfig, VideoDiT, count_parameters, shift_time
from .progress import Progress, format_seconds

LOG_COLUMNS = ("step", "loss", "lr", "samples", "video_tokens", "train_seconds", "steps_per_s", "tokens_per_s")


@dataclass(frozen=True)
class GridSpec:
    """Pixel size of the clips of one training shape, its batch size and how often it is drawn."""

    frames: int
    height: int
    width: int
    batch: int
    weight: float = 1.0

    @property
    def pixels(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width


def parse_grids(text: str) -> list[GridSpec]:
    """``"16x64x64:32@0.6,32x64x64:16@0.4"`` -> specs (frames x height x width : batch @ weight)."""
    specs = []
    for item in text.split(","):
        head, _, weight = item.strip().partition("@")
        size, _, batch = head.partition(":")
        f, h, w = (int(v) for v in size.split("x"))
        specs.append(GridSpec(f, h, w, int(batch or 1), float(weight or 1.0)))
    return specs


@dataclass
class TrainConfig:
    """Hyperparameters of a training call (given again at every call)."""

    seed: int = 0
    grids: str = "16x64x64:32@0.6,32x64x64:16@0.4"
    lr: float = 5e-4
    warmup: int = 300
    total_steps: int = 5000
    cooldown: float = 0.2
    final_lr: float = 0.05
    weight_decay: float = 0.01
    beta2: float = 0.99
    grad_clip: float = 1.0
    cfg_drop: float = 0.1
    time_shift: float = TIME_SHIFT


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): warm-up, constant, linear cool-down to ``final_lr * lr``."""
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    cool_start = cfg.total_steps * (1.0 - cfg.cooldown)
    if step < cool_start:
        return cfg.lr * warm
    frac = min(1.0, (step - cool_start) / max(cfg.total_steps - cool_start, 1.0))
    return cfg.lr * warm * (1.0 - frac * (1.0 - cfg.final_lr))


def _stream_seed(seed: int, step: int, salt: str) -> int:
    return random.Random(f"{salt}:{seed}:{step}").getrandbits(62)


def grid_for_step(step: int, cfg: TrainConfig) -> GridSpec:
    """The clip shape used at ``step``, drawn by weight from ``(seed, step)``."""
    grids = parse_grids(cfg.grids)
    if len(grids) == 1:
        return grids[0]
    return random.Random(_stream_seed(cfg.seed, step, "grid")).choices(grids, weights=[g.weight for g in grids])[0]


@dataclass
class StepInputs:
    """Everything that enters the loss at one step."""

    batch: Batch
    t: torch.Tensor
    noise: torch.Tensor


def step_inputs(step: int, cfg: TrainConfig, device: torch.device) -> StepInputs:
    """Batch, timesteps and noise of ``step``; a pure function of ``(cfg.seed, step)``."""
    grid = grid_for_step(step, cfg)
    indices = [step * 4096 + i for i in range(grid.batch)]
    batch = make_batch(cfg.seed, indices, grid.pixels, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(_stream_seed(cfg.seed, step, "noise"))
    b = grid.batch
    t = shift_time(torch.sigmoid(torch.randn(b, generator=gen, device=device)), cfg.time_shift)
    drop = torch.rand(b, generator=gen, device=device) < cfg.cfg_drop
    noise = torch.randn(batch.video.shape, generator=gen, device=device)
    batch.text_lengths = torch.where(drop, torch.zeros_like(batch.text_lengths), batch.text_lengths)
    batch.tokens = torch.where(drop[:, None], torch.zeros_like(batch.tokens), batch.tokens)
    return StepInputs(batch=batch, t=t, noise=noise)


def flow_loss(model: torch.nn.Module, inputs: StepInputs, autocast: bool) -> torch.Tensor:
    """Mean squared error of the predicted velocity ``noise - x_0`` at ``x_t``."""
    x0, noise = inputs.batch.video, inputs.noise
    t = inputs.t.view(-1, 1, 1, 1, 1)
    xt = (1 - t) * x0 + t * noise
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = model(xt, inputs.t, inputs.batch.tokens, inputs.batch.text_lengths)
    return F.mse_loss(pred.float(), noise - x0)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (fused on CUDA)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, cfg.beta2), fused=fused,
    )


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig,
               device: torch.device, forward: torch.nn.Module | None = None) -> torch.Tensor:
    """One optimizer step at ``step``; returns the loss (a device tensor, no sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    inputs = step_inputs(step, cfg, device)
    loss = flow_loss(forward or model, inputs, autocast=device.type == "cuda")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach()


class LossLog:
    """Accumulates step losses on the device (no sync per step) into ``loss.csv`` rows."""

    def __init__(self, path: Path, device: torch.device, seconds_before: float) -> None:
        self.path = path
        self.seconds_before = seconds_before
        self.call_start = time.monotonic()
        self.total = torch.zeros((), device=device)
        self.rows: list[dict] = []
        self.last_loss = float("nan")
        self._reset()

    def _reset(self) -> None:
        self.total.zero_()
        self.steps, self.tokens = 0, 0
        self.start = time.monotonic()

    def add(self, loss: torch.Tensor, video_tokens: int) -> None:
        self.total += loss
        self.steps += 1
        self.tokens += video_tokens

    def seconds(self) -> float:
        """Training seconds of the whole run so far."""
        return self.seconds_before + time.monotonic() - self.call_start

    def close_interval(self, step: int, lr: float, samples: int, video_tokens: int) -> float:
        """Turn the steps since the last row into a row; returns the seconds per step of the interval."""
        if self.steps == 0:
            return 0.0
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.last_loss = self.total.item() / self.steps
        self.rows.append({
            "step": step, "loss": f"{self.last_loss:.5f}", "lr": f"{lr:.3e}", "samples": samples,
            "video_tokens": video_tokens, "train_seconds": f"{self.seconds():.1f}",
            "steps_per_s": f"{self.steps / elapsed:.3f}", "tokens_per_s": f"{self.tokens / elapsed:.0f}",
        })
        per_step = elapsed / self.steps
        self._reset()
        return per_step

    def flush(self) -> None:
        """Append the pending rows to the CSV file (header on a new file)."""
        if not self.rows:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(self.rows)
        self.rows = []


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder: checkpoint, training state, loss.csv")
    p.add_argument("--resume", help="run folder to resume from (default: --out when it holds a state)")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of this call, saving included")
    p.add_argument("--steps", type=int, default=None, help="at most this many steps in this call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (optional)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--moments", choices=("bf16", "fp32"), default="bf16", help="dtype of saved AdamW moments")
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between intermediate saves")
    p.add_argument("--log-every", type=int, default=25, help="steps per loss.csv row")
    d = TrainConfig()
    for name, value in vars(d).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    m = ModelConfig()
    p.add_argument("--width", type=int, default=m.width)
    p.add_argument("--depth", type=int, default=m.depth)
    p.add_argument("--heads", type=int, default=m.heads)
    p.add_argument("--mlp-hidden", type=int, default=m.mlp_hidden)
    p.add_argument("--patch", default="x".join(map(str, m.patch)), help="patch size t x h x w")
    p.add_argument("--rope-split", default=",".join(map(str, m.rope_split)), help="head-dim parts for t,h,w")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run one training call; returns a summary (also printed)."""
    args = _parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = TrainConfig(**{k: getattr(args, k) for k in vars(TrainConfig())})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(args.resume) if args.resume else out
    info = read_train_info(source)

    if info is not None:
        model_cfg = ModelConfig.from_dict(info["config"])
    else:
        model_cfg = ModelConfig(width=args.width, depth=args.depth, heads=args.heads, mlp_hidden=args.mlp_hidden,
                                patch=tuple(int(v) for v in args.patch.split("x")),
                                rope_split=tuple(int(v) for v in args.rope_split.split(",")))
    torch.manual_seed(cfg.seed)
    model = VideoDiT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    step, samples, tokens, train_seconds = 0, 0, 0, 0.0
    if info is not None:
        load_train_state(source, model, optimizer)
        step, samples = int(info["step"]), int(info["samples"])
        tokens, train_seconds = int(info["video_tokens"]), float(info["train_seconds"])
        print(f"resuming from {source} at step {step} ({format_seconds(train_seconds)} trained)", flush=True)
    else:
        print(f"fresh run in {out}", flush=True)
    n_params = count_parameters(model)
    print(f"model: {n_params / 1e6:.2f}M parameters ({n_params * 2 / 2**20:.1f} MiB in bf16), width {model_cfg.width}, "
          f"depth {model_cfg.depth}, heads {model_cfg.heads} x {model_cfg.head_dim}, patch {model_cfg.patch}", flush=True)
    grids = ", ".join(f"{g.frames}x{g.height}x{g.width} batch {g.batch} weight {g.weight} "
                      f"({math.prod(model.token_grid(*g.pixels))} video tokens)" for g in parse_grids(cfg.grids))
    print(f"grids: {grids}; device {device}", flush=True)

    forward = torch.compile(model) if args.compile else model
    model.train()
    budget = args.minutes * 60.0
    last_target = cfg.total_steps if args.steps is None else min(cfg.total_steps, step + args.steps)
    progress = Progress(total=cfg.total_steps, start=step)
    log = LossLog(out / "loss.csv", device, train_seconds)
    first_step, first_samples, first_tokens = step, samples, tokens
    last_save, step_time = time.monotonic(), 0.0

    def save() -> None:
        info = {"step": step, "samples": samples, "video_tokens": tokens,
                "train_seconds": round(log.seconds(), 1), "train_config": vars(cfg)}
        save_train_state(out, model, optimizer, info, torch.bfloat16 if args.moments == "bf16" else torch.float32)
        save_model(model, out / MODEL_FILE, step, {"train_config": json.dumps(vars(cfg)), "samples": str(samples)})
        log.flush()

    while step < last_target:
        if time.monotonic() - _PROCESS_START + 2.0 * step_time + 15.0 > budget:
            break
        grid = grid_for_step(step, cfg)
        loss = train_step(model, optimizer, step, cfg, device, forward)
        step += 1
        n_tok = grid.batch * math.prod(model.token_grid(*grid.pixels))
        samples += grid.batch
        tokens += n_tok
        log.add(loss, n_tok)
        if step % args.log_every == 0:
            step_time = log.close_interval(step, lr_at(step - 1, cfg), samples, tokens)
            progress.update(step, loss=f"{log.last_loss:.4f}", lr=f"{lr_at(step - 1, cfg):.2e}")
        elif step_time == 0.0 and step - first_step >= 2:
            step_time = (time.monotonic() - log.call_start) / (step - first_step)
        if time.monotonic() - last_save > args.save_every * 60.0:
            save()
            last_save = time.monotonic()
    log.close_interval(step, lr_at(step - 1, cfg), samples, tokens)
    progress.update(step, force=True, loss=f"{log.last_loss:.4f}")
    progress.close()
    call_seconds = time.monotonic() - log.call_start
    save()
    seconds = max(call_seconds, 1e-9)
    summary = {
        "step": step, "steps_this_call": step - first_step, "seconds": round(call_seconds, 1),
        "steps_per_s": round((step - first_step) / seconds, 3),
        "samples_per_s": round((samples - first_samples) / seconds, 1),
        "video_tokens_per_s": round((tokens - first_tokens) / seconds),
        "loss": log.last_loss,
    }
    if device.type == "cuda":
        summary["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()), flush=True)
    print(f"saved {out / MODEL_FILE} at step {step}; total {format_seconds(train_seconds + call_seconds)} trained", flush=True)
    return summary


if __name__ == "__main__":
    main()
