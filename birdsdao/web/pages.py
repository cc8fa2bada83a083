"""The two HTML pages, the liveness check (/healthz) and the readiness check (/readyz)."""
from __future__ import annotations

import platform

from flask import Blueprint, current_app, jsonify, render_template

from .. import __version__
from ..security import is_operator
from ..services import services
from ..species.ranges import REGIONS

bp = Blueprint("pages", __name__)


@bp.get("/")
def chat_page():
    return render_template("chat.html", regions=list(REGIONS.values()))


@bp.get("/kb")
def kb_page():
    return render_template("kb.html")


@bp.get("/healthz")
def healthz():
    registry = services()
    healthy = registry.healthy
    body = {
        "status": "ok" if healthy else "degraded",
        "version": __version__,
        "python": platform.python_version(),
        "models": registry.to_dict(),
    }
    if not is_operator():  # software versions tell an attacker which published flaws to try
        body = _without_versions(body)
    return jsonify(body), 200 if healthy else 503


@bp.get("/readyz")
def readyz():
    """200 once every service is loaded and no knowledge base is still being built (the bundled species KB
    on a first start); 503 with Retry-After and what it waits for until then. /healthz stays liveness."""
    registry = services()
    waiting = [name for name, slot in registry.slots.items() if slot.obj is None]
    kb = registry.optional("kb")
    if kb is not None:
        waiting += [f"kb:{name}" for name in sorted(kb.building.copy())]  # a builder thread may change it
    ready = not waiting and registry.healthy
    response = jsonify({"ready": ready, "waiting_for": waiting})
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(current_app.config["KB_RETRY_AFTER_S"])
    return response


def _without_versions(value):
    if isinstance(value, dict):
        return {k: _without_versions(v) for k, v in value.items()
                if k not in ("version", "python") and not k.endswith("_version")}
    if isinstance(value, list):
        return [_without_versions(v) for v in value]
    return value
