"""How much a trained model uses its caption: flow loss with and without it, per timestep.

    PYTHONPATH=. python3 -m spaattn_testbed.probe --ckpt runs/main

For the first ``--n`` scenes of the evaluation stream (seed 1), rendered at ``--frames x --height x
--width``, and each ``t`` of ``--times``, the noisy input ``x_t = (1 - t) x_0 + t noise`` (fixed noise,
drawn on the CPU from ``--seed + i`` for scene ``i``, the same for every ``t``) goes through the model
twice: with the true caption and with the caption dropped (tokens 0, text length 0, as in training's
caption dropping). A row per ``t`` gives the flow loss (MSE of the predicted velocity against
``noise - x_0``, as ``train.flow_loss``) of both, their gap, and the mean square of ``v_cond - v_uncond``.
A model that ignores its caption has a gap and a velocity difference near zero.
"""

from __future__ import annotations

import argparse

import torch

from .checkpoint import load_model
from .data import make_batch


@torch.no_grad()
def probe(model, n: int = 64, times=(1.0, 0.97, 0.9, 0.7, 0.5), pixels=(32, 64, 64), batch: int = 16,
          seed: int = 0, prompt_seed: int = 1) -> list[dict]:
    """Per ``t``: ``loss_with``, ``loss_without``, ``gap`` and ``v_diff`` (mean square), averaged over scenes."""
    device = next(model.parameters()).device
    autocast = device.type == "cuda"
    sums = {t: torch.zeros(3, dtype=torch.float64) for t in times}
    for lo in range(0, n, batch):
        idx = list(range(lo, min(n, lo + batch)))
        data = make_batch(prompt_seed, idx, pixels, device=device, text_tokens=model.cfg.text_tokens)
        x0 = data.video
        noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed + i))
                             for i in idx]).to(device)
        target = noise - x0
        tokens = torch.cat([data.tokens, torch.zeros_like(data.tokens)])
        lengths = torch.cat([data.text_lengths, torch.zeros_like(data.text_lengths)])
        b = len(idx)
        for t in times:
            xt = (1 - t) * x0 + t * noise
            tt = torch.full((2 * b,), float(t), device=device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                v = model(torch.cat([xt, xt]), tt, tokens, lengths).float()
            v_cond, v_uncond = v[:b], v[b:]
            per = lambda e: e.pow(2).flatten(1).mean(1).sum().double().cpu()  # noqa: E731  (sum over items)
            sums[t] += torch.stack([per(v_cond - target), per(v_uncond - target), per(v_cond - v_uncond)])
    rows = []
    for t in times:
        w, wo, d = (sums[t] / n).tolist()
        rows.append({"t": t, "loss_with": w, "loss_without": wo, "gap": wo - w, "v_diff": d})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="model.safetensors or a run folder")
    p.add_argument("--n", type=int, default=64, help="evaluation scenes")
    p.add_argument("--times", default="1.0,0.97,0.9,0.7,0.5")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=16, help="scenes per forward (each runs twice: with and without)")
    p.add_argument("--seed", type=int, default=0, help="noise of scene i from seed + i")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    model, meta = load_model(args.ckpt, device=args.device)
    times = tuple(float(v) for v in args.times.split(","))
    pixels = (args.frames, args.height, args.width)
    rows = probe(model, args.n, times, pixels, args.batch, args.seed)
    print(f"model step {meta.get('step')}, {args.n} evaluation scenes at {'x'.join(map(str, pixels))}, "
          f"device {args.device}")
    print(f"{'t':>5} {'loss_with':>10} {'loss_without':>12} {'gap':>10} {'ms(v_cond-v_uncond)':>20}")
    for r in rows:
        print(f"{r['t']:5.2f} {r['loss_with']:10.5f} {r['loss_without']:12.5f} {r['gap']:10.5f} {r['v_diff']:20.3e}")
    return rows


if __name__ == "__main__":
    main()
