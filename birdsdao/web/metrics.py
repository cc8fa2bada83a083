"""GET /metrics in Prometheus text format: requests by route and status, time to the response headers per
route (a streamed answer's end is later), /detect's stage times, answer-backend queues and upload jobs. For the
operator only (the token holder, or this machine when no token is set). One registry per process: with more
than one gunicorn worker a scrape shows the worker that answered it."""
from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..errors import APIError
from ..security import is_operator
from ..services import services

bp = Blueprint("metrics", __name__)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("birdsdao_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("birdsdao_request_seconds", "Time to answer a request", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("birdsdao_detect_stage_seconds", "/detect time per stage (decode, detect, classify, annotate)",
                                ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_Queues())


class _Queues:
    """Read at scrape time: answer requests running and waiting per backend, upload jobs by state."""

    def collect(self):
        registry = services()
        running = GaugeMetricFamily("birdsdao_llm_running", "Answers being generated", labels=["backend"])
        waiting = GaugeMetricFamily("birdsdao_llm_waiting", "Answers waiting for a backend", labels=["backend"])
        llm = registry.optional("llm")
        for entry in (llm.registry.entries.values() if llm is not None else ()):
            if entry.gate is not None:
                running.add_metric([entry.name], entry.gate.running)
                waiting.add_metric([entry.name], entry.gate.waiting)
        jobs = GaugeMetricFamily("birdsdao_upload_jobs", "Upload jobs remembered, by state", labels=["state"])
        kb = registry.optional("kb")
        for state, count in (kb.jobs.counts() if kb is not None else {}).items():
            jobs.add_metric([state], count)
        yield from (running, waiting, jobs)


def metrics() -> Metrics:
    return current_app.extensions["birdsdao_metrics"]


def observe_stages(timings_ms: dict) -> None:
    """A /detect answer's stage timings (decode, detect, classify, annotate) into the stage histogram."""
    for stage, ms in timings_ms.items():
        if stage != "total":
            metrics().stages.labels(stage).observe(ms / 1000)


def init_app(app) -> None:
    app.extensions["birdsdao_metrics"] = Metrics()

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def count(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"  # bounded label values
        m = metrics()
        m.requests.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            m.latency.labels(route).observe(time.perf_counter() - g.started)
        return response


@bp.get("/metrics")
def scrape():
    if not is_operator():
        raise APIError(403, "forbidden", "metrics are for the operator: send the API token (or ask from this machine)")
    return Response(generate_latest(metrics().registry), mimetype=CONTENT_TYPE_LATEST)
