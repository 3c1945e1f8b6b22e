"""MLflow servers with authentication: their 401/403 refusals as one-line :class:`TrackingAuthError` s.

Used by :mod:`pipelines.tracking` and :mod:`pipelines.registry` around every call that reaches a server.
"""

import re
from contextlib import contextmanager

from ctr.errors import CtrError


class TrackingAuthError(CtrError):
    """An MLflow server with authentication refused the request (HTTP 401 or 403).

    Example: ``ctr run`` against ``mlflow server --app-name basic-auth`` without
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
    """


def _redacted(uri: str) -> str:
    """``uri`` without a ``user:password@`` part."""
    return re.sub(r"//[^/@]*@", "//", uri)


def auth_error(exc: BaseException, uri: str) -> TrackingAuthError | None:
    """The one-line error for an MLflow 401/403 response, or None for any other exception.

    Example: ``auth_error(MlflowException(..., error_code=UNAUTHENTICATED), "http://mlflow:5000")``
    says to set ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``.
    """
    code = getattr(exc, "error_code", "")
    where = f"the MLflow server at {_redacted(uri)}"
    if code == "UNAUTHENTICATED":
        return TrackingAuthError(f"{where} refused the request: not authenticated (HTTP 401); set "
                                 "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the credentials of "
                                 "a user of that server (they are missing or wrong)")
    if code == "PERMISSION_DENIED":
        return TrackingAuthError(f"{where} refused the request: the user in MLFLOW_TRACKING_USERNAME lacks the "
                                 "permission (HTTP 403); ask an MLflow admin for EDIT on the experiment and the "
                                 "registered model, or choose another register.experiment / register.model_name")
    return None


@contextmanager
def auth_errors(uri: str):
    """Turn MLflow's 401/403 inside the block into :class:`TrackingAuthError` (one line, no traceback)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        err = auth_error(exc, uri)
        if err is None:
            raise
        raise err from None
