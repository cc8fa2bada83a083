"""The two HTML pages and the health check."""
from __future__ import annotations

import platform

from flask import Blueprint, jsonify, render_template

from .. import __version__
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
    return jsonify(body), 200 if healthy else 503
