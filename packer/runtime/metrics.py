"""``GET /metrics`` (``--metrics``): the server's counters in Prometheus text format 0.0.4.

The names are llama-server's where it has one, so its dashboards and scrapers work unchanged:

- ``llamacpp:prompt_tokens_total``, ``llamacpp:prompt_seconds_total``,
  ``llamacpp:tokens_predicted_total``, ``llamacpp:tokens_predicted_seconds_total`` (counters);
- ``llamacpp:prompt_tokens_seconds``, ``llamacpp:predicted_tokens_seconds``: tokens/s since the
  previous scrape, as llama-server computes them (0 when nothing ran in between);
- ``llamacpp:requests_processing`` (busy slots), ``llamacpp:requests_deferred`` (queued);
- ``llamacpp:kv_cache_usage_ratio``, ``llamacpp:kv_cache_tokens``: the KV cache in use (older
  llama-server names, still what dashboards read for it);
- ``llamacpp:n_decode_total``, ``llamacpp:n_busy_slots_per_decode``, ``llamacpp:n_tokens_max``
  when the scheduler counts them.

packer's own: ``packer_slots`` (slots in all); the host-memory prompt cache (``--cache-ram``)
when the scheduler reports it: ``packer_prompt_cache_bytes``, ``_limit_bytes``, ``_entries``
(gauges), ``packer_prompt_cache_saved_total`` (idle slots whose cells went into it),
``_restored_total`` and ``_restored_tokens_total`` (entries put back into a slot, and their
tokens not decoded again); ``packer_http_requests_total{route,status}``
and ``packer_http_request_duration_seconds{route}`` (a histogram). ``route`` is the route
table's path, never the raw request path; past :data:`MAX_ROUTES` distinct routes the rest are
counted as ``other``, so a client probing random paths cannot grow the output.

The token totals come from the scheduler's snapshot when it has them (it sees every decoded
token, also of requests that were cut short); the times and the throughput gauges from
:meth:`Metrics.generation`. Pure Python, thread-safe, no dependency.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_ROUTES = 64
OTHER_ROUTE = "other"
# the scheduler snapshot's numbers shown only when it has them: key, metric name, type, help
OPTIONAL: tuple[tuple[str, str, str, str], ...] = (
    (
        "n_decode_total",
        "llamacpp:n_decode_total",
        "counter",
        "Total number of llama_decode() calls.",
    ),
    (
        "n_busy_slots_per_decode",
        "llamacpp:n_busy_slots_per_decode",
        "gauge",
        "Average number of busy slots per llama_decode() call.",
    ),
    (
        "n_tokens_max",
        "llamacpp:n_tokens_max",
        "gauge",  # llama-server says counter; a high watermark is a gauge
        "High watermark of the context size observed.",
    ),
    (
        "prompt_cache_bytes",
        "packer_prompt_cache_bytes",
        "gauge",
        "Bytes of KV state held in the host-memory prompt cache.",
    ),
    (
        "prompt_cache_limit_bytes",
        "packer_prompt_cache_limit_bytes",
        "gauge",
        "The prompt cache's limit in bytes (--cache-ram).",
    ),
    (
        "prompt_cache_entries",
        "packer_prompt_cache_entries",
        "gauge",
        "Prompts held in the prompt cache.",
    ),
    (
        "prompt_cache_saved_total",
        "packer_prompt_cache_saved_total",
        "counter",
        "Idle slots whose KV cells moved to the prompt cache.",
    ),
    (
        "prompt_cache_restored_total",
        "packer_prompt_cache_restored_total",
        "counter",
        "Prompt cache entries put back into a slot for a new request.",
    ),
    (
        "prompt_cache_restored_tokens_total",
        "packer_prompt_cache_restored_tokens_total",
        "counter",
        "Prompt tokens reused from the prompt cache instead of decoded again.",
    ),
)
# request durations, seconds: from a health check to a long generation
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def _number(value: float) -> float:
    """A finite, non-negative float (anything else counts as 0: never crash on a bad value)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _fmt(value: float) -> str:
    """A sample value as Prometheus reads it (integers without a fraction)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        self.total += seconds
        self.n += 1


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Sequence[tuple[str, str]] = ()) -> None:
        if labels:
            inner = ",".join(f'{key}="{_label(val)}"' for key, val in labels)
            name = f"{name}{{{inner}}}"
        self.lines.append(f"{name} {_fmt(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)


class Metrics:
    """The server's counters; :meth:`render` writes them with the scheduler's snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._n_prompt = 0
        self._n_predicted = 0
        self._t_prompt_ms = 0.0
        self._t_predicted_ms = 0.0
        # since the previous render (llama-server's "bucket"): the throughput gauges
        self._bucket_prompt = (0, 0.0)
        self._bucket_predicted = (0, 0.0)

    def request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: its route (the route table's path), HTTP status, duration."""
        seconds = _number(seconds)
        try:
            code = int(status)
        except (TypeError, ValueError):
            code = 0
        with self._lock:
            route = str(route)
            if route not in self._durations and len(self._durations) >= MAX_ROUTES:
                route = OTHER_ROUTE
            key = (route, code)
            self._requests[key] = self._requests.get(key, 0) + 1
            self._durations.setdefault(route, _Histogram()).observe(seconds)

    def generation(
        self, n_prompt: int, n_predicted: int, t_prompt_ms: float, t_predicted_ms: float
    ) -> None:
        """One finished generation: prompt tokens evaluated (not those reused from the cache),
        tokens generated, and the milliseconds each took."""
        n_p, n_g = int(_number(n_prompt)), int(_number(n_predicted))
        t_p, t_g = _number(t_prompt_ms), _number(t_predicted_ms)
        with self._lock:
            self._n_prompt += n_p
            self._n_predicted += n_g
            self._t_prompt_ms += t_p
            self._t_predicted_ms += t_g
            n, t = self._bucket_prompt
            self._bucket_prompt = (n + n_p, t + t_p)
            n, t = self._bucket_predicted
            self._bucket_predicted = (n + n_g, t + t_g)

    def render(self, scheduler_stats: Mapping[str, float]) -> str:
        """The exposition text (:data:`CONTENT_TYPE`). ``scheduler_stats``: the scheduler's
        ``metrics_snapshot()``. Like llama-server's, each call starts a new throughput
        window."""
        stats = {key: _number(value) for key, value in scheduler_stats.items()}
        with self._lock:
            n_prompt, n_predicted = self._n_prompt, self._n_predicted
            t_prompt, t_predicted = self._t_prompt_ms, self._t_predicted_ms
            bucket_prompt, bucket_predicted = self._bucket_prompt, self._bucket_predicted
            self._bucket_prompt = self._bucket_predicted = (0, 0.0)
            requests = sorted(self._requests.items())
            durations = sorted(
                (route, list(h.counts), h.total, h.n) for route, h in self._durations.items()
            )

        w = _Writer()
        w.one(
            "llamacpp:prompt_tokens_total",
            "counter",
            "Number of prompt tokens processed.",
            stats.get("tokens_prompt_total", n_prompt),
        )
        w.one(
            "llamacpp:prompt_seconds_total",
            "counter",
            "Prompt process time in seconds.",
            t_prompt / 1e3,
        )
        w.one(
            "llamacpp:tokens_predicted_total",
            "counter",
            "Number of generation tokens processed.",
            stats.get("tokens_predicted_total", n_predicted),
        )
        w.one(
            "llamacpp:tokens_predicted_seconds_total",
            "counter",
            "Predict process time in seconds.",
            t_predicted / 1e3,
        )
        w.one(
            "llamacpp:prompt_tokens_seconds",
            "gauge",
            "Average prompt throughput in tokens/s (since the previous scrape).",
            _rate(bucket_prompt),
        )
        w.one(
            "llamacpp:predicted_tokens_seconds",
            "gauge",
            "Average generation throughput in tokens/s (since the previous scrape).",
            _rate(bucket_predicted),
        )
        used, total = stats.get("kv_cells_used", 0.0), stats.get("kv_cells_total", 0.0)
        w.one(
            "llamacpp:kv_cache_usage_ratio",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            min(used / total, 1.0) if total else 0.0,
        )
        w.one("llamacpp:kv_cache_tokens", "gauge", "KV-cache tokens.", used)
        w.one(
            "llamacpp:requests_processing",
            "gauge",
            "Number of requests processing.",
            stats.get("slots_busy", 0.0),
        )
        w.one(
            "llamacpp:requests_deferred",
            "gauge",
            "Number of requests deferred.",
            stats.get("queue_depth", 0.0),
        )
        for key, name, kind, help_text in OPTIONAL:
            if key in stats:
                w.one(name, kind, help_text, stats[key])
        w.one(
            "packer_slots",
            "gauge",
            "Number of slots (requests decoded together).",
            stats.get("slots_total", 0.0),
        )

        w.family("packer_http_requests_total", "counter", "HTTP requests by route and status.")
        for (route, code), count in requests:
            w.sample("packer_http_requests_total", count, (("route", route), ("status", str(code))))

        name = "packer_http_request_duration_seconds"
        w.family(name, "histogram", "HTTP request duration in seconds, by route.")
        for route, counts, seconds, n in durations:
            cumulative = 0
            for bound, count in zip(DURATION_BUCKETS, counts, strict=True):
                cumulative += count
                w.sample(f"{name}_bucket", cumulative, (("route", route), ("le", repr(bound))))
            w.sample(f"{name}_bucket", n, (("route", route), ("le", "+Inf")))
            w.sample(f"{name}_sum", seconds, (("route", route),))
            w.sample(f"{name}_count", n, (("route", route),))
        return "\n".join(w.lines) + "\n"


def _rate(bucket: tuple[int, float]) -> float:
    n, ms = bucket
    return 1e3 * n / ms if ms > 0 else 0.0
