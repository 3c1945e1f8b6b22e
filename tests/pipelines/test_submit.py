"""``ctr submit`` / ``ctr jobs`` against a real Ray head on 127.0.0.1 (job server included)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(tmp)}
    port, dash = _port(), _port()
    start = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4", "--include-dashboard=true",
             "--disable-usage-stats", f"--temp-dir={tmp}",
             # free ports for the per-node agents: another Ray in this session may hold the defaults
             f"--dashboard-agent-listen-port={_port()}", f"--dashboard-agent-grpc-port={_port()}",
             f"--metrics-export-port={_port()}", f"--runtime-env-agent-port={_port()}",
             f"--node-manager-port={_port()}", f"--object-manager-port={_port()}"]
    # --block keeps `ray start` in the foreground; its own process group is ours to end (no `ray stop`)
    head = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_job_server(address, head)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def _wait_for_job_server(address: str, head: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited {head.returncode}: {head.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"no Ray job server at {address} after {timeout_s}s")


def test_submit_runs_a_pipeline_on_the_cluster_and_registers_the_model(ray_head, tmp_path, capsys):
    doc = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path)
    doc["train"].update(epochs=1)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert main(["submit", str(spec_file), "--address", ray_head, "--workers", "2", "--tracking-uri", uri,
                 "--python", sys.executable, "--wait", "400"]) == 0, capsys.readouterr()
    job_id = capsys.readouterr().out.split()[1]
    assert main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["jobs", "list", "--address", ray_head]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    logs = capsys.readouterr().out
    assert "stack matches: torch==" in logs and "2 worker(s)" in logs and "models:/ctr-tiny/1" in logs
    from pipelines.registry import list_versions

    versions = list_versions(uri, "ctr-tiny")
    assert [v.version for v in versions] == ["1"] and versions[0].test_auc


def test_jobs_errors_are_one_line(ray_head, capsys):
    assert main(["jobs", "status", "no-such-job", "--address", ray_head]) == 2
    assert "no job 'no-such-job'" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", f"http://127.0.0.1:{_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctr: error: no Ray job server at") and "Traceback" not in err
