"""Ray token authentication (what deploy/kuberay turns on): `ctr jobs` without the token is one line, with it works.

A real ``ray start --head`` on 127.0.0.1 with ``RAY_AUTH_MODE=token``; ``ctr`` runs as a subprocess
because Ray reads its auth mode once per process.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.pipelines.mlflow_server import free_port

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def token_head():
    """(job server URL, token) of a one-CPU Ray head that requires the token."""
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    dash = free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=1", "--include-dashboard=true",
           "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited {head.returncode}: {head.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/jobs/", timeout=2)
                pytest.fail("the job server answered without a token")
            except urllib.error.HTTPError as exc:  # the server is up and refuses: what we wait for
                assert exc.code == 401
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the Ray job server did not come up in 180 s")
                time.sleep(1)
        yield url, token
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # our own process group, not `ray stop` (other Rays may run)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def _ctr(args: list[str], **env: str) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[2])  # this checkout's pipelines/, whatever the venv points at
    env = {**os.environ, "PYTHONPATH": root, **env}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("env", [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}],
                         ids=["no-token", "wrong-token"])
def test_jobs_without_the_token_is_one_line_naming_the_variables(token_head, env):
    url, token = token_head
    got = _ctr(["jobs", "list", "--address", url], **env)
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctr: error: the Ray job server at")
    assert "RAY_AUTH_MODE=token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0] and token not in lines[0]


def test_jobs_with_the_token_reach_the_job_server(token_head):
    url, token = token_head
    got = _ctr(["jobs", "list", "--address", url], RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    assert got.returncode == 0, got.stderr
    missing = _ctr(["jobs", "status", "no-such-job", "--address", url], RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    assert missing.returncode == 2 and "no job 'no-such-job'" in missing.stderr  # authenticated, then a real answer
