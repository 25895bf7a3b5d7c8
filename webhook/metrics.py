"""Prometheus metrics of the webhook: reviews, injections, skips by reason, errors, latency.

One registry per app (not the global one), so several apps in one process (tests)
never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter(
            "tracecar_webhook_reviews",
            "AdmissionReviews answered, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.injections = Counter(
            "tracecar_webhook_injections",
            "Pods the agent was injected into",
            registry=self.registry,
        )
        self.skips = Counter(
            "tracecar_webhook_skips",
            "Pods (or other objects) admitted without injection, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tracecar_webhook_errors",
            "Requests that failed: bad_request (4xx), too_large (413), internal",
            ["kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tracecar_webhook_review_duration_seconds",
            "Time to answer /mutate, from the body read to the answer built",
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def record(self, *, outcome: str, seconds: float) -> None:
        self.reviews.labels(outcome).inc()
        if outcome == "injected":
            self.injections.inc()
        elif outcome != "internal-error":
            self.skips.labels(outcome).inc()
        self.latency.observe(seconds)
