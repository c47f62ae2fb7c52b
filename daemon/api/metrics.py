"""Prometheus metrics: HTTP and token counters updated per request, engine state read at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from daemon.core.watch import RequestRecord
from daemon.engine.loading.registry import ModelRegistry

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)


def _num(obj: object, name: str) -> float:
    """An optional numeric attribute of the engine (0 where this build does not have it)."""
    value = getattr(obj, name, 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


class EngineCollector(Collector):
    """Reads every loaded model's scheduler at scrape time: nothing to keep in sync."""

    def __init__(self, registry: ModelRegistry, draining: Callable[[], bool]) -> None:
        self._registry = registry
        self._draining = draining

    def collect(self) -> Iterator[Metric]:
        """One sample per loaded model for each engine gauge and counter."""
        g = {
            "queue": GaugeMetricFamily(
                "edged_queue_depth", "Requests waiting for a slot", labels=["model"]
            ),
            "slots": GaugeMetricFamily("edged_slots", "Sequence slots", labels=["model"]),
            "busy": GaugeMetricFamily(
                "edged_slots_busy", "Slots running a request", labels=["model"]
            ),
            "kv": GaugeMetricFamily(
                "edged_kv_cache_tokens", "Tokens held in the slots' KV cache", labels=["model"]
            ),
            "store": GaugeMetricFamily(
                "edged_request_store_bytes", "Bytes held by the request_id store", labels=["model"]
            ),
            "store_entries": GaugeMetricFamily(
                "edged_request_store_entries",
                "request_id entries held in memory",
                labels=["model"],
            ),
            "pc_bytes": GaugeMetricFamily(
                "edged_prompt_cache_bytes",
                "Bytes the prompt cache holds in memory (bounded by --cache-ram)",
                labels=["model"],
            ),
            "pc_disk": GaugeMetricFamily(
                "edged_prompt_cache_disk_bytes",
                "Bytes of prompt cache states spilled to --cache-dir",
                labels=["model"],
            ),
            "pc_entries": GaugeMetricFamily(
                "edged_prompt_cache_entries", "Prompt cache entries", labels=["model"]
            ),
        }
        c = {
            "hits": CounterMetricFamily(
                "edged_prefix_cache_hit_tokens",
                "Prompt tokens reused from a slot's prefix cache",
                labels=["model"],
            ),
            "store_hits": CounterMetricFamily(
                "edged_request_store_hits", "request_id store hits", labels=["model"]
            ),
            "store_misses": CounterMetricFamily(
                "edged_request_store_misses",
                "request_id lookups that found nothing",
                labels=["model"],
            ),
            "store_evictions": CounterMetricFamily(
                "edged_request_store_evictions",
                "request_id entries evicted from memory (quota or bound)",
                labels=["model"],
            ),
            "steps": CounterMetricFamily(
                "edged_decode_steps", "llama_decode calls", labels=["model"]
            ),
            "drafted": CounterMetricFamily(
                "edged_spec_drafted_tokens",
                "Draft tokens verified by speculative decoding",
                labels=["model", "source"],
            ),
            "accepted": CounterMetricFamily(
                "edged_spec_accepted_tokens",
                "Draft tokens the target model accepted",
                labels=["model", "source"],
            ),
            "spec_off": CounterMetricFamily(
                "edged_spec_disabled",
                "Times speculation was switched off for a sequence, by reason",
                labels=["model", "reason"],
            ),
            "pc_hits": CounterMetricFamily(
                "edged_prompt_cache_hits",
                "Requests that restored a prefix from the prompt cache",
                labels=["model"],
            ),
            "pc_hit_tokens": CounterMetricFamily(
                "edged_prompt_cache_hit_tokens",
                "Prompt tokens restored from the prompt cache",
                labels=["model"],
            ),
            "pc_misses": CounterMetricFamily(
                "edged_prompt_cache_misses",
                "Prompt cache lookups that found no usable entry",
                labels=["model"],
            ),
            "pc_evictions": CounterMetricFamily(
                "edged_prompt_cache_evictions",
                "Prompt cache entries evicted from memory (spilled or dropped)",
                labels=["model"],
            ),
        }
        for lm in self._registry.loaded():
            s = lm.worker
            m = [lm.name]
            g["queue"].add_metric(m, max(0, s.outstanding - s.busy_slots))
            g["slots"].add_metric(m, s.n_slots)
            g["busy"].add_metric(m, s.busy_slots)
            g["kv"].add_metric(m, _num(s, "cached_tokens"))
            c["hits"].add_metric(m, _num(s, "cache_hit_tokens"))
            c["steps"].add_metric(m, _num(s, "steps"))
            spec = getattr(s, "spec", None)
            if spec is not None and spec.options.enabled:
                for source in ("ngram", "draft"):
                    c["drafted"].add_metric([lm.name, source], spec.drafted[source])
                    c["accepted"].add_metric([lm.name, source], spec.accepted[source])
                for reason, n in spec.disabled.items():
                    c["spec_off"].add_metric([lm.name, reason], n)
            pc = getattr(s, "cache", None)
            if pc is not None:
                g["pc_bytes"].add_metric(m, pc.nbytes)
                g["pc_disk"].add_metric(m, pc.disk_bytes)
                g["pc_entries"].add_metric(m, len(pc))
                c["pc_hits"].add_metric(m, pc.hits)
                c["pc_hit_tokens"].add_metric(m, pc.hit_tokens)
                c["pc_misses"].add_metric(m, pc.misses)
                c["pc_evictions"].add_metric(m, pc.evictions)
        # The stores outlive unloads: they are read by model whether loaded or not.
        for name, store in self._registry.stores().items():
            m = [name]
            g["store"].add_metric(m, store.nbytes)
            g["store_entries"].add_metric(m, len(store))
            c["store_hits"].add_metric(m, store.hits)
            c["store_misses"].add_metric(m, store.misses)
            c["store_evictions"].add_metric(m, store.evictions)
        yield from g.values()
        yield from c.values()
        reg = self._registry
        yield GaugeMetricFamily("edged_models_loaded", "Models in memory", len(reg.loaded()))
        yield CounterMetricFamily("edged_model_loads", "Models loaded", _num(reg, "loads"))
        yield CounterMetricFamily(
            "edged_model_load_failures", "Model loads that failed", _num(reg, "load_failures")
        )
        yield CounterMetricFamily("edged_model_unloads", "Models unloaded", _num(reg, "unloads"))
        yield GaugeMetricFamily(
            "edged_draining", "1 while shutting down", 1.0 if self._draining() else 0.0
        )


class Metrics:
    """The daemon's own Prometheus registry (one per app, so tests can build several)."""

    def __init__(self, registry: ModelRegistry, draining: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edged_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.duration = Histogram(
            "edged_request_duration_seconds",
            "HTTP request duration, streams until their last byte",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "edged_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "edged_completion_tokens", "Tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            "edged_time_to_first_token_seconds",
            "Submit to first generated token, queueing included",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_latency = Histogram(
            "edged_time_per_output_token_seconds",
            "Mean time between generated tokens of a request",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        r.register(EngineCollector(registry, draining))

    def observe(
        self, route: str, method: str, status: int, seconds: float, rec: RequestRecord
    ) -> None:
        """Account for one finished HTTP request and the engine work it caused."""
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route).observe(seconds)
        if rec.model:
            self.prompt_tokens.labels(rec.model).inc(rec.prompt_tokens)
            self.completion_tokens.labels(rec.model).inc(rec.completion_tokens)
        for model, ttft, per_token in rec.latencies:
            self.ttft.labels(model).observe(ttft)
            if per_token is not None:
                self.token_latency.labels(model).observe(per_token)

    def route(self) -> Any:
        """The `GET /metrics` handler serving this registry in the text format."""

        @get("/metrics", sync_to_thread=False, include_in_schema=False)
        def metrics() -> Response[bytes]:
            """Prometheus text exposition."""
            return Response(
                generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST, status_code=200
            )

        return metrics
