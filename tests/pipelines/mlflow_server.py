"""A real ``mlflow server`` on 127.0.0.1 for tests, on the PostgreSQL that ``.ci/run`` starts.

``.ci/run`` sets ``CTR_TEST_POSTGRES_URI``; without it (or with no server answering) the tests skip
with the reason.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

PG = os.environ.get("CTR_TEST_POSTGRES_URI")


def postgres_or_skip() -> str:
    """The test PostgreSQL URI (``postgresql+psycopg2://...``), or skip saying why there is none."""
    if not PG:
        pytest.skip("no PostgreSQL: set CTR_TEST_POSTGRES_URI (.ci/run starts one on 127.0.0.1)")
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed")
    try:
        psycopg2.connect(PG, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG} is not reachable ({str(exc).strip().splitlines()[0]})")
    return PG.replace("postgresql://", "postgresql+psycopg2://")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(args: list[str], env: dict[str, str] | None = None, wait_s: float = 120):
    """Run ``mlflow server --host 127.0.0.1 --port P ARGS...``; yield its URL once ``/health`` answers."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not come up in {wait_s:.0f} s")
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # uvicorn may linger over open connections
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
