"""Plot ``loss.csv`` of a run to a PNG (loss against step, smoothed, with the learning rate).

    PYTHONPATH=. python3 -m spaattn_testbed.plot_loss runs/main/loss.csv runs/main/loss.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_log(path: str | Path) -> dict[str, list[float]]:
    """Columns ``step``, ``loss``, ``lr``, ``train_seconds`` of a loss log as floats."""
    cols: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "train_seconds": []}
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            for key in cols:
                cols[key].append(float(row[key]))
    return cols


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (shorter at the ends)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half): i + half + 1]
        out.append(sum(part) / len(part))
    return out


def plot(log: str | Path, png: str | Path, title: str | None = None) -> None:
    """Write the loss curve of ``log`` to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_log(log)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(cols["step"], cols["loss"], color="tab:blue", alpha=0.3, lw=1, label="loss (per log interval)")
    window = max(1, len(cols["loss"]) // 15) | 1
    ax.plot(cols["step"], smooth(cols["loss"], window), color="tab:blue", lw=2, label=f"moving average of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss (MSE of velocity)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    lr_ax = ax.twinx()
    lr_ax.plot(cols["step"], cols["lr"], color="tab:orange", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right", fontsize=8)
    minutes = cols["train_seconds"][-1] / 60 if cols["train_seconds"] else 0.0
    ax.set_title(title or f"{Path(log).parent.name}: {int(cols['step'][-1])} steps, {minutes:.1f} min of training")
    fig.tight_layout()
    fig.savefig(str(png))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="loss.csv")
    p.add_argument("png", nargs="?", help="output PNG (default: loss.png beside the log)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    png = args.png or str(Path(args.log).with_name("loss.png"))
    plot(args.log, png, args.title)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
