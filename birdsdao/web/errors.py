"""The one JSON error handler: APIError and every HTTPException become ``{"error": ..., "code": ...}``."""
from __future__ import annotations

import errno
import sys

from flask import current_app, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import APIError

# Werkzeug's own exceptions mapped to the contract's machine words.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

# The instance folder cannot take a write: answered as the server's state (507 / 503), not as a bug (500).
# Every store writes a new file and renames it into place, so a refused write leaves what was stored intact.
_STORAGE_ERRORS = {
    errno.ENOSPC: (507, "storage_full", "the server's disk is full; nothing was changed (ask its operator)"),
    errno.EDQUOT: (507, "storage_full", "the server's disk quota is used up; nothing was changed (ask its operator)"),
    errno.EROFS: (503, "storage_read_only", "the server's data folder is read-only; nothing was changed (ask its operator)"),
}


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    response = jsonify({"error": message, "code": code})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register_error_handlers(app) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        return error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        known = _known_failure(exc)
        if known is not None:
            return known
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")


def _causes(exc: BaseException):
    """``exc`` and what it was raised from or during (stores may wrap the OSError that stopped them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _known_failure(exc: Exception):
    """A JSON answer for failures that are not bugs: a full or read-only disk, a malformed request body that
    the WSGI server only noticed while the app read it (gunicorn's chunked/length parse errors)."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRORS:
            status, code, message = _STORAGE_ERRORS[cause.errno]
            current_app.logger.error("write refused by the instance disk: %s", cause)
            return error_response(status, code, message, {"Retry-After": "60"} if status == 503 else None)
        if _database_down(cause):
            current_app.logger.error("database unavailable: %r", cause)
            return error_response(503, "database_unavailable",
                                  "the database is unavailable; try again soon (nothing was changed)", {"Retry-After": "5"})
        # Matched by module, not imported: the app runs under any WSGI server (and tests without gunicorn).
        # gunicorn marks such a body failed and closes the connection after this answer.
        if type(cause).__module__ == "gunicorn.http.errors":
            return error_response(400, "bad_request", f"malformed request body ({type(cause).__name__})")
    return None


def _database_down(exc: BaseException) -> bool:
    """psycopg's connection failures (server gone, restarting, refusing) and the pool's wait running out:
    the PostgreSQL store's state, answered 503 like the job queue's, not a bug. Looked up only when psycopg
    was loaded (the file store never loads it)."""
    psycopg, pool = sys.modules.get("psycopg"), sys.modules.get("psycopg_pool")
    return bool((psycopg is not None and isinstance(exc, psycopg.OperationalError))
                or (pool is not None and isinstance(exc, pool.PoolTimeout)))
