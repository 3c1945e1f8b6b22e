"""Prometheus metrics of the scorer, on their own registry (several servers may share a process).

Exported on ``--metrics-port`` at ``/metrics``:

* ``ctr_requests_total{code}`` — requests by gRPC status code,
* ``ctr_request_latency_seconds`` — server-side latency histogram (decode → response),
* ``ctr_request_examples`` / ``ctr_batch_rows`` — examples per request, rows per model call,
* ``ctr_model_info{name,version,quant}`` — 1 for the version being served,
* ``ctr_model_reloads_total{result}`` — alias follow-ups accepted or refused.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ScorerMetrics:
    """Counters and histograms for one server; :meth:`serve_http` exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ctr_requests", "Score requests by gRPC status code", ["code"], registry=r)
        self.latency = Histogram("ctr_request_latency_seconds", "Server-side Score latency",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.examples = Histogram("ctr_request_examples", "Examples per Score request", buckets=SIZE_BUCKETS,
                                  registry=r)
        self.batch_rows = Histogram("ctr_batch_rows", "Rows per model call (after micro-batching)",
                                    buckets=SIZE_BUCKETS, registry=r)
        self.model = Gauge("ctr_model_info", "The model version being served (value 1)",
                           ["name", "version", "quant"], registry=r)
        self.reloads = Counter("ctr_model_reloads", "Model versions accepted or refused", ["result"], registry=r)
        self._http = None

    def model_swapped(self, name: str, version: str, quant: str) -> None:
        self.model.clear()
        self.model.labels(name, version, quant).set(1)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Start ``/metrics`` on ``host:port`` (0 = any free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
