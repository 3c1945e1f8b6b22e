"""`ctr serve` and `ctr score` as processes: JSON-lines scoring, clear errors, SIGTERM drains and exits 0."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctr.export.bundle import load_bundle

pytestmark = pytest.mark.slow
CTR = [sys.executable, "-m", "pipelines.cli"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(bundle_factory):
    bundle = bundle_factory("autoint_plus")
    proc = subprocess.Popen([*CTR, "serve", "--model", str(bundle), "--port", "0", "--no-compile",
                             "--poll-seconds", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        pytest.fail(f"ctr serve did not start: {line}{proc.stderr.read()[-2000:]}")
    addr = line.split("listening on ")[1].split(",")[0].strip()
    yield proc, addr, bundle
    if proc.poll() is None:
        proc.kill()


def _ctr(*args):
    return subprocess.run([*CTR, *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_score_jsonl_equals_offline(served, raw_rows, tmp_path):
    _, addr, bundle = served
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in raw_rows[:300]))
    out = tmp_path / "scores.jsonl"
    res = _ctr("score", "--addr", addr, "--input", str(src), "--output", str(out), "--batch-size", "128")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 300 and lines[0]["model_version"] == "local"
    got = np.array([x["probability"] for x in lines])
    np.testing.assert_allclose(got, load_bundle(bundle).score(raw_rows[:300]), atol=0.01)


def test_score_errors_are_one_line(served, raw_rows, tmp_path):
    _, addr, _ = served
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(raw_rows[0]) + "\n{not json\n")
    res = _ctr("score", "--addr", addr, "--input", str(bad_json))
    assert res.returncode == 2 and "line 2" in res.stderr and "Traceback" not in res.stderr
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({**raw_rows[0], "colour": "red"}) + "\n")
    res = _ctr("score", "--addr", addr, "--input", str(unknown))
    assert res.returncode == 2 and "INVALID_ARGUMENT" in res.stderr and "'colour'" in res.stderr
    assert "Traceback" not in res.stderr


def test_sigterm_drains_and_exits_zero(served):
    proc, _, _ = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert '"event": "stopped"' in proc.stderr.read()
