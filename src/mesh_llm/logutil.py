"""Log lines that an outsider can trigger at will are rate-limited per source.

A flood of refused handshakes or forbidden streams must not become a flood of log lines
(they hide real failures and fill disks): the first line for a key is written, repeats within
the window are counted, and the next line written for that key says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW_S = 60.0
MAX_KEYS = 4096


class RateLimitedLog:
    """One line per key per `window_s`; a bounded number of keys are remembered."""

    def __init__(self, logger: logging.Logger, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self._log = logger
        self._window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key → (last, left out)

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless `key` was logged within the window; True if written."""
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        skipped = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        if skipped:
            msg += f" ({skipped} more like this in the last {self._window_s:g} s)"
        self._log.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)
