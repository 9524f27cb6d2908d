"""Prometheus metrics of one scorer, on its own registry so tests can build many."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ScorerMetrics:
    """Requests by outcome code, latency per stage, requests in flight, the model and provider."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "scorer_requests",
            "Scoring requests by outcome code (OK or an error code)",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "scorer_stage_seconds",
            "Time per stage: decode, inference, total",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "scorer_inflight_requests", "Requests being scored now", registry=self.registry
        )
        self.model = Gauge(
            "scorer_model_info",
            "The model served and the execution provider really used",
            ["name", "version", "kind", "provider"],
            registry=self.registry,
        )

        self.http_connections = Gauge(
            "scorer_http_connections",
            "Open HTTP connections: being read, answered, kept alive or closing",
            registry=self.registry,
        )
        self.http_receiving_bytes = Gauge(
            "scorer_http_receiving_bytes",
            "Bytes held by HTTP requests still arriving (bounded by SCORER_READ_BUDGET_BYTES)",
            registry=self.registry,
        )
        self.http_unsent_bytes = Gauge(
            "scorer_http_unsent_bytes",
            "Bytes of answers waiting for clients to read them (bounded by"
            " SCORER_SEND_BUDGET_BYTES)",
            registry=self.registry,
        )
        self.http_connections_evicted = Counter(
            "scorer_http_connections_evicted",
            "Idle HTTP connections closed to admit a new one (at SCORER_MAX_CONNECTIONS or"
            " the address's SCORER_MAX_CLIENT_CONNECTIONS)",
            registry=self.registry,
        )
        self.http_connections_refused = Counter(
            "scorer_http_connections_refused",
            "New HTTP connections closed at once: their address held its share of the table"
            " (SCORER_MAX_CLIENT_CONNECTIONS) with none idle",
            registry=self.registry,
        )
        self.http_unread_answers_dropped = Counter(
            "scorer_http_unread_answers_dropped",
            "HTTP connections closed because their client did not read its answer in time"
            " (SCORER_CLIENT_TIMEOUT_S) or unread answers held SCORER_SEND_BUDGET_BYTES",
            registry=self.registry,
        )
        self.http_accept_pauses = Counter(
            "scorer_http_accept_pauses",
            "Times HTTP stopped accepting connections for a second: no file descriptor was left",
            registry=self.registry,
        )
        self.provider_fallback = Gauge(
            "scorer_provider_fallback",
            "An installed GPU execution provider that auto had to drop, by reason",
            ["provider", "reason"],
            registry=self.registry,
        )

    def observe(self, decode_s: float, inference_s: float, total_s: float) -> None:
        """Record one successful request's stage times."""
        self.requests.labels("OK").inc()
        self.latency.labels("decode").observe(decode_s)
        self.latency.labels("inference").observe(inference_s)
        self.latency.labels("total").observe(total_s)

    def error(self, code: str) -> None:
        """Record one failed request."""
        self.requests.labels(code).inc()
