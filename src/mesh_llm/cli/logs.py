"""Where the node's log lines go and what they look like: human-readable lines (the default)
or, with `--log-format json`, one JSON object per line for log shippers.

A JSON line is `{"time", "level", "node", "event", "fields", "logger", "message"}`:
`event` is the line's message template as written in the source (`"peer %s %s"`), stable
across lines of one kind, so a query can select them without parsing text; `fields` are
the values that fill it, in order; `message` is the line as the text format shows it.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import traceback
from typing import Any

from ..logutil import log_node
from ..models.progress import log_lines

LOG_FORMATS = ("text", "json")
LOGGER = "mesh_llm"
WEB_LOGGER = "aiohttp"  # aiohttp's own reports: bad requests from the network are routine


def _plain(value: object) -> Any:
    """A log argument as JSON can carry it: numbers, strings, booleans and None as they are,
    lists and dicts element by element, anything else as its str()."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonLineFormatter(logging.Formatter):
    """One log record → one JSON object on one line (newlines in a message are escaped)."""

    def __init__(self, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        fields = _plain(args if isinstance(args, dict) else list(args or ()))
        event = getattr(record, "event", None)
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "node": log_node() or None,
            "event": event if isinstance(event, str) else str(record.msg),
            "fields": fields,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.tracebacks and record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_info and record.exc_info[1] is not None:
            line["exception"] = repr(record.exc_info[1])  # the error, without its traceback
        if self.tracebacks and record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class _OneLine(logging.Formatter):
    """Text lines without tracebacks (aiohttp's, unless --verbose)."""

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return ""

    def formatStack(self, stack_info: str) -> str:
        return ""


def _handler(formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    return handler


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    """Our loggers at INFO (DEBUG with --verbose), aiohttp's at WARNING, to stderr.

    With "json" every other logger (asyncio's, qh3's, Python's warnings) and download
    progress lines are JSON lines too, and an uncaught exception is one last JSON line, so
    nothing the node writes to stderr is anything else."""
    level = logging.DEBUG if verbose else logging.INFO
    structured = log_format == "json"
    if structured:
        ours = _handler(JsonLineFormatter())
        web = _handler(JsonLineFormatter(tracebacks=verbose))
    else:
        ours = _handler(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))
        web = _handler(ours.formatter if verbose else  # type: ignore[arg-type]
                       _OneLine("%(asctime)s  %(name)s: %(message)s", "%H:%M:%S"))
    for name, handler, lvl in ((LOGGER, ours, level),
                               (WEB_LOGGER, web, level if verbose else logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(lvl)
        logger.propagate = False
    log_lines(logging.getLogger(f"{LOGGER}.download") if structured else None)
    if structured:
        root = logging.getLogger()
        root.handlers[:] = [_handler(JsonLineFormatter())]
        root.setLevel(logging.WARNING)
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], err: BaseException, tb: Any) -> None:
    logging.getLogger(LOGGER).critical("uncaught %s: %s", kind.__name__, err,
                                       exc_info=(kind, err, tb))
