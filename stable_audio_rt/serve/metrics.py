"""The server's Prometheus metrics, in a registry of its own (no process-wide state: two apps in
one process, as in the tests, count apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds from a request's arrival (a job's submission) to its audio: tiny models answer in
# tenths, SAO 1.0 on a CPU in minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Real-time factor of each pipeline call: its seconds per second of the audio it made (all clips).
RTF_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10)
# Requests or clips per pipeline call.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 16)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sa_requests", "Generation requests by outcome", ["outcome"], registry=self.registry
        )
        self.queue_depth = Gauge("sa_queue_depth", "Requests waiting or running", registry=self.registry)
        self.latency = Histogram(
            "sa_request_seconds",
            "Arrival (a job's submission) to audio",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rtf = Histogram(
            "sa_rtf",
            "Real-time factor of each pipeline call (seconds per second of all its clips)",
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "sa_batch_clips", "Clips per pipeline call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_requests = Histogram(
            "sa_batch_requests",
            "Requests per pipeline call (dynamic batching)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)
