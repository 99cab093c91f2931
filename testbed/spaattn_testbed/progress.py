"""A small progress printer (no dependency): one updating line on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Prints ``step/total``, a bar, rates and the time left.

    On a terminal the line is redrawn in place at most every ``tty_interval`` seconds; on a pipe or
    file (as on a remote machine) a full line is printed every ``interval`` seconds.
    """

    def __init__(self, total: int, start: int = 0, interval: float = 15.0, tty_interval: float = 0.5,
                 stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval = tty_interval if self.tty else interval
        self.width = width
        self.t0 = time.monotonic()
        self.last = -float("inf")

    def line(self, step: int, fields: dict[str, str]) -> str:
        """The text shown for ``step``."""
        frac = min(1.0, step / max(self.total, 1))
        filled = int(round(frac * self.width))
        elapsed = time.monotonic() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"[{'#' * filled}{'.' * (self.width - filled)}] {step}/{self.total} {100 * frac:3.0f}%"]
        parts += [f"{k} {v}" for k, v in fields.items()]
        parts.append(f"{rate:.2f} it/s")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if eta == eta:
            parts.append(f"eta {format_seconds(eta)}")
        return " | ".join(parts)

    def update(self, step: int, force: bool = False, **fields: str) -> None:
        """Show the state at ``step`` if the interval has passed (or ``force``)."""
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        text = self.line(step, fields)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the in-place line on a terminal."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
