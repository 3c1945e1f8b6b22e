"""One exception root for the project; every message says what went wrong and how to fix it.

Each subclass carries the context a user needs (YAML path, file and line, field name) and a
``grpc_status`` name that transports (the gRPC servicer, the CLI) map to their own codes. All
errors are picklable so they can cross process boundaries (Ray workers, spawned ranks).
"""

from typing import Any


class CtrError(Exception):
    """Root of every error ``ctr`` raises on purpose (a user or environment mistake).

    Example: ``raise CtrError("cause ...; fix: ...")``. The CLI prints the message without a
    traceback and exits with status 2.
    """

    grpc_status = "INTERNAL"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls, message, context):
    err = cls.__new__(cls)
    CtrError.__init__(err, message, **context)
    for key, value in context.items():  # subclass attributes (DataError.line, ConfigError.path, ...)
        if key not in ("message", "context"):
            setattr(err, key, value)
    return err


class StackError(CtrError):
    """The installed torch / fbgemm_gpu / torchrec are not a known-good combination.

    Example: torchrec 1.8.0 beside fbgemm_gpu 1.9.0 (the CUDA build) crashes with an undefined
    symbol; we say which versions are installed and which set to install instead.
    """

    grpc_status = "FAILED_PRECONDITION"


class ConfigError(CtrError):
    """A pipeline spec or config value is wrong; the message names the YAML path.

    Example: ``model.dnn_hiden: unknown key; did you mean dnn_hidden?``
    """

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, path: str = "") -> None:
        full = f"{path}: {message}" if path else message
        super().__init__(full, path=path)
        self.path = path


class DataError(CtrError):
    """Input data is malformed; the message names the file, the line and the column if known.

    Example: ``data/train.txt line 17: expected 40 tab-separated fields, found 39``.
    """

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, file: str = "", line: int | None = None, column: str = "") -> None:
        where = file
        if line is not None:
            where += f" line {line}"
        if column:
            where += f" column {column!r}"
        full = f"{where.strip()}: {message}" if where.strip() else message
        super().__init__(full, file=file, line=line, column=column)
        self.file, self.line, self.column = file, line, column


class SchemaMismatchError(CtrError):
    """Saved artifacts (feature map, checkpoint, bundle) do not match the code or config loading them.

    Example: a checkpoint trained with 26 categorical fields loaded into a 13-field model.
    """

    grpc_status = "FAILED_PRECONDITION"


class ArtifactError(CtrError):
    """A saved artifact is missing, incomplete or from an incompatible version.

    Example: a bundle folder without ``manifest.json``.
    """

    grpc_status = "FAILED_PRECONDITION"


class InvalidRequestError(CtrError):
    """A scoring request is malformed (unknown field, wrong type); servers answer INVALID_ARGUMENT."""

    grpc_status = "INVALID_ARGUMENT"
