"""Log lines that an outsider can trigger at will are rate-limited per source.

A flood of refused handshakes or forbidden streams must not become a flood of log lines
(they hide real failures and fill disks): the first line for a key is written, repeats within
the window are counted, and the next line written for that key says how many were left out.
It also holds the node id that structured log lines (`--log-format json`) name.
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
        event = msg  # a structured line's event stays the same with or without the count
        if skipped:
            msg += " (%d more like this in the last %g s)"
            args = (*args, skipped, self._window_s)
        self._log.log(level, msg, *args, extra={"event": event})
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)


# Which node writes this process's log lines: the structured log format (`--log-format json`)
# puts it in every line. Set once the node knows its identity; "" before that.
_node_id = ""


def set_log_node(node_id: str) -> None:
    """Name the node in every structured log line from now on."""
    global _node_id
    _node_id = node_id


def log_node() -> str:
    """The node id structured log lines carry ("" until the node has its identity)."""
    return _node_id
