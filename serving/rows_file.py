"""``ctr score``: send the rows of a JSON-lines file to a running scorer, in batches.

Each input line is one JSON object of raw feature values (``{"C1": "68fd1e64", "I1": 3}``);
the output has one ``{"probability": p}`` line per input line, in order, plus the model name and
version on the first line's object. Bad lines and server errors become one-line :class:`CtrError`s
that name the file and line (or the server's status and message).
"""

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc

from ctr.errors import CtrError, DataError
from serving.client import ScorerClient


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-empty line; raises DataError naming the line."""
    p = Path(path)
    if not p.is_file():
        raise DataError("input file not found", file=str(p))
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg})", file=str(p), line=n) from None
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object of feature values, got {type(row).__name__}",
                                file=str(p), line=n)
            yield n, row


def score_file(addr: str, input_path: str, output_path: str | None, batch_size: int = 512,
               timeout: float = 30.0, tls: dict | None = None) -> int:
    """Score every row of ``input_path``; returns the number of rows scored.

    ``tls``: ``tls_ca`` / ``tls_cert`` / ``tls_key`` file paths for :class:`~serving.client.ScorerClient`.
    """
    out = open(output_path, "w") if output_path else sys.stdout  # noqa: SIM115 - closed below
    count = 0
    try:
        with ScorerClient(addr, timeout=timeout, **(tls or {})) as client:
            batch: list[tuple[int, dict]] = []
            for item in read_rows(input_path):
                batch.append(item)
                if len(batch) >= batch_size:
                    count += _send(client, batch, out, input_path, first=count == 0)
                    batch = []
            if batch:
                count += _send(client, batch, out, input_path, first=count == 0)
    finally:
        if out is not sys.stdout:
            out.close()
    if count == 0:
        raise DataError("no rows to score (the file is empty)", file=str(input_path))
    return count


def _send(client: ScorerClient, batch: list[tuple[int, dict]], out, path: str, first: bool) -> int:
    try:
        result = client.score([row for _, row in batch])
    except grpc.RpcError as exc:
        lines = f"lines {batch[0][0]}-{batch[-1][0]}"
        raise CtrError(f"{path} {lines}: scorer answered {exc.code().name}: {exc.details()}") from None
    except TypeError as exc:
        raise DataError(str(exc), file=str(path), line=batch[0][0]) from None
    for i, p in enumerate(result.probabilities):
        obj = {"probability": float(p)}
        if first and i == 0:
            obj.update(model_name=result.model_name, model_version=result.model_version)
        out.write(json.dumps(obj) + "\n")
    return len(batch)
