"""A dependency-free progress bar for long work (precompiling many kernels)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()

    def step(self, note: str = "") -> None:
        self.done += 1
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = time.perf_counter() - self.start
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {elapsed:5.1f}s {note[:60]:60s}")
        self.stream.write(line)
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()
