"""X-Request-ID: the request's own (nginx sets one) when it is a plain token, else a new one; sent back on
every response and written into every log line of that request (text, or JSON with LOG_FORMAT=json)."""
from __future__ import annotations

import json
import logging
import re
import uuid

from flask import g, has_request_context, request

_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,128}")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id`` ("-" outside a request) for handlers whose format names it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """LOG_FORMAT, with "-" for records that never met the filter (logged before the handler had it)."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return super().format(record)


def configure_logging(level: str, fmt: str) -> None:
    """A stderr handler in LOG_FORMAT (or JSON) with the request id, unless logging was set up already (pytest,
    an embedding program): then its handlers only gain the request-id filter."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(level)
    _add_filter(root)


def _add_filter(root: logging.Logger) -> None:
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


def init_app(app) -> None:
    @app.before_request
    def take_request_id():
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _TOKEN.fullmatch(given) else uuid.uuid4().hex

    @app.after_request
    def send_request_id(response):
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response

    _add_filter(logging.getLogger())
