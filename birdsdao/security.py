"""Request-level security: the API token for writes (without one configured, writes only from this machine
unless OPEN_WRITES), a cross-site check for browser posts, and the security headers every response carries."""
from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from urllib.parse import urlsplit, urlunsplit

from flask import current_app, request

from .errors import APIError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _presented_token() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    # request.form is parsed lazily; it is bounded by MAX_FORM_MEMORY_SIZE / MAX_FORM_PARTS.
    return request.form.get("token") or None


def has_valid_token() -> bool:
    expected = current_app.config["API_TOKEN"]
    presented = _presented_token()
    return bool(expected and presented and hmac.compare_digest(str(expected).encode(), presented.encode()))


def _is_local_client() -> bool:
    """The client is on this machine: a loopback address (after ProxyFix, the one nginx forwarded when
    PROXY_HOPS is set). With no trusted proxy configured, a request carrying forwarding headers is not local
    even from 127.0.0.1: that is a proxy speaking for someone else."""
    if not current_app.config["PROXY_HOPS"] and ("X-Forwarded-For" in request.headers
                                                     or "Forwarded" in request.headers):
        return False
    try:
        ip = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 from a [::] bind


def is_operator() -> bool:
    """The client may see what the server runs (software versions): the token holder or, with no token
    configured, a client on this machine: the same people who may write."""
    return has_valid_token() if current_app.config["API_TOKEN"] else _is_local_client()


def require_token(view):
    """Guard a state-changing route: when API_TOKEN is configured, the request must present it; when it is
    not, only clients on this machine may write (a server exposed without a token stays read-only to the
    world unless OPEN_WRITES says otherwise)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        config = current_app.config
        if config["API_TOKEN"]:
            if not has_valid_token():
                raise APIError(401, "unauthorized", "this route needs the API token (Authorization: Bearer <token>)")
        elif not config["OPEN_WRITES"] and not _is_local_client():
            raise APIError(403, "token_required", "this server takes changes from other machines only with an "
                           "API token; its operator can set BIRDSDAO_API_TOKEN")
        return view(*args, **kwargs)

    return wrapper


def _is_cross_site() -> bool:
    """True when a browser says the request comes from another site. Integrations (curl, scripts) send
    neither header and pass; so do browsers posting from our own page."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.host


def init_security(app) -> None:
    if not app.config["API_TOKEN"]:
        if app.config["OPEN_WRITES"]:
            log.warning("OPEN_WRITES without API_TOKEN: anyone who reaches this server can change its knowledge "
                        "bases and taught species")
        elif app.config["PROXY_HOPS"]:
            log.warning("behind a proxy without API_TOKEN: changes are refused to every client but this machine")

    @app.before_request
    def _refuse_cross_site_writes():
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and _is_cross_site() and not has_valid_token():
            raise APIError(403, "cross_site", "cross-site form posts are refused; send the API token instead")

    @app.after_request
    def _security_headers(response):
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        _relative_location(response)
        return response


def _relative_location(response) -> None:
    """Werkzeug's routing redirects (``//kb`` → ``/kb``, a missing trailing slash) are absolute URLs built
    from the request's Host header, which any client sets: an attacker's host would come back in our
    Location. The app redirects only within itself, so every redirect is sent as a path
    (one leading slash: ``//host`` would name a host again)."""
    location = response.headers.get("Location")
    if location:
        parts = urlsplit(location)
        if parts.scheme or parts.netloc:
            response.headers["Location"] = urlunsplit(("", "", "/" + parts.path.lstrip("/"), parts.query, parts.fragment))
