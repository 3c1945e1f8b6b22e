"""A small Python client for the scorer, and the Python value → ``Value`` mapping.

Example::

    with ScorerClient("127.0.0.1:50051") as client:
        result = client.score([{"C1": "68fd1e64", "I1": 3.0}])
        print(result.probabilities, result.model_version)
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ctr.errors import CtrError
from serving._proto import scorer_pb2, scorer_pb2_grpc


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CtrError(f"{path}: cannot read the TLS file ({exc.strerror})") from None


@dataclass
class ScoreResult:
    probabilities: np.ndarray
    model_name: str
    model_version: str


def to_value(value) -> scorer_pb2.Value:
    """Python value → ``Value``: str, int, float, lists of one of those, or None (missing)."""
    if value is None:
        return scorer_pb2.Value()
    if isinstance(value, bool):
        return scorer_pb2.Value(int64_value=int(value))
    if isinstance(value, int):
        return scorer_pb2.Value(int64_value=value)
    if isinstance(value, float):
        return scorer_pb2.Value(double_value=value)
    if isinstance(value, str):
        return scorer_pb2.Value(string_value=value)
    if isinstance(value, (list, tuple)):
        items = [v for v in value if v is not None]
        if all(isinstance(v, str) for v in items):
            return scorer_pb2.Value(string_list=scorer_pb2.StringList(values=items))
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return scorer_pb2.Value(int64_list=scorer_pb2.Int64List(values=items))
        return scorer_pb2.Value(double_list=scorer_pb2.DoubleList(values=[float(v) for v in items]))
    raise TypeError(f"cannot send a {type(value).__name__} as a feature value")


def to_example(row: Mapping) -> scorer_pb2.Example:
    return scorer_pb2.Example(features={k: to_value(v) for k, v in row.items()})


def build_request(rows: Iterable[Mapping], context: Mapping | None = None,
                  model_name: str = "") -> scorer_pb2.ScoreRequest:
    return scorer_pb2.ScoreRequest(examples=[to_example(r) for r in rows],
                                   context=to_example(context or {}), model_name=model_name)


class ScorerClient:
    """Blocking client; ``timeout`` is each call's deadline in seconds.

    TLS: ``tls_ca`` (PEM file of the CA that signed the server's certificate) switches to a secure
    channel; ``tls_cert``/``tls_key`` add a client certificate for servers that require mutual TLS.
    """

    def __init__(self, address: str, timeout: float = 10.0, max_message_mb: int = 16, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        opts = [("grpc.max_receive_message_length", max_message_mb << 20),
                ("grpc.max_send_message_length", max_message_mb << 20)]
        if tls_ca or tls_cert or tls_key:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert))
            self.channel = grpc.secure_channel(address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(address, options=opts)
        self.stub = scorer_pb2_grpc.ScorerStub(self.channel)
        self.timeout = timeout

    def score(self, rows: Iterable[Mapping], context: Mapping | None = None, model_name: str = "",
              timeout: float | None = None) -> ScoreResult:
        return self.score_request(build_request(rows, context, model_name), timeout)

    def score_request(self, request: scorer_pb2.ScoreRequest, timeout: float | None = None) -> ScoreResult:
        resp = self.stub.Score(request, timeout=timeout or self.timeout)
        return ScoreResult(np.asarray(resp.probabilities, dtype=np.float32), resp.model_name, resp.model_version)

    def health(self, service: str = "") -> str:
        """``SERVING``, ``NOT_SERVING`` or ``SERVICE_UNKNOWN``."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "ScorerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
