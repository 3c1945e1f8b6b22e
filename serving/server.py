"""The scoring server: gRPC Scorer + health + reflection, Prometheus metrics, hot reload, graceful stop.

``ctr serve --model models:/NAME@ALIAS`` builds a :class:`ServerSettings` and calls :func:`serve`.
Tests and benchmarks start a :class:`ScoringServer` in-process on port 0.
"""

import ipaddress
import json
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ctr.errors import CtrError
from serving.batcher import MicroBatcher
from serving.metrics import ScorerMetrics
from serving.model_store import ModelStore
from serving.scorer import Scorer
from serving.servicer import SERVICE_NAME as SCORER_SERVICE
from serving.servicer import RequestLimits, ScorerServicer

log = logging.getLogger("ctr.serving")
SERVICE_NAME = SCORER_SERVICE


@dataclass
class ServerSettings:
    """Everything ``ctr serve`` configures (flags are read once, in the CLI).

    Args:
        model (str): ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a bundle folder.
        tracking_uri (str | None): MLflow store for ``models:/`` references.
        host (str): bind address (``127.0.0.1`` by default; ``0.0.0.0`` for every interface).
        port (int): gRPC port (0 = any free port).
        metrics_port (int | None): Prometheus ``/metrics`` port (``None`` = off, 0 = any free port).
        quant (str): ``int8`` | ``int4`` | ``fp16`` | ``none``.
        missing (str): ``error`` (every feature required) or ``null`` (absent feature = missing value).
        compile (bool): ``torch.compile`` the dense towers at load (slower start, faster scoring).
        max_batch (int): most rows per model call.
        max_wait_ms (float): micro-batching wait for company (0 = merge only what is queued).
        max_examples (int): most examples per request.
        max_message_mb (int): gRPC max receive/send message size.
        workers (int): gRPC handler threads (= most requests in flight).
        torch_threads (int | None): intra-op threads of the model (``None`` = torch default).
        poll_seconds (float): alias poll interval (0 = no hot reload).
        grace_seconds (float): how long a stop waits for in-flight requests.
        max_concurrent_rpcs (int): requests admitted at once; more are refused with RESOURCE_EXHAUSTED.
        request_timeout_s (float): longest a request may take; a client deadline beyond it (or none) is capped.
        tls_cert (str | None): PEM certificate chain of the server (enables TLS, with ``tls_key``).
        tls_key (str | None): PEM private key of the server.
        tls_client_ca (str | None): PEM CA bundle; clients must present a certificate it signed (mutual TLS).
    """

    model: str
    tracking_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    quant: str = "int8"
    missing: str = "error"
    compile: bool = False
    max_batch: int = 512
    max_wait_ms: float = 0.0
    max_examples: int = 4096
    max_message_mb: int = 16
    workers: int = 16
    torch_threads: int | None = None
    poll_seconds: float = 10.0
    grace_seconds: float = 10.0
    max_concurrent_rpcs: int = 128
    request_timeout_s: float = 10.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None


class ScoringServer:
    """A running scorer. ``start()`` loads the model (raises if it is unusable) and binds the ports."""

    def __init__(self, settings: ServerSettings, store: ModelStore | None = None,
                 scorer: Scorer | None = None) -> None:
        self.settings = settings
        self.metrics = ScorerMetrics()
        self.store = store or ModelStore(settings.model, settings.tracking_uri, settings.quant,
                                         settings.missing, settings.compile, on_swap=self._on_swap)
        if store is not None:
            store.on_swap = self._on_swap
        self._fixed_scorer = scorer
        self.batcher = MicroBatcher(settings.max_batch, settings.max_wait_ms, self.metrics.batch_rows.observe)
        self.health = health.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()
        self._done = threading.Event()

    def _on_swap(self, scorer: Scorer) -> None:
        self.metrics.model_swapped(scorer.version.name, scorer.version.version, scorer.quant)
        self.metrics.reloads.labels("accepted").inc()
        _event("model_loaded", name=scorer.version.name, version=scorer.version.version, quant=scorer.quant,
               embedding_mb=round(scorer.embedding_bytes / 2**20, 2))

    def start(self) -> "ScoringServer":
        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        if self._fixed_scorer is not None:
            self.store.current = self._fixed_scorer
            self._on_swap(self._fixed_scorer)
        else:
            self.store.load()
        self.batcher.start()
        opts = [("grpc.max_receive_message_length", s.max_message_mb << 20),
                ("grpc.max_send_message_length", s.max_message_mb << 20),
                ("grpc.so_reuseport", 0)]
        credentials = server_credentials(s)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="ctr-grpc"),
                             options=opts, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        servicer = ScorerServicer(self.store, self.batcher, self.metrics,
                                  RequestLimits(s.max_examples, s.request_timeout_s))
        server.add_generic_rpc_handlers((servicer.rpc_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        address = f"{s.host}:{s.port}"
        self.port = (server.add_secure_port(address, credentials) if credentials is not None
                     else server.add_insecure_port(address))
        if credentials is None and not _is_loopback(s.host):
            log.warning("serving PLAINTEXT gRPC on %s, which is not a loopback address: anyone who can reach it "
                        "can read requests and scores; pass --tls-cert/--tls-key (and --tls-client-ca)", address)
        if not self.port:
            raise OSError(f"cannot bind {s.host}:{s.port}")
        server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(s.metrics_port, s.host)
        if self._fixed_scorer is None:
            self.store.start_polling(s.poll_seconds)
        _event("serving", address=f"{s.host}:{self.port}", metrics_port=self.metrics_port,
               tls="mutual" if s.tls_client_ca else "server" if credentials is not None else "off",
               model=s.model, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop taking requests (health NOT_SERVING), drain in-flight ones for ``grace`` s, then shut down."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.store.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
        self.batcher.stop()
        self.metrics.stop()
        _event("stopped")
        self._done.set()

    def wait(self) -> None:
        """Block until :meth:`stop` has finished draining."""
        while not self._done.wait(0.5):
            pass


def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight requests and exit."""
    server = ScoringServer(settings).start()
    print(f"ctr scorer listening on {settings.host}:{server.port}"
          + (f", metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""), flush=True)

    def _stop(signum, _frame):
        _event("signal", signal=signal.Signals(signum).name)
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait()


def server_credentials(s: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files (``None`` for plaintext); CtrError names a bad file."""
    if not (s.tls_cert or s.tls_key or s.tls_client_ca):
        return None
    if not (s.tls_cert and s.tls_key):
        raise CtrError("TLS needs both --tls-cert and --tls-key (--tls-client-ca adds client authentication)")
    key, cert = _read_pem(s.tls_key, "--tls-key"), _read_pem(s.tls_cert, "--tls-cert")
    ca = _read_pem(s.tls_client_ca, "--tls-client-ca") if s.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _read_pem(path: str, flag: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise CtrError(f"{flag} {path}: file not found")
    data = p.read_bytes()
    if b"-----BEGIN" not in data:
        raise CtrError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _event(event: str, **fields) -> None:
    """One structured (JSON) log line per lifecycle event."""
    log.info(json.dumps({"event": event, "ts": round(time.time(), 3), **fields}, default=str))
