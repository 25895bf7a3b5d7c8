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
        self._by_outcome: dict[str, tuple[Counter, ...]] = {}

    def _counters(self, outcome: str) -> tuple[Counter, ...]:
        """The counters a review with this outcome increments: looked up once per outcome
        (``labels()`` takes a lock and validates on every call)."""
        counters = self._by_outcome.get(outcome)
        if counters is None:
            counters = (self.reviews.labels(outcome),)
            if outcome == "injected":
                counters += (self.injections,)
            elif outcome != "internal-error":
                counters += (self.skips.labels(outcome),)
            self._by_outcome[outcome] = counters
        return counters

    def record(self, *, outcome: str, seconds: float) -> None:
        for counter in self._counters(outcome):
            counter.inc()
        self.latency.observe(seconds)
