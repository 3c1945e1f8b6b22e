"""The ``ctr.scoring.v1.Scorer`` servicer: protobuf ↔ rows, ``CtrError.grpc_status`` → status code.

Decoding rules (``protos/ctr/scoring/v1/scorer.proto``): each ``Value`` becomes the Python value
of its set field (lists for the ``*_list`` kinds, ``None`` when no field is set). ``context``
features are added to every example; a feature in both is an error. Everything about the values
themselves (types per field kind, unknown or missing features) is checked by the scorer's
:class:`~ctr.features.row_encoder.RowEncoder`. Logs carry the status and the field name, never
request values.
"""

import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ctr.errors import CtrError, InvalidRequestError
from serving._proto import scorer_pb2, scorer_pb2_grpc
from serving.batcher import MicroBatcher
from serving.metrics import ScorerMetrics
from serving.model_store import ModelStore

log = logging.getLogger("ctr.serving")
SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
_LISTS = ("int64_list", "double_list", "string_list")


@dataclass(frozen=True)
class RequestLimits:
    """Args:
        max_examples (int): most examples per request (more → INVALID_ARGUMENT).
        timeout_s (float): longest a request may take, whatever deadline the client set (or none).
    """

    max_examples: int = 4096
    timeout_s: float = 10.0


def parse_request(data) -> scorer_pb2.ScoreRequest:
    """Raw request bytes (or an already parsed message) → ScoreRequest; InvalidRequestError if unparseable."""
    if isinstance(data, scorer_pb2.ScoreRequest):
        return data
    try:
        return scorer_pb2.ScoreRequest.FromString(data)
    except DecodeError:
        raise InvalidRequestError("the request is not a valid ctr.scoring.v1.ScoreRequest (bad wire format or "
                                  "a string that is not UTF-8)", field="request") from None


def decode_value(value: scorer_pb2.Value):
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind in _LISTS:
        return list(getattr(value, kind).values)
    return getattr(value, kind)


def decode_parts(request: scorer_pb2.ScoreRequest, limits: RequestLimits) -> tuple[dict, list[dict]]:
    """(context, example rows) of raw values; InvalidRequestError for empty/oversize requests and for a
    feature given both in the context and in an example."""
    n = len(request.examples)
    if n == 0:
        raise InvalidRequestError("the request has no examples; send at least one in `examples`", field="examples")
    if n > limits.max_examples:
        raise InvalidRequestError(f"the request has {n} examples, more than the server's limit of "
                                  f"{limits.max_examples}; split it", field="examples")
    context = {k: decode_value(v) for k, v in request.context.features.items()}
    rows = []
    for i, example in enumerate(request.examples):
        row = {k: decode_value(v) for k, v in example.features.items()}
        both = context.keys() & row.keys()
        if both:
            name = sorted(both)[0]
            raise InvalidRequestError(f"example {i}: feature {name!r} is given both in the context and in the "
                                      "example; send it once", field=name, example=i)
        rows.append(row)
    return context, rows


def decode_request(request: scorer_pb2.ScoreRequest, limits: RequestLimits) -> list[dict]:
    """Rows of raw values with the context merged into each (see :func:`decode_parts`)."""
    context, rows = decode_parts(request, limits)
    return [{**row, **context} for row in rows] if context else rows


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    """Score: parse → decode → scorer.encode (validation) → micro-batched model → response.

    Registered through :meth:`rpc_handler`, which hands the servicer the request's raw bytes so
    that a message protobuf cannot parse (bad wire format, invalid UTF-8 in a string) is answered
    with INVALID_ARGUMENT rather than grpc's generic INTERNAL deserialisation failure.
    """

    def __init__(self, store: ModelStore, batcher: MicroBatcher, metrics: ScorerMetrics,
                 limits: RequestLimits = RequestLimits()) -> None:
        self.store, self.batcher, self.metrics, self.limits = store, batcher, metrics, limits

    def _score_context(self, request, scorer):
        """DIN-style request: one user context with many candidates, history embedded once."""
        context, rows = decode_parts(request, self.limits)
        self.metrics.examples.observe(len(rows))
        probs = scorer.score_with_context(context, rows)
        if not np.isfinite(probs).all():
            raise InvalidRequestError("a score is not finite; a numeric feature value is out of the range this "
                                      "model can take")
        return probs

    @staticmethod
    def _safe_fields(scorer) -> set[str]:
        return {"-", "request", "examples", "model_name", *scorer.feature_names}

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.Score, request_deserializer=None, response_serializer=scorer_pb2.ScoreResponse.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Score": method})

    def Score(self, request, context):  # noqa: N802 - gRPC method name
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        scorer = self.store.current  # the version this request is answered by, even across a swap
        try:
            request = parse_request(request)
            if request.context.features and scorer.takes_context(request.context.features):
                probs = self._score_context(request, scorer)
                return scorer_pb2.ScoreResponse(probabilities=probs.tolist(), model_name=scorer.version.name,
                                                model_version=scorer.version.version)
            rows = decode_request(request, self.limits)
            self.metrics.examples.observe(len(rows))
            if request.model_name and request.model_name != scorer.version.name:
                raise InvalidRequestError(f"this server serves {scorer.version.name!r}, not "
                                          f"{request.model_name!r}", field="model_name")
            cols = scorer.encode(rows)
            remaining = context.time_remaining()
            timeout = self.limits.timeout_s if remaining is None else min(remaining, self.limits.timeout_s)
            probs = self.batcher.submit(scorer, cols, timeout=timeout)
            return scorer_pb2.ScoreResponse(probabilities=probs.tolist(), model_name=scorer.version.name,
                                            model_version=scorer.version.version)
        except CtrError as exc:
            code = getattr(grpc.StatusCode, exc.grpc_status, grpc.StatusCode.INTERNAL)
            field = exc.context.get("field", "-")
            if field not in self._safe_fields(scorer):  # a sender-chosen name is payload: never log it
                field = "<not a schema feature>"
            log.info("Score -> %s (field %s)", code.name, field)
            context.abort(code, str(exc))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("Score failed")
            context.abort(code, "internal error while scoring; see the server log")
        finally:
            self.metrics.requests.labels(code.name).inc()
            self.metrics.latency.observe(time.perf_counter() - start)
