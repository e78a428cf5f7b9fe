"""Prometheus metrics: HTTP requests by route and status, their latency, and the
jobs in the database by status (read at scrape time). One registry per app."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.job_status import JOB_STATUSES


class _JobsCollector:
    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self):
        gauge = GaugeMetricFamily("bitalloc_jobs", "jobs by status", labels=["status"])
        try:
            with self.sessions() as session:
                counts = crud.job_counts(session)
        except Exception:  # noqa: BLE001 (a scrape must not fail with the database)
            return
        for status in JOB_STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge


def _route_label(scope) -> str:
    """The path with its parameters named (/v1/jobs/{job_id}), for bounded labels."""
    if "route" not in scope:
        return "unmatched"
    names = {str(v): k for k, v in scope.get("path_params", {}).items()}
    return "/".join(f"{{{names[seg]}}}" if seg in names else seg
                    for seg in scope["path"].split("/"))


class Metrics:
    def __init__(self, sessions: sessionmaker[Session]):
        self.registry = CollectorRegistry()
        self.requests = Counter("bitalloc_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("bitalloc_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry)
        self.registry.register(_JobsCollector(sessions))

    def middleware(self, app):
        """ASGI middleware counting requests by their route template."""

        async def wrapped(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            start = time.perf_counter()
            status = {"code": 500}

            async def capture(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                route = _route_label(scope)
                self.requests.labels(scope["method"], route, str(status["code"])).inc()
                self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)

        return wrapped
