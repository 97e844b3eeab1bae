"""What a serving replica counts, per deployment: Prometheus series for scrapers (requests, latency,
engine-call batch sizes, queue time, generated tokens, time to first token, KV-cache occupancy) and a
recent window of latencies, for the percentiles a deployment's status reports."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RECENT = 2048  # latencies kept for the percentiles of a deployment's status


class ServingMetrics:
    """The replica's series (one registry, served at /metrics), labelled by deployment."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = PromCounter("modelpress_serving_requests", "Inference requests answered",
                                    ["deployment", "protocol", "outcome"], registry=self.registry)
        self.latency = Histogram("modelpress_serving_request_seconds", "Request latency, arrival to last byte",
                                 ["deployment", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("modelpress_serving_batch_size", "Sequences per engine call (encoders) or per "
                                    "decode step (causal LMs)", ["deployment"], buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.engine_seconds = Histogram("modelpress_serving_engine_seconds", "Seconds per engine call",
                                        ["deployment"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = PromCounter("modelpress_serving_generated_tokens", "Tokens generated", ["deployment"],
                                  registry=self.registry)
        self.first_token = Histogram("modelpress_serving_time_to_first_token_seconds", "Arrival to first token",
                                     ["deployment"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.kv_tokens = Gauge("modelpress_serving_kv_cache_tokens", "KV-cache tokens reserved by running sequences",
                               ["deployment"], registry=self.registry)
        self.queued = Gauge("modelpress_serving_queued_requests", "Requests waiting to join a batch",
                            ["deployment"], registry=self.registry)

    def deployment(self, name: str) -> DeploymentMetrics:
        return DeploymentMetrics(self, name)


class DeploymentMetrics:
    def __init__(self, metrics: ServingMetrics, name: str) -> None:
        self.metrics, self.name = metrics, name
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._counts: Counter[str] = Counter()
        self._batches: Counter[int] = Counter()

    def request(self, protocol: str, outcome: str, seconds: float) -> None:
        self.metrics.requests.labels(self.name, protocol, outcome).inc()
        self.metrics.latency.labels(self.name, protocol).observe(seconds)
        with self._lock:
            self._counts[outcome] += 1
            if outcome == "ok":
                self._recent.append(seconds)

    def batch(self, size: int, seconds: float | None = None) -> None:
        self.metrics.batch_size.labels(self.name).observe(size)
        if seconds is not None:
            self.metrics.engine_seconds.labels(self.name).observe(seconds)
        with self._lock:
            self._batches[size] += 1

    def generated(self, tokens: int) -> None:
        self.metrics.tokens.labels(self.name).inc(tokens)

    def first_token(self, seconds: float) -> None:
        self.metrics.first_token.labels(self.name).observe(seconds)

    def occupancy(self, kv_tokens: int, queued: int) -> None:
        self.metrics.kv_tokens.labels(self.name).set(kv_tokens)
        self.metrics.queued.labels(self.name).set(queued)

    def snapshot(self) -> dict:
        """Request counts by outcome, latency percentiles of the recent window (ms), batch-size histogram."""
        with self._lock:
            recent = np.asarray(self._recent, dtype=np.float64)
            counts, batches = dict(self._counts), dict(self._batches)
        figures = {"requests": counts, "batch_sizes": {str(k): v for k, v in sorted(batches.items())}}
        if recent.size:
            figures["latency_ms"] = {f"p{q}": round(float(np.percentile(recent, q)) * 1000, 2) for q in (50, 95, 99)}
        return figures
