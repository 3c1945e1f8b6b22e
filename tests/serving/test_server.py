"""A real gRPC scorer on 127.0.0.1: scores, the bad-input matrix, deadlines, health, reflection, metrics, drain."""

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from ctr.export.bundle import load_bundle
from ctr.export.quantize import embedding_bytes
from serving._proto import scorer_pb2
from serving.client import ScorerClient, build_request, to_value
from serving.server import SERVICE_NAME, ScoringServer, ServerSettings
from tests.serving.conftest import MODEL_CONFIGS

pytestmark = pytest.mark.slow


def start(bundle, **kw) -> ScoringServer:
    settings = ServerSettings(model=str(bundle), port=0, metrics_port=kw.pop("metrics_port", None),
                              poll_seconds=0, grace_seconds=2, **kw)
    return ScoringServer(settings).start()


@pytest.fixture(scope="module")
def server(bundle_factory):
    srv = start(bundle_factory("deepfm"), metrics_port=0, max_examples=1000)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def client(server):
    with ScorerClient(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.mark.parametrize("model", list(MODEL_CONFIGS))
@pytest.mark.parametrize("quant, tol", [("none", 1e-6), ("int8", 0.01)])
def test_scores_equal_offline_predictions(bundle_factory, raw_rows, model, quant, tol):
    bundle = bundle_factory(model)
    offline = load_bundle(bundle).score(raw_rows)
    assert offline.std() > 0.02  # the weights make scores differ between rows
    srv = start(bundle, quant=quant)
    try:
        with ScorerClient(f"127.0.0.1:{srv.port}") as c:
            got = c.score(raw_rows)
        assert got.model_name == bundle.name and got.model_version == "local"
        assert got.probabilities.shape == offline.shape
        np.testing.assert_allclose(got.probabilities, offline, atol=tol, rtol=0)
        float_bytes = embedding_bytes(load_bundle(bundle).model)
        if quant == "int8":  # int8 rows carry 4 bytes of scale/bias and are 16-byte aligned: 4-wide rows gain nothing
            assert srv.store.current.embedding_bytes <= (float_bytes if model == "lr" else 0.7 * float_bytes)
        else:
            assert srv.store.current.embedding_bytes == float_bytes
    finally:
        srv.stop(0)


def test_context_features_are_shared_by_examples(client, raw_rows, bundle_factory):
    rows = raw_rows[:5]
    shared = {k: rows[0][k] for k in ("C1", "C2", "I1")}
    candidates = [{k: v for k, v in r.items() if k not in shared} for r in rows]
    merged = [{**c, **shared} for c in candidates]
    expected = client.score(merged).probabilities
    got = client.score(candidates, context=shared).probabilities
    np.testing.assert_array_equal(got, expected)
    assert got[0] == pytest.approx(client.score(rows[:1]).probabilities[0], abs=1e-6)


def _abort(client, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        client.score_request(request)
    return err.value


def _row_with(raw_rows, **changes):
    row = dict(raw_rows[0])
    for k, v in changes.items():
        if v is KeyError:
            row.pop(k)
        else:
            row[k] = v
    return row


@pytest.mark.parametrize("case, words", [
    ("unknown", "unknown feature 'colour'"),
    ("categorical_double", "'C3' is categorical"),
    ("numeric_text", "'I2' is numeric"),
    ("numeric_list", "'I2' is numeric"),
    ("missing", "required feature 'C7' is missing"),
    ("empty", "no examples"),
    ("oversize", "more than the server's limit of 1000"),
    ("context_twice", "'C1' is given both in the context and in the example"),
    ("wrong_model", "not 'some-other-model'"),
])
def test_bad_requests_are_invalid_argument_and_server_keeps_serving(client, raw_rows, case, words):
    good = build_request(raw_rows[:3])
    requests = {
        "unknown": build_request([_row_with(raw_rows, colour="red")]),
        "categorical_double": build_request([_row_with(raw_rows, C3=2.5)]),
        "numeric_text": build_request([_row_with(raw_rows, I2="twelve")]),
        "numeric_list": build_request([_row_with(raw_rows, I2=[1.0, 2.0])]),
        "missing": build_request([raw_rows[1], _row_with(raw_rows, C7=KeyError)]),
        "empty": scorer_pb2.ScoreRequest(),
        "oversize": build_request(raw_rows[:1] * 1001),
        "context_twice": build_request(raw_rows[:2], context={"C1": "x"}),
        "wrong_model": build_request(raw_rows[:1], model_name="some-other-model"),
    }
    err = _abort(client, requests[case])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()
    assert "Traceback" not in err.details()
    assert len(client.score_request(good).probabilities) == 3  # still serving


def test_missing_values_are_sent_as_empty_values(client, raw_rows):
    row = _row_with(raw_rows, C5=None, I4=None)
    request = build_request([row])
    assert request.examples[0].features["C5"] == scorer_pb2.Value()
    assert np.isfinite(client.score_request(request).probabilities).all()


def test_protobuf_json_request_from_a_third_party_client(client, raw_rows):
    from google.protobuf import json_format

    features = {k: ({"stringValue": v} if isinstance(v, str) else {"doubleValue": v} if v is not None else {})
                for k, v in raw_rows[0].items()}
    request = json_format.Parse('{"examples": [{"features": %s}]}' % __import__("json").dumps(features),
                                scorer_pb2.ScoreRequest())
    assert client.score_request(request).probabilities[0] == pytest.approx(
        client.score(raw_rows[:1]).probabilities[0], abs=1e-7)


def test_deadline_is_honoured(server, raw_rows):
    with ScorerClient(f"127.0.0.1:{server.port}") as c:
        with pytest.raises(grpc.RpcError) as err:
            c.score(raw_rows[:200], timeout=1e-4)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(c.score(raw_rows[:2]).probabilities) == 2


def test_health_and_reflection(server, client):
    assert client.health() == "SERVING" and client.health(SERVICE_NAME) == "SERVING"
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = db.get_services()
    assert SERVICE_NAME == "ctr.scoring.v1.Scorer" and SERVICE_NAME in services
    assert "grpc.health.v1.Health" in services
    fd = db.FindFileContainingSymbol(SERVICE_NAME)
    assert fd.package == "ctr.scoring.v1" and any(s.name == "Scorer" for s in fd.service)


def test_prometheus_metrics(server, client, raw_rows):
    client.score(raw_rows[:7])
    with pytest.raises(grpc.RpcError):
        client.score_request(scorer_pb2.ScoreRequest())
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    ok = _metric(text, 'ctr_requests_total{code="OK"}')
    bad = _metric(text, 'ctr_requests_total{code="INVALID_ARGUMENT"}')
    assert ok >= 1 and bad >= 1
    assert _metric(text, "ctr_request_latency_seconds_count") >= ok + bad
    assert _metric(text, "ctr_batch_rows_sum") >= 7
    assert f'ctr_model_info{{name="{server.store.current.version.name}",quant="int8",version="local"}} 1.0' in text


def _metric(text: str, key: str) -> float:
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{key} not in metrics")


def test_micro_batching_merges_concurrent_requests(bundle_factory, raw_rows):
    srv = start(bundle_factory("deepfm"), max_wait_ms=50, metrics_port=0)
    try:
        offline = load_bundle(bundle_factory("deepfm")).score(raw_rows[:16])
        results: dict[int, np.ndarray] = {}

        def one(i):
            with ScorerClient(f"127.0.0.1:{srv.port}") as c:
                results[i] = c.score(raw_rows[i * 2:i * 2 + 2]).probabilities

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = np.concatenate([results[i] for i in range(8)])
        np.testing.assert_allclose(got, offline, atol=0.01)  # every request got its own rows back
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read().decode()
        calls, rows = _metric(text, "ctr_batch_rows_count"), _metric(text, "ctr_batch_rows_sum")
        assert rows == 16 + 4 * 0 and calls < 8  # fewer model calls than requests
    finally:
        srv.stop(0)


def test_graceful_stop_drains_in_flight_requests(bundle_factory, raw_rows):
    srv = start(bundle_factory("deepfm"), max_wait_ms=400)  # the request waits in the batcher
    out: dict = {}

    def slow():
        with ScorerClient(f"127.0.0.1:{srv.port}") as c:
            try:
                out["result"] = c.score(raw_rows[:3])
            except grpc.RpcError as exc:  # pragma: no cover - the failure being tested
                out["error"] = exc.code()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.15)
    srv.stop(grace=5)
    t.join()
    assert "error" not in out and len(out["result"].probabilities) == 3
    with ScorerClient(f"127.0.0.1:{srv.port}", timeout=1) as c, pytest.raises(grpc.RpcError) as err:
        c.score(raw_rows[:1])
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_to_value_types():
    assert to_value("a").string_value == "a" and to_value(3).int64_value == 3
    assert to_value(2.5).double_value == 2.5 and to_value(None).WhichOneof("kind") is None
    assert list(to_value(["a", "b"]).string_list.values) == ["a", "b"]
    assert list(to_value([1, 2]).int64_list.values) == [1, 2]
    assert list(to_value([1.5, 2]).double_list.values) == [1.5, 2.0]
    with pytest.raises(TypeError):
        to_value({"a": 1})
