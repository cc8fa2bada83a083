"""Gunicorn settings for model serving: ``gunicorn -c gunicorn.conf.py server:app``.

Each worker process holds its own copy of every model, so scale with threads, not processes. Every
setting can be overridden from the environment (GUNICORN_* below) or the command line (``--bind``).
"""
import os

# BLAS / torch thread pools are sized when the libraries load; set them before anything imports torch
# so the master and every worker agree, and two workers never oversubscribe the cores.
_threads = os.environ.get("BIRDSDAO_TORCH_THREADS") or str(max(1, (os.cpu_count() or 2)))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# One process holding the models; threads serve concurrent requests (the models release the GIL in
# native code, and each non-thread-safe model is guarded by its own lock).
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# A slow local LLM answer (or a streamed one) must not be killed as a hung worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = 30
keepalive = 5
# Models are loaded in each worker after the fork (preload off): torch/OpenMP thread pools and LiteRT
# interpreters created before fork() are not safe to use in the child.
preload_app = False
# Request-line and header limits (uploads are bounded by the app's MAX_CONTENT_LENGTH).
limit_request_line = 8190
limit_request_fields = 100
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Trust X-Forwarded-* only from the local nginx.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")


# Requests gunicorn refuses itself (bad request line, a URI past limit_request_line, too many or too large
# headers, malformed chunked bodies) get the API's JSON error shape instead of gunicorn's HTML page. gunicorn
# has no setting for that page; every such refusal goes through util.write_error, replaced here (the workers
# inherit it when they fork).
def _write_json_error(sock, status_int, reason, mesg):
    import json

    from gunicorn import util

    codes = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
             431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason,
                       "code": codes.get(status_int, "http_error")}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    util.write_nonblock(sock, head + body)


def _use_json_errors():
    from gunicorn import util

    util.write_error = _write_json_error


_use_json_errors()
