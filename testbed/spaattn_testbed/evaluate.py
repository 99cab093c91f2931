"""Sparse attention in the trained model: every method and sparsity against full attention.

    PYTHONPATH=. python3 -m spaattn_testbed.evaluate --ckpt runs/main --out runs/main/eval

The same prompts and initial noise are sampled once with the model's own dense attention (torch
SDPA, the reference) and once per (method, sparsity) with every layer switched to spaattn
(``switch.SpaattnAttention``). For each run it reports:

- PSNR and SSIM of the videos against the reference videos (mean over prompts, ``metrics.py``);
- the attention error of every call against dense attention on the same q, k, v: relative L2
  and cosine, per (layer, step), and their means over layers and steps (``monitor.py``);
- the density: the share of (query, key) token pairs computed, mean over all calls (full-attention
  calls count 1), and the share of calls that ran full attention (Re-ttention's reference steps,
  dense warm-up steps);
- the attention time: all attention calls of a second, identical run with nothing else measured
  (no reference attention, no mask read-back), CUDA events around each call (both halves of
  guidance are one batch).

Files in ``--out``: ``eval.json`` (settings, rows, per-(layer, step) errors), ``eval.md`` (the
table), ``strip.png`` (frames of the first prompts, reference and each method at
``--strip-sparsity``), ``strip.gif``, ``error_vs_sparsity.png``, ``frontier.png`` (PSNR and SSIM
against the attention time of each run), ``layer_error.png`` (per-layer error over steps at
``--strip-sparsity``), ``videos.npz``; with ``--capture-layers`` and
``--capture-steps`` also the q/k/v of the reference run (``qkv.safetensors``, see
``attention.CaptureAttention``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .attention import CaptureAttention, dense_attention
from .checkpoint import load_model
from .metrics import psnr, ssim
from .monitor import AttentionMonitor, MonitorResults
from .sample import eval_prompts, sample, save_gif, save_strip, to_uint8, trained_time_shift
from .switch import METHODS, SpaattnAttention

REFERENCE = "sdpa"
"""Name of the reference run: the model's own dense attention (torch SDPA with a key padding mask)."""


@dataclass
class Run:
    """One sampling run of the evaluation."""

    method: str
    sparsity: float
    videos: torch.Tensor
    monitor: MonitorResults
    attention_ms: float = math.nan
    density: float = 1.0
    full_calls: int = 0
    psnr: float = math.nan
    ssim: float = math.nan
    seconds: float = 0.0
    per_prompt: dict = field(default_factory=dict)

    def row(self) -> dict:
        rel, cos = self.monitor.rel_l2, self.monitor.cos
        return {
            "method": self.method, "sparsity": self.sparsity,
            "psnr": None if math.isinf(self.psnr) else self.psnr, "ssim": self.ssim,
            "attn_rel_l2": None if rel is None else float(np.nanmean(rel)),
            "attn_cos": None if cos is None else float(np.nanmean(cos)),
            "density": self.density, "full_attention_calls": self.full_calls / max(self.monitor.calls, 1),
            "attention_ms": self.attention_ms, "calls": self.monitor.calls,
            "sample_seconds": self.seconds, **self.per_prompt,
        }


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="model.safetensors or a run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=8, help="prompts of the evaluation stream")
    p.add_argument("--prompt-seed", type=int, default=1)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default="dense,sparse,rectified,rettention,rectified_rettention",
                   help=f"comma-separated from {', '.join(METHODS)}")
    p.add_argument("--sparsities", default="0.75,0.85,0.9,0.95")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--precision", choices=("input", "fp8"), default="input",
                   help="the spaattn methods' GPU kernel operands (fp8: Hopper GPUs only)")
    p.add_argument("--p", type=float, default=0.3, help="cumulative pooled attention the kept blocks must exceed")
    p.add_argument("--dense-steps", type=int, default=0, help="first steps in full attention (every method)")
    p.add_argument("--ref-period", type=int, default=5, help="Re-ttention's reference period")
    p.add_argument("--neighbours", choices=("on", "off"), default="off",
                   help="add each block's 3D neighbour blocks to the selection (default off: on the 32x16x16 grid "
                        "they alone are 22%% of the blocks at block size 128, 13%% at 64, above what sparsity 0.9 keeps)")
    p.add_argument("--strip-sparsity", type=float, default=0.9)
    p.add_argument("--strip-prompts", type=int, default=2)
    p.add_argument("--capture-layers", help="layers whose q/k/v to capture in the reference run, e.g. 5")
    p.add_argument("--capture-steps", help="steps to capture at, e.g. 10,14")
    p.add_argument("--capture-items", default="0", help="batch items to keep (0..n-1 conditional)")
    p.add_argument("--capture-heads", help="heads to keep (default: all)")
    args = p.parse_args(argv)
    for m in args.methods.split(","):
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r} (expected {', '.join(METHODS)})")
    for s in _floats(args.sparsities) + [args.strip_sparsity]:
        if not 0 <= s < 1:
            p.error(f"--sparsities/--strip-sparsity: expected values in [0, 1), got {s}")
    if bool(args.capture_layers) != bool(args.capture_steps):
        p.error("--capture-layers and --capture-steps go together")
    # Checked before the runs, which take long: the outputs are written only at the end.
    for module, writes in (("matplotlib", "strip.png and the plots"), ("imageio", "strip.gif")):
        if importlib.util.find_spec(module) is None:
            p.error(f"{module} is not installed; the evaluation writes {writes} with it (pip install {module})")
    return args


def _run(model, captions, args, shift, attention, compare: bool) -> tuple[torch.Tensor, MonitorResults, float]:
    monitor = AttentionMonitor(attention, model.cfg.depth, args.steps, compare=compare)
    pixels = (args.frames, args.height, args.width)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    videos = sample(model, captions, pixels, args.steps, args.cfg, args.seed, shift, attention=monitor)
    results = monitor.results()
    return videos.float().cpu(), results, time.perf_counter() - start


def format_table(rows: list[dict]) -> str:
    """Markdown table of the rows of ``eval.json``."""
    lines = ["| method | sparsity | density | full-attn calls | PSNR dB | SSIM | attn rel L2 | attn cos | attention ms "
             "| vs dense |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    dense_ms = next((r["attention_ms"] for r in rows if r["method"] == "dense"), None)

    def num(v, fmt):
        return "-" if v is None else (fmt.format(v) if not (isinstance(v, float) and math.isnan(v)) else "-")

    for r in rows:
        speed = f"{dense_ms / r['attention_ms']:.2f}x" if dense_ms and r["attention_ms"] > 0 else "-"
        psnr_text = "inf" if r["psnr"] is None and r["method"] != REFERENCE else num(r["psnr"], "{:.2f}")
        lines.append(
            f"| {r['method']} | {r['sparsity']:.2f} | {r['density']:.3f} | {r['full_attention_calls']:.2f} | "
            f"{psnr_text} | {num(r['ssim'], '{:.4f}')} | {num(r['attn_rel_l2'], '{:.4f}')} | "
            f"{num(r['attn_cos'], '{:.5f}')} | {r['attention_ms']:.1f} | {speed} |")
    return "\n".join(lines)


def layer_table(runs: list[Run]) -> str:
    """Per layer, the attention error of each run (relative L2 against dense attention, mean over the
    sampler steps) as a share of plain block-sparse attention's at the same sparsity; the last
    columns give the largest share over the layers and the mean reduction (1 - mean share)."""
    sparse = {r.sparsity: r for r in runs if r.method == "sparse" and r.monitor.rel_l2 is not None}
    lines = []
    for r in runs:
        base = sparse.get(r.sparsity)
        if r.method in (REFERENCE, "dense", "sparse") or base is None or r.monitor.rel_l2 is None:
            continue
        share = np.nanmean(r.monitor.rel_l2, axis=1) / np.nanmean(base.monitor.rel_l2, axis=1)
        if not lines:
            cols = " | ".join(f"layer {i}" for i in range(len(share)))
            lines = [f"| method | sparsity | {cols} | largest | mean reduction |",
                     "| --- | ---: | " + " | ".join("---:" for _ in share) + " | ---: | ---: |"]
        cells = " | ".join(f"{v:.3f}" for v in share)
        lines.append(f"| {r.method} | {r.sparsity:.2f} | {cells} | {np.max(share):.3f} | "
                     f"{1 - np.mean(share):.1%} |")
    return "\n".join(lines)


def _plots(out: Path, runs: list[Run], strip_sparsity: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r.method for r in runs) if m not in (REFERENCE, "dense")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    panels = [("psnr", "PSNR vs full attention (dB)"), ("ssim", "SSIM vs full attention"),
              ("density", "achieved density (mean over calls)"),
              ("attn_rel_l2", "attention rel. L2 error (mean over layers, steps)"),
              ("attn_cos", "attention cosine (mean over layers, steps)"),
              ("attention_ms", "attention time per sampling run (ms)")]
    for ax, (key, title) in zip(axes.flat, panels):
        for m in methods:
            rows = sorted((r.row() for r in runs if r.method == m), key=lambda row: row["sparsity"])
            xs = [row["sparsity"] for row in rows]
            ys = [np.nan if row[key] is None else row[key] for row in rows]
            ax.plot(xs, ys, marker="o", label=m)
        for r in runs:
            if r.method in (REFERENCE, "dense") and key == "attention_ms":
                ax.axhline(r.attention_ms, ls="--", lw=1, color="grey" if r.method == "dense" else "black",
                           label=f"{r.method} (full attention)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("target sparsity")
        ax.grid(alpha=0.3)
        if key == "attn_rel_l2":
            ax.set_yscale("log")
    axes.flat[0].legend(fontsize=7)
    axes.flat[5].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error_vs_sparsity.png", dpi=110)
    plt.close(fig)

    # Speed and quality together: each method's runs (one per sparsity) by attention time.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, (key, title) in zip(axes, [("psnr", "PSNR vs full attention (dB)"), ("ssim", "SSIM vs full attention")]):
        for m in methods:
            rows = sorted((r.row() for r in runs if r.method == m), key=lambda row: row["attention_ms"])
            xs = [row["attention_ms"] for row in rows]
            ys = [np.nan if row[key] is None else row[key] for row in rows]
            ax.plot(xs, ys, marker="o", label=m)
            for x, y, row in zip(xs, ys, rows):
                ax.annotate(f"{row['sparsity']:.2f}", (x, y), fontsize=6, textcoords="offset points",
                            xytext=(3, 3))
        for r in runs:
            if r.method in (REFERENCE, "dense"):
                ax.axvline(r.attention_ms, ls="--", lw=1, color="grey" if r.method == "dense" else "black",
                           label=f"{r.method} (full attention)")
        ax.set_title(f"{title} against attention time (labels: target sparsity)", fontsize=9)
        ax.set_xlabel("attention time per sampling run (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    plt.close(fig)

    chosen = [r for r in runs if r.method in methods and abs(r.sparsity - strip_sparsity) < 1e-9]
    if not chosen:
        return
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.2), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], chosen):
        rel = r.monitor.rel_l2
        for layer in range(rel.shape[0]):
            ax.plot(np.arange(rel.shape[1]), rel[layer], lw=1, label=f"layer {layer}")
        ax.set_title(f"{r.method} @ {r.sparsity:.2f}", fontsize=9)
        ax.set_xlabel("sampler step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("attention rel. L2 vs dense")
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "layer_error.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model, meta = load_model(args.ckpt, device=device)
    shift = trained_time_shift(meta)
    captions = eval_prompts(args.n, args.prompt_seed)
    grid = model.token_grid(args.frames, args.height, args.width)
    n_video = grid[0] * grid[1] * grid[2]
    options = {"block_size": args.block_size, "p": args.p, "dense_steps": args.dense_steps,
               "ref_period": args.ref_period, "neighbours": args.neighbours == "on",
               "precision": args.precision}
    print(f"model step {meta.get('step')}, grid {grid} = {n_video} video + {model.cfg.text_tokens} text tokens, "
          f"{model.cfg.depth} layers x {model.cfg.heads} heads x {model.cfg.head_dim}, {args.n} prompts "
          f"(batch {2 * args.n} with guidance), {args.steps} steps, spaattn options {options}", flush=True)

    reference_attention = dense_attention
    capture = None
    if args.capture_layers:
        pairs = [(layer, step) for layer in _ints(args.capture_layers) for step in _ints(args.capture_steps)]
        capture = CaptureAttention(dense_attention, pairs, batch_items=_ints(args.capture_items),
                                   heads=_ints(args.capture_heads) or None)
        reference_attention = capture
    videos, results, seconds = _run(model, captions, args, shift, reference_attention, compare=False)
    # Timed in a second run, like every method: the first one also pays for warm-up (and capture).
    _, results, _ = _run(model, captions, args, shift, dense_attention, compare=False)
    reference = Run(REFERENCE, 0.0, videos, results, attention_ms=results.milliseconds, full_calls=results.calls,
                    seconds=seconds)
    runs = [reference]
    print(f"{REFERENCE}: attention {results.milliseconds:.1f} ms in {results.calls} calls, sampled in {seconds:.1f} s",
          flush=True)
    if capture is not None:
        capture.save(str(out / "qkv.safetensors"), {
            "captions": json.dumps([captions[i] for i in _ints(args.capture_items)]),
            "model_step": meta.get("step", ""), "sampler_steps": str(args.steps), "time_shift": str(shift),
            "source": "spaattn testbed model, reference (dense) run of spaattn_testbed.evaluate",
        })

    for method in args.methods.split(","):
        for sparsity in ([0.0] if method == "dense" else _floats(args.sparsities)):
            switch = SpaattnAttention(method, sparsity=sparsity, measure_density=True, **options)
            videos, results, seconds = _run(model, captions, args, shift, switch, compare=True)
            full = switch.kinds.get("dense", 0) + switch.kinds.get("reference", 0)
            density = float(np.mean(switch.densities))
            timed = SpaattnAttention(method, sparsity=sparsity, **options)
            timed_videos, timing, _ = _run(model, captions, args, shift, timed, compare=False)
            if not torch.equal(timed_videos, videos):
                print(f"note: {method} @ {sparsity}: the timing run's videos differ from the measured run's "
                      f"(max abs {float((timed_videos - videos).abs().max()):.3g})", flush=True)
            p_each, s_each = psnr(videos, reference.videos), ssim(videos, reference.videos)
            run = Run(method, sparsity, videos, results, attention_ms=timing.milliseconds, density=density,
                      full_calls=full, psnr=float(p_each.mean()), ssim=float(s_each.mean()), seconds=seconds,
                      per_prompt={"psnr_each": [None if math.isinf(v) else v for v in p_each.tolist()],
                                  "ssim_each": s_each.tolist()})
            runs.append(run)
            row = run.row()
            print(f"{method:>21} @ {sparsity:.2f}: PSNR {row['psnr'] if row['psnr'] is not None else math.inf:.2f} "
                  f"SSIM {row['ssim']:.4f} attn rel L2 {row['attn_rel_l2']:.4f} cos {row['attn_cos']:.5f} "
                  f"density {density:.3f} full {row['full_attention_calls']:.2f} attention {timing.milliseconds:.1f} ms "
                  f"({seconds:.1f} s)", flush=True)

    rows = [r.row() for r in runs]
    table = format_table(rows)
    settings = {"ckpt": str(args.ckpt), "model_step": meta.get("step"), "grid": grid, "n_text": model.cfg.text_tokens,
                "prompts": captions, "steps": args.steps, "cfg": args.cfg, "seed": args.seed, "time_shift": shift,
                "spaattn": options, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    per_layer = {f"{r.method}@{r.sparsity:.2f}": {"rel_l2": np.nan_to_num(r.monitor.rel_l2, nan=-1).tolist(),
                                                   "cos": np.nan_to_num(r.monitor.cos, nan=-1).tolist()}
                 for r in runs if r.monitor.rel_l2 is not None}
    (out / "eval.json").write_text(json.dumps({"settings": settings, "rows": rows, "per_layer_step": per_layer},
                                              indent=1))
    layers = layer_table(runs)
    (out / "eval.md").write_text(table + "\n\nPer-layer attention error as a share of plain sparse attention's:\n\n"
                                 + layers + "\n")
    np.savez_compressed(out / "videos.npz", **{f"{r.method}@{r.sparsity:.2f}": to_uint8(r.videos) for r in runs})

    strip_runs = [reference] + [r for r in runs if r.method != REFERENCE and
                                (r.method == "dense" or abs(r.sparsity - args.strip_sparsity) < 1e-9)]
    strip_rows = []
    for i in range(min(args.strip_prompts, len(captions))):
        for r in strip_runs:
            label = ("full attention (SDPA)" if r.method == REFERENCE else
                     f"{r.method} @ sparsity {r.sparsity:.2f}: PSNR {r.psnr:.1f} dB, SSIM {r.ssim:.3f}")
            strip_rows.append((f"{i}: {label}" + (f": {captions[i]}" if r.method == REFERENCE else ""),
                               to_uint8(r.videos[i:i + 1])[0]))
    save_strip(out / "strip.png", strip_rows)
    save_gif(out / "strip.gif", [to_uint8(r.videos[0:1])[0] for r in strip_runs], columns=len(strip_runs))
    _plots(out, runs, args.strip_sparsity)
    print(table)
    print(layers)
    print(f"wrote {out}")
    return {"rows": rows, "settings": settings}


if __name__ == "__main__":
    main()
