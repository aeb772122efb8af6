"""Download progress: a bar per file on a terminal, plain periodic lines otherwise.

A bar (bytes, rate, ETA) redrawn in place is unreadable in a log file or a CI run, so when
stderr is not a TTY each file gets a start line, a line every few seconds, and an end line.
With structured logs (`--log-format json`) those lines are log records of a logger instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO

LINE_EVERY_S = 5.0
_to_log: logging.Logger | None = None


def log_lines(logger: logging.Logger | None) -> None:
    """Progress on stderr as `logger`'s INFO records (None: printed lines or a bar again)."""
    global _to_log
    _to_log = logger


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Progress of one file: `update(n)` per chunk, `close()` at the end."""

    def __init__(self, name: str, total: int, done: int = 0, stream: IO[str] | None = None,
                 tty: bool | None = None) -> None:
        self.name, self.total, self.done = name, total, done
        self.stream = stream or sys.stderr
        self._log = _to_log if stream is None else None
        self.tty = (self._log is None and self.stream.isatty()) if tty is None else tty
        self._start = time.monotonic()
        self._start_done = done
        self._last_line = self._start
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="B", unit_scale=True,
                             unit_divisor=1000, desc=name, file=self.stream, leave=True,
                             dynamic_ncols=True)
        else:
            resumed = f", resuming at {human(done)}" if done else ""
            self._line("%s: downloading %s%s", name, human(total), resumed)

    def _line(self, template: str, *args: object) -> None:
        if self._log is not None:
            self._log.info(template, *args)
        else:
            print(template % args, file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= LINE_EVERY_S:
            self._last_line = now
            rate = (self.done - self._start_done) / max(now - self._start, 1e-6)
            eta = _eta((self.total - self.done) / rate) if rate > 0 else "?"
            pct = 100 * self.done / self.total if self.total else 100
            self._line("%s: %.0f%% %s of %s, %s/s, ETA %s", self.name, pct, human(self.done),
                       human(self.total), human(rate), eta)

    def rewind(self, to: int) -> None:
        """The server ignored our range request: the file starts again from `to`."""
        if self._bar is not None:
            self._bar.reset(total=self.total)
            self._bar.update(to)
        self.done = self._start_done = to

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        took = time.monotonic() - self._start
        rate = (self.done - self._start_done) / max(took, 1e-6)
        self._line("%s: done, %s in %.1f s (%s/s)", self.name, human(self.done), took,
                   human(rate))
