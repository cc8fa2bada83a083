"""BirdsDao (鸟之道): a self-hosted bird assistant. ``create_app`` builds the whole server."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import environment  # noqa: F401  (first: sets what libraries read when they are imported)
from .config import PROJECT_ROOT, load_config

if TYPE_CHECKING:
    from flask import Flask

__version__ = "0.1.0"

# Each module exposes ``bp``; a newcomer finds every route by opening birdsdao/web/<name>.py.
BLUEPRINTS = ("pages", "detect", "species", "chat", "kb", "metrics")


def create_app(config: dict | None = None) -> Flask:
    """config → services (models loaded once) → blueprints → error handlers."""
    # Imported here, not above: every model module imports this package, and must not pull in Flask with it.
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from .security import init_security
    from .services import init_services
    from .web import metrics, request_id
    from .web.errors import register_error_handlers
    from .web.wsgi import DrainUnreadBody

    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
        instance_relative_config=True,
    )
    load_config(app, config)
    app.json.ensure_ascii = False  # Chinese names readable in every JSON answer (UTF-8), not \uXXXX
    app.instance_path = app.config["INSTANCE_PATH"]
    request_id.configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    # A body answered unread is read after the answer, so pooled keep-alive connections stay usable (web/wsgi.py).
    app.wsgi_app = DrainUnreadBody(app.wsgi_app, int(app.config["MAX_CONTENT_LENGTH"] or 0) + (1 << 20))
    if app.config["PROXY_HOPS"]:
        # Behind nginx: trust X-Forwarded-* from exactly that many proxies.
        hops = int(app.config["PROXY_HOPS"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)

    init_services(app)
    for name in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(f"birdsdao.web.{name}").bp)
    request_id.init_app(app)
    metrics.init_app(app)
    init_security(app)
    register_error_handlers(app)
    return app
