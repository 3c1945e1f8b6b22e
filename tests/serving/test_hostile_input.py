"""Hostile input: the atheris fuzz target runs for 60 s, and hypothesis drives raw values through the scorer.

Every case must end in finite scores or InvalidRequestError (INVALID_ARGUMENT) — never another
exception, a hang, or memory that grows with what the sender claims.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctr.errors import InvalidRequestError
from ctr.export.bundle import load_bundle
from serving.client import build_request
from serving.scorer import ModelVersion, Scorer
from serving.servicer import RequestLimits, decode_request, parse_request

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = int(os.environ.get("CTR_FUZZ_SECONDS", "60"))


def test_fuzz_target_runs_without_crash(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_score_request.py"),
                           f"-max_total_time={FUZZ_SECONDS}", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/"],
                          check=False, capture_output=True, text=True, timeout=FUZZ_SECONDS + 240,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "DONE" in proc.stderr and "crash-" not in tail
    runs = int(proc.stderr.rsplit("Done ", 1)[1].split()[0])
    assert runs > 1000, tail  # it really fuzzed


@pytest.fixture(scope="module")
def scorer(bundle_factory):
    return Scorer(load_bundle(bundle_factory("autoint_plus")), ModelVersion("m", "1"), "int8")


def _outcome(scorer, rows, context=None, untouched=()):
    """Finite scores, or InvalidRequestError; any other exception fails the test. A finite but huge numeric
    value (e.g. -1e20 under a transform that keeps negatives) may give a non-finite score: the server's
    micro-batcher refuses that request alone with INVALID_ARGUMENT (``serving/batcher.py``), so it counts as
    a refusal here, but the rows at the indices ``untouched`` must still score finitely beside it."""
    request = build_request(rows, context=context)
    try:
        got = scorer.predict(scorer.encode(decode_request(parse_request(request.SerializeToString()),
                                                          RequestLimits(max_examples=64))))
    except InvalidRequestError as exc:
        assert exc.grpc_status == "INVALID_ARGUMENT"
        return None
    assert got.shape == (len(rows),) and np.isfinite(got[list(untouched)]).all()
    return got if np.isfinite(got).all() else None


scalars = st.one_of(
    st.none(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=50),
    st.integers(1, 200_000).map(lambda n: "7" * n),  # huge strings (digits: also huge "numbers")
    st.sampled_from(["nan", "inf", "-inf", "1e400", "1_000", " 12 ", "0x10", "", "\u00e9t\u00e9", "\x00"]))
lists = st.one_of(st.lists(st.text(max_size=20), max_size=30), st.lists(st.integers(-10**18, 10**18), max_size=30),
                  st.lists(st.floats(), max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_random_values_end_in_a_score_or_invalid_argument(scorer, raw_rows, data):
    base = raw_rows[data.draw(st.integers(0, len(raw_rows) - 1))]
    n_changed = data.draw(st.integers(0, 5))
    row = dict(base)
    for _ in range(n_changed):
        name = data.draw(st.sampled_from(sorted(base)) | st.text(min_size=1, max_size=8))
        row[name] = data.draw(scalars | lists)
    if data.draw(st.booleans()):  # drop a feature
        row.pop(data.draw(st.sampled_from(sorted(row))))
    _outcome(scorer, [row, base], untouched=[1])  # one hostile row never spoils another row's score


def test_named_hostile_cases(scorer, raw_rows):
    row = raw_rows[0]
    assert _outcome(scorer, [{**row, "C1": "x" * 5_000_000}]) is not None  # huge string: an unseen category
    assert _outcome(scorer, [{**row, "C1": "\u0000\u202e"}]) is not None
    assert _outcome(scorer, [{**row, "I1": float("nan")}]) is not None
    assert _outcome(scorer, [{**row, "I1": float("inf")}]) is None
    _outcome(scorer, [{**row, "I1": 1e308}])  # finite input: a finite score or a clear refusal
    _outcome(scorer, [{**row, "I1": -1.0258e20}, row], untouched=[1])  # found by hypothesis: log_square keeps it
    assert _outcome(scorer, [row] * 65) is None  # more candidates than the limit
    assert _outcome(scorer, [row], context={"C1": "dup"}) is None  # duplicated feature (context and example)
    assert _outcome(scorer, [{**row, "unknown": 1}]) is None


def test_millions_of_candidates_are_refused_before_any_work(raw_rows):
    from serving._proto import scorer_pb2

    one = build_request(raw_rows[:1]).examples[0]
    request = scorer_pb2.ScoreRequest(examples=[one] * 200_000)
    with pytest.raises(InvalidRequestError, match="more than the server's limit of 4096"):
        decode_request(request, RequestLimits())


def test_payloads_never_reach_the_logs(bundle_factory, raw_rows, caplog):
    import logging

    import grpc

    from serving.client import ScorerClient
    from serving.server import ScoringServer, ServerSettings

    secret = "SECRET-PAYLOAD-9f3a"
    srv = ScoringServer(ServerSettings(model=str(bundle_factory("deepfm")), port=0, poll_seconds=0)).start()
    try:
        with caplog.at_level(logging.DEBUG, logger="ctr"), ScorerClient(f"127.0.0.1:{srv.port}") as c:
            c.score([{**raw_rows[0], "C2": secret}])
            for bad in ({**raw_rows[0], "I3": secret}, {**raw_rows[0], secret: 1}, {**raw_rows[0], "C4": [secret]}):
                with pytest.raises(grpc.RpcError):
                    c.score([bad])
    finally:
        srv.stop(0)
    assert caplog.records and secret not in caplog.text


def test_a_non_finite_score_is_refused_over_grpc_for_that_request_alone(scorer, bundle_factory, raw_rows):
    """What ``_outcome`` counts as a refusal: a finite but huge value whose score is not finite gets
    INVALID_ARGUMENT from the server (its micro-batcher), and the server keeps serving other requests."""
    import grpc

    from serving.client import ScorerClient
    from serving.server import ScoringServer, ServerSettings

    huge = {**raw_rows[0], "I1": -3e38}  # finite in float32; log_square keeps negatives as they are
    request = build_request([huge, raw_rows[0]])
    got = scorer.predict(scorer.encode(decode_request(parse_request(request.SerializeToString()), RequestLimits())))
    assert not np.isfinite(got[0]) and np.isfinite(got[1])  # the premise: this value overflows the model
    srv = ScoringServer(ServerSettings(model=str(bundle_factory("autoint_plus")), port=0, quant="int8",
                                       poll_seconds=0)).start()
    try:
        with ScorerClient(f"127.0.0.1:{srv.port}") as c:
            with pytest.raises(grpc.RpcError) as exc:
                c.score([huge])
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not finite" in exc.value.details()
            assert np.isfinite(c.score(raw_rows[:3]).probabilities).all()  # still serving
    finally:
        srv.stop(0)
