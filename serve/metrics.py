"""Prometheus text exposition (format 0.0.4) for counters, gauges and histograms; no client library."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()):
        self.name, self.help, self.labelnames = name, help, labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(self.labelnames, k)} {v:g}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {self.read():g}",
        ]


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labelnames: tuple[str, ...] = ()):
        self.name, self.help, self.buckets, self.labelnames = name, help, buckets, labelnames
        self.series: dict[tuple[str, ...], list] = {}  # labels -> [per-bucket counts (+Inf last), sum, count]

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        series[0][bisect_left(self.buckets, value)] += 1
        series[1] += value
        series[2] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, (counts, total, count) in sorted(self.series.items()):
            cumulative = 0
            for bound, c in zip((*self.buckets, "+Inf"), counts, strict=False):
                cumulative += c
                le = 'le="' + (bound if isinstance(bound, str) else f"{bound:g}") + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, labels)} {total:g}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, labels)} {count}")
        return lines


class Registry:
    def __init__(self):
        self.metrics: list = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"


class ServeMetrics:
    """The daemon's metrics: requests, latency, queue time, batch sizes (TEI exposes the same families)."""

    def __init__(self, app):
        self.app = app
        r = self.registry = Registry()
        p = "sft_serve_"
        self.requests = r.add(Counter(p + "requests_total", "HTTP requests answered", ("route", "status")))
        self.latency = r.add(
            Histogram(
                p + "request_duration_seconds",
                "Request read to response written",
                LATENCY_BUCKETS,
                ("route",),
            )
        )
        self.queue = r.add(
            Histogram(
                p + "queue_duration_seconds", "Time an input waited in the batch queue", LATENCY_BUCKETS
            )
        )
        self.inference = r.add(
            Histogram(p + "inference_duration_seconds", "Model time of one batch", LATENCY_BUCKETS)
        )
        self.batch_size = r.add(Histogram(p + "batch_size", "Inputs per batch", SIZE_BUCKETS))
        self.batch_tokens = r.add(
            Histogram(p + "batch_tokens", "Tokens per batch, before padding", TOKEN_BUCKETS)
        )
        self.padded_tokens = r.add(Counter(p + "padded_tokens_total", "Tokens computed, padding included"))
        self.model_calls = r.add(Counter(p + "model_calls_total", "onnxruntime calls"))
        r.add(Gauge(p + "queue_size", "Inputs waiting for a batch", lambda: len(app.batcher.queue)))
        r.add(Gauge(p + "in_flight_requests", "Inference requests being handled", lambda: app.in_flight))
        r.add(Gauge(p + "ready", "1 when serving", lambda: float(app.ready)))

    def record_request(self, route: str, status: int, seconds: float) -> None:
        """`route` is a route template, or "other" for unknown paths: no unbounded label series."""
        self.requests.inc(route, str(status))
        self.latency.observe(seconds, route)

    def record_batch(self, stats) -> None:
        for waited in stats.queue_seconds:
            self.queue.observe(waited)
        self.inference.observe(stats.run_seconds)
        self.batch_size.observe(stats.inputs)
        self.batch_tokens.observe(stats.tokens)
        self.padded_tokens.inc(amount=stats.padded_tokens)
        self.model_calls.inc(amount=stats.calls)

    def render(self) -> str:
        return self.registry.render()
