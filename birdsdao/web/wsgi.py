"""WSGI-level care of the connection, below Flask: a request body the app answered without reading is read
to its end after the answer, so a keep-alive connection (nginx's pooled upstream ones) stays usable; and a
check that a request's client is still there, so long work for one that hung up can stop."""
from __future__ import annotations

import logging
import select
import socket

log = logging.getLogger(__name__)

_DRAIN_BLOCK = 1 << 16
_DRAIN_TIMEOUT_S = 10.0  # a client that announced a body and sends none must not hold the thread


class DrainUnreadBody:
    """After every answer, read what is left of the request body (at most ``limit`` bytes).

    A 401 / 404 / 405 / 413 is answered before its body is read. gunicorn then drains only 64 KiB itself and
    otherwise closes the connection, after it has answered "Connection: keep-alive": nginx puts that upstream
    connection back in its pool and the next request sent on it, often another user's, gets a 502. Reading
    the rest here (after the answer went out, so the client does not wait for it) keeps the connection
    usable. A body larger than ``limit`` is left to gunicorn, which closes the connection."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    def __call__(self, environ, start_response):
        result = self.app(environ, start_response)
        if not self._worth_draining(environ):
            return result
        return _ThenDrain(result, environ["wsgi.input"], self.limit, environ.get("gunicorn.socket"))

    def _worth_draining(self, environ) -> bool:
        """A body is announced and not past the limit (nginx refuses larger ones; a direct client sending
        one is answered 413 and its connection closed by gunicorn, no need to read it)."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        return 0 < length <= self.limit or environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"


class _ThenDrain:
    """The app's response iterable; its ``close()`` (called by the server after the last byte) drains."""

    def __init__(self, result, stream, limit: int, sock=None):
        self._result = result
        self._stream = stream
        self._limit = limit
        self._sock = sock

    def __iter__(self):
        return iter(self._result)

    def close(self):
        try:
            if hasattr(self._result, "close"):
                self._result.close()
        finally:
            if self._sock is not None:
                try:
                    self._sock.settimeout(_DRAIN_TIMEOUT_S)  # gthread leaves it blocking with no timeout
                except OSError:
                    return  # already closed: nothing to drain
            drain(self._stream, self._limit)


def drain(stream, limit: int) -> int:
    """Read and drop up to ``limit`` bytes of ``stream``; the number read. A broken or closed body stops it."""
    read = 0
    try:
        while read < limit:
            block = stream.read(min(_DRAIN_BLOCK, limit - read))
            if not block:
                break
            read += len(block)
    except Exception as exc:  # noqa: BLE001 - a malformed or abandoned body: the server closes the connection
        log.debug("request body not drained: %r", exc)
    return read


def client_gone(environ):
    """A function telling whether the client of this request has closed its connection (behind nginx: the
    client hung up and nginx closed ours). Always False where the server does not expose its socket."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # Readable with nothing to read is the peer's close (a pipelined next request would be data).
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # reset, or already closed
            return True

    return gone
