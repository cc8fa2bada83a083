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


def configure_logging(level: str, fmt: str) -> None:
    """The root logger's format (text with the request id, or JSON), unless logging was set up already."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


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

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
