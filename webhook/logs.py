"""Logging: one JSON object per line in production, plain lines in development; ids and states, never secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, TextIO

from flask import Flask, g, has_request_context, request

# Extra fields a log call may carry (logger.info(..., extra={"event": 12, "state": "applied"})).
FIELDS = ("request_id", "source", "event", "state", "correlation_id", "status")
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")  # what routers send; anything else is replaced
# What a terminal or a log reader would obey rather than show: C0 and C1 controls, DEL, and the Unicode line
# separators and bidirectional overrides (which reorder what a terminal or an editor shows).
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape(text: str) -> str:
    """Show control characters escaped (\\x1b, \\u202e), so that text from senders cannot drive the operator's
    terminal or forge a log line."""
    return CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                          else f"\\u{ord(m.group()):04x}", text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message and the known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single JSON line."""
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class PlainFormatter(logging.Formatter):
    """Formats a record as a readable line with the known extra fields appended as key=value; control characters in
    the message and the fields are shown escaped, so that one record is always one line (plus its traceback)."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line (plus a traceback when there is one)."""
        extras = " ".join(f"{n}={escape(str(getattr(record, n)))}" for n in FIELDS
                          if getattr(record, n, None) is not None)
        record.message = escape(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if extras:
            line = f"{line} [{extras}]"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join(escape(part) for part in trace.splitlines())
        return line


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to records logged while a request is being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach request_id when inside a request; never drop a record."""
        if getattr(record, "request_id", None) is None and has_request_context():
            record.request_id = g.get("request_id")
        return True


def configure(fmt: str, level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send the service's logs to stdout (or stream) in the given format ("json" or "plain"), once per process."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_webhook", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler._webhook = True  # type: ignore[attr-defined]
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root.setLevel(level.upper())


def init_app(app: Flask) -> None:
    """Give every request an id: the router's X-Request-Id when it sets one, else a fresh one; echo it back."""

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex

    @app.after_request
    def _echo(response: Any) -> Any:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        return response
