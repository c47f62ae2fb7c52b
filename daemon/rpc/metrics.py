"""Prometheus view of the RPC workers, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.rpc.cluster import RpcCluster


class RpcCollector(Collector):
    """edged_rpc_worker_up / _memory_*_bytes / _losses per worker endpoint."""

    def __init__(self, cluster: RpcCluster) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        """One sample per configured worker."""
        up = GaugeMetricFamily(
            "edged_rpc_worker_up", "1 while the RPC worker answers", labels=["endpoint"]
        )
        total = GaugeMetricFamily(
            "edged_rpc_worker_memory_total_bytes",
            "Device memory of the worker",
            labels=["endpoint"],
        )
        free = GaugeMetricFamily(
            "edged_rpc_worker_memory_free_bytes",
            "Free device memory when the worker's devices were registered",
            labels=["endpoint"],
        )
        losses = CounterMetricFamily(
            "edged_rpc_worker_losses", "Times the worker was lost", labels=["endpoint"]
        )
        for w in self._cluster.workers:
            up.add_metric([w.endpoint], 1.0 if w.up else 0.0)
            total.add_metric([w.endpoint], sum(d.total for d in w.devices))
            free.add_metric([w.endpoint], sum(d.free for d in w.devices))
            losses.add_metric([w.endpoint], w.losses)
        yield from (up, total, free, losses)
