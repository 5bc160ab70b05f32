"""/metrics' counters and their Prometheus text, read back with prometheus_client's parser."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from packer.runtime.metrics import CONTENT_TYPE, MAX_ROUTES, OTHER_ROUTE, Metrics

# the test extra brings it (a venv made before it was added: pip install prometheus-client)
text_string_to_metric_families = pytest.importorskip(
    "prometheus_client.parser"
).text_string_to_metric_families

STATS = {
    "slots_busy": 2,
    "slots_total": 4,
    "queue_depth": 3,
    "kv_cells_used": 1024,
    "kv_cells_total": 4096,
    "tokens_predicted_total": 500,
    "tokens_prompt_total": 1200,
}


def _parse(text: str) -> dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]]:
    """family name → (type, help, samples), by a real Prometheus parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        samples = [(s.name, dict(s.labels), s.value) for s in family.samples]
        out[family.name] = (family.type, family.documentation, samples)
    return out


def _value(families: dict, sample_name: str, **labels: str) -> float:
    for _type, _help, samples in families.values():
        for name, got, value in samples:
            if name == sample_name and got == labels:
                return value
    raise KeyError(sample_name, labels)


def test_the_format_is_prometheus_text_with_llama_server_names() -> None:
    m = Metrics()
    m.generation(n_prompt=100, n_predicted=50, t_prompt_ms=200.0, t_predicted_ms=1000.0)
    m.request("/v1/chat/completions", 200, 1.3)
    text = m.render(STATS)
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert text.endswith("\n") and "\n\n" not in text
    families = _parse(text)
    # every family has its HELP and TYPE
    for name, (kind, help_text, _samples) in families.items():
        assert help_text, name
        assert kind in ("counter", "gauge", "histogram"), name
    # each family: # HELP, # TYPE, then only its own samples
    family, kind, helped = "", "", set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _hash, _type, family, kind = line.split()
            assert family in helped, line
        else:
            name = line.split("{")[0].split(" ")[0]
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            assert name in {family + suffix for suffix in suffixes}, line
    kinds = {name: kind for name, (kind, _h, _s) in families.items()}
    # prometheus_client names a counter family without its _total suffix
    assert kinds["llamacpp:prompt_tokens"] == "counter"
    assert kinds["llamacpp:tokens_predicted"] == "counter"
    assert kinds["llamacpp:prompt_seconds"] == "counter"
    assert kinds["llamacpp:tokens_predicted_seconds"] == "counter"
    assert kinds["llamacpp:prompt_tokens_seconds"] == "gauge"
    assert kinds["llamacpp:predicted_tokens_seconds"] == "gauge"
    assert kinds["llamacpp:kv_cache_usage_ratio"] == "gauge"
    assert kinds["llamacpp:kv_cache_tokens"] == "gauge"
    assert kinds["llamacpp:requests_processing"] == "gauge"
    assert kinds["llamacpp:requests_deferred"] == "gauge"
    assert kinds["packer_http_requests"] == "counter"
    assert kinds["packer_http_request_duration_seconds"] == "histogram"
    assert kinds["packer_slots"] == "gauge"


def test_values() -> None:
    m = Metrics()
    m.generation(100, 50, 200.0, 1000.0)
    m.generation(20, 10, 50.0, 250.0)
    f = _parse(m.render(STATS))
    assert _value(f, "llamacpp:prompt_tokens_total") == 1200  # the scheduler's count wins
    assert _value(f, "llamacpp:tokens_predicted_total") == 500
    assert _value(f, "llamacpp:prompt_seconds_total") == pytest.approx(0.25)
    assert _value(f, "llamacpp:tokens_predicted_seconds_total") == pytest.approx(1.25)
    assert _value(f, "llamacpp:prompt_tokens_seconds") == pytest.approx(120 / 0.25)
    assert _value(f, "llamacpp:predicted_tokens_seconds") == pytest.approx(60 / 1.25)
    assert _value(f, "llamacpp:kv_cache_usage_ratio") == 0.25
    assert _value(f, "llamacpp:kv_cache_tokens") == 1024
    assert _value(f, "llamacpp:requests_processing") == 2
    assert _value(f, "llamacpp:requests_deferred") == 3
    assert _value(f, "packer_slots") == 4
    # without the scheduler's totals, the generations' own
    f = _parse(m.render({}))
    assert _value(f, "llamacpp:prompt_tokens_total") == 120
    assert _value(f, "llamacpp:tokens_predicted_total") == 60
    assert _value(f, "llamacpp:kv_cache_usage_ratio") == 0


def test_throughput_is_since_the_previous_scrape() -> None:
    m = Metrics()
    m.generation(10, 20, 100.0, 1000.0)
    f = _parse(m.render(STATS))
    assert _value(f, "llamacpp:predicted_tokens_seconds") == pytest.approx(20.0)
    f = _parse(m.render(STATS))  # nothing ran since: 0, not NaN
    assert _value(f, "llamacpp:predicted_tokens_seconds") == 0
    assert _value(f, "llamacpp:prompt_tokens_seconds") == 0
    # the counters stay
    assert _value(f, "llamacpp:tokens_predicted_seconds_total") == pytest.approx(1.0)
    m.generation(0, 5, 0.0, 100.0)
    f = _parse(m.render(STATS))
    assert _value(f, "llamacpp:predicted_tokens_seconds") == pytest.approx(50.0)


def test_requests_by_route_and_status_with_a_duration_histogram() -> None:
    m = Metrics()
    m.request("/v1/chat/completions", 200, 0.2)
    m.request("/v1/chat/completions", 200, 3.0)
    m.request("/v1/chat/completions", 400, 0.001)
    m.request("/health", 200, 0.0005)
    f = _parse(m.render(STATS))
    chat = "/v1/chat/completions"
    assert _value(f, "packer_http_requests_total", route=chat, status="200") == 2
    assert _value(f, "packer_http_requests_total", route=chat, status="400") == 1
    assert _value(f, "packer_http_requests_total", route="/health", status="200") == 1
    name = "packer_http_request_duration_seconds"
    assert _value(f, f"{name}_count", route=chat) == 3
    assert _value(f, f"{name}_sum", route=chat) == pytest.approx(3.201)
    assert _value(f, f"{name}_bucket", route=chat, le="0.005") == 1
    assert _value(f, f"{name}_bucket", route=chat, le="0.25") == 2
    assert _value(f, f"{name}_bucket", route=chat, le="2.5") == 2
    assert _value(f, f"{name}_bucket", route=chat, le="5.0") == 3
    assert _value(f, f"{name}_bucket", route=chat, le="+Inf") == 3
    assert _value(f, f"{name}_bucket", route="/health", le="0.005") == 1
    # buckets are cumulative: never decreasing
    buckets = [
        value
        for sample, labels, value in f[name][2]
        if sample.endswith("_bucket") and labels["route"] == chat
    ]
    assert buckets == sorted(buckets)


def test_the_optional_scheduler_numbers() -> None:
    f = _parse(Metrics().render(STATS))
    assert "llamacpp:n_decode" not in f and "llamacpp:n_tokens_max" not in f
    stats = {**STATS, "n_decode_total": 77, "n_busy_slots_per_decode": 1.5, "n_tokens_max": 900}
    f = _parse(Metrics().render(stats))
    assert _value(f, "llamacpp:n_decode_total") == 77
    assert _value(f, "llamacpp:n_busy_slots_per_decode") == 1.5
    assert _value(f, "llamacpp:n_tokens_max") == 900


def test_the_prompt_cache_numbers() -> None:
    f = _parse(Metrics().render(STATS))
    assert not [name for name in f if name.startswith("packer_prompt_cache")]
    cache = {
        "prompt_cache_bytes": 3 << 20,
        "prompt_cache_limit_bytes": 8 << 30,
        "prompt_cache_entries": 2,
        "prompt_cache_saved_total": 5,
        "prompt_cache_restored_total": 3,
        "prompt_cache_restored_tokens_total": 1500,
    }
    f = _parse(Metrics().render({**STATS, **cache}))
    kinds = {name: kind for name, (kind, _h, _s) in f.items()}
    assert kinds["packer_prompt_cache_bytes"] == "gauge"
    assert kinds["packer_prompt_cache_limit_bytes"] == "gauge"
    assert kinds["packer_prompt_cache_entries"] == "gauge"
    assert kinds["packer_prompt_cache_saved"] == "counter"
    assert kinds["packer_prompt_cache_restored"] == "counter"
    assert kinds["packer_prompt_cache_restored_tokens"] == "counter"
    assert _value(f, "packer_prompt_cache_bytes") == 3 << 20
    assert _value(f, "packer_prompt_cache_limit_bytes") == 8 << 30
    assert _value(f, "packer_prompt_cache_entries") == 2
    assert _value(f, "packer_prompt_cache_saved_total") == 5
    assert _value(f, "packer_prompt_cache_restored_total") == 3
    assert _value(f, "packer_prompt_cache_restored_tokens_total") == 1500


def test_labels_are_escaped() -> None:
    m = Metrics()
    route = 'we"ird\\route\nx'
    m.request(route, 200, 0.1)
    text = m.render({})
    assert 'route="we\\"ird\\\\route\\nx"' in text
    assert _value(_parse(text), "packer_http_requests_total", route=route, status="200") == 1


def test_routes_are_capped() -> None:
    m = Metrics()
    for i in range(MAX_ROUTES + 10):
        m.request(f"/r{i}", 404, 0.01)
    f = _parse(m.render({}))
    routes = {labels["route"] for _n, labels, _v in f["packer_http_requests"][2]}
    assert len(routes) == MAX_ROUTES + 1 and OTHER_ROUTE in routes
    assert _value(f, "packer_http_requests_total", route=OTHER_ROUTE, status="404") == 10


def test_bad_values_never_break_the_output() -> None:
    m = Metrics()
    m.request("/x", "oops", float("nan"))  # type: ignore[arg-type]
    m.request("/x", 200, -5.0)
    m.generation(-1, 3, float("inf"), float("nan"))
    stats = {"slots_busy": float("nan"), "kv_cells_used": 10, "kv_cells_total": 0, "x": "y"}
    text = m.render(stats)  # type: ignore[arg-type]
    f = _parse(text)
    assert _value(f, "packer_http_requests_total", route="/x", status="0") == 1
    assert _value(f, "llamacpp:tokens_predicted_total") == 3
    assert _value(f, "llamacpp:prompt_tokens_total") == 0
    assert _value(f, "llamacpp:kv_cache_usage_ratio") == 0
    assert _value(f, "llamacpp:requests_processing") == 0
    for _kind, _help, samples in f.values():
        assert all(math.isfinite(v) for _n, _l, v in samples)


def test_empty_metrics_render() -> None:
    f = _parse(Metrics().render({}))
    assert _value(f, "llamacpp:prompt_tokens_total") == 0
    assert f["packer_http_requests"][2] == []


def test_thread_safe_counts() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(500):
            m.request("/completion", 200, 0.01)
            m.generation(2, 3, 1.0, 1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    renders = []
    for t in threads:
        t.start()
    for _ in range(20):
        renders.append(m.render(STATS))  # rendering while counting: always parseable
    for t in threads:
        t.join()
    for text in renders:
        _parse(text)
    f = _parse(m.render({}))
    assert _value(f, "packer_http_requests_total", route="/completion", status="200") == 4000
    assert _value(f, "llamacpp:prompt_tokens_total") == 8000
    assert _value(f, "llamacpp:tokens_predicted_total") == 12000


def test_the_runtime_does_not_need_prometheus_client() -> None:
    import packer.runtime.metrics as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    assert "prometheus_client" not in source
