"""Log output: one JSON object per line (or readable text), and content-free error fields.

`configure_logging()` is called once by `voxgate serve`; embedding apps keep their own logging
and may use `JsonFormatter` in it. Log calls everywhere are a static message plus structured
fields (`extra=`): a JSON line is `{"ts", "level", "logger", "msg", ...the fields}`.
docs/privacy.md lists what the server logs.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any, Literal

from server.errors import VoiceServerError

LogFormat = Literal["json", "text"]

# attributes every LogRecord has: anything else on a record came in through `extra=`
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_ERROR_FRAMES = 5


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call passed with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, msg, the extra fields,
    and exc_type/exc (the traceback) when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = extra_fields(record)
        ts = datetime.fromtimestamp(record.created, UTC)
        entry.update(
            ts=ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            level=record.levelname.lower(),
            logger=record.name,
            msg=record.getMessage(),
        )
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # the traceback, if any, stays below
        pairs = " ".join(f"{k}={json.dumps(v, default=str, ensure_ascii=False)}" for k, v in fields.items())
        return f"{head} {pairs}{newline}{rest}"


def resolve_log_format(setting: Literal["auto", "json", "text"], is_tty: bool) -> LogFormat:
    """`auto`: text on a terminal, JSON otherwise (containers, systemd, log shippers)."""
    if setting == "auto":
        return "text" if is_tty else "json"
    return setting


def configure_logging(level: str, fmt: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record (uvicorn's too, when it runs with `log_config=None`) to `stream`
    (stderr) in `fmt`; replaces the root logger's handlers. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return handler


def error_fields(exc: BaseException, *, with_message: bool) -> dict[str, str]:
    """Log fields describing a failure without what it may quote: its type, where it was raised
    (the innermost frames, file:line function) and its message only when `with_message` or when
    it is one of Voxgate's own errors, whose messages name no user content. Exceptions from
    embedding code (a brain, an event handler) may carry what the caller said in their message."""
    frames = traceback.extract_tb(exc.__traceback__)[-_ERROR_FRAMES:]
    fields = {
        "error_type": type(exc).__name__,
        "error_at": " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames)),
    }
    if with_message or isinstance(exc, VoiceServerError):
        fields["error"] = str(exc)
    return fields
