"""Fixtures for the data-layer tests: small files written into tmp_path and the shared data folder."""

import os
from pathlib import Path

import pytest


@pytest.fixture
def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (or ``$CTR_SHARED_DATA``); skips when absent."""
    default = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
    path = Path(os.environ.get("CTR_SHARED_DATA", default)).resolve()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set CTR_SHARED_DATA)")
    return path


@pytest.fixture
def write(tmp_path):
    """write(name, text or bytes) → path of a new file under tmp_path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(content, str):
            path.write_bytes(content.encode())
        else:
            path.write_bytes(content)
        return path

    return _write
