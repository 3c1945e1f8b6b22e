"""MLflow with authentication (the basic-auth app of deploy/mlflow) on PostgreSQL: who may register a model.

A real ``mlflow server --app-name basic-auth`` on 127.0.0.1, its tracking store and user store on the
PostgreSQL that ``.ci/run`` starts, configured by ``deploy/mlflow/basic_auth.ini`` with the admin's
credentials from the environment. Without ``CTR_TEST_POSTGRES_URI`` this skips.
"""

import configparser
import json
import secrets
import uuid
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.pipelines.mlflow_server import mlflow_server, postgres_or_skip

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """(url, admin user, admin password) of a basic-auth server configured by deploy/mlflow/basic_auth.ini."""
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs Flask-WTF (mlflow[auth], in constraints.txt)")
    backend = postgres_or_skip()
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    ini = configparser.ConfigParser()
    ini.read(ROOT / "deploy" / "mlflow" / "basic_auth.ini")
    assert "password" not in ini["mlflow"] and "admin_password" not in ini["mlflow"]
    ini["mlflow"]["database_uri"] = backend  # the deploy's host `postgres` is this test's 127.0.0.1 server
    with open(tmp / "basic_auth.ini", "w") as f:
        ini.write(f)
    admin, password = f"admin-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)  # a fresh admin per run
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": admin,
           "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with mlflow_server(["--app-name", "basic-auth", "--backend-store-uri", backend, "--serve-artifacts",
                        "--artifacts-destination", (tmp / "artifacts").as_uri()], env) as url:
        yield url, admin, password


def _login(monkeypatch, user: str | None, password: str | None) -> None:
    for var, value in zip(CREDENTIALS, (user, password), strict=True):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ctr: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _add_user(url: str, admin: tuple[str, str], monkeypatch) -> tuple[str, str]:
    from mlflow.server import get_app_client

    user, password = f"u-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    _login(monkeypatch, *admin)
    get_app_client("basic-auth", tracking_uri=url).create_user(user, password)
    return user, password


@pytest.mark.parametrize("password", [None, "wrong-password-123"])
def test_a_client_without_valid_credentials_cannot_register_a_model(auth_server, monkeypatch, password):
    import mlflow
    from mlflow.exceptions import MlflowException

    url, admin, admin_password = auth_server
    name = f"ctr-auth-{uuid.uuid4().hex[:8]}"
    _login(monkeypatch, None if password is None else admin, password)
    with pytest.raises(MlflowException) as caught:
        mlflow.MlflowClient(url).create_registered_model(name)
    assert caught.value.error_code == "UNAUTHENTICATED" and caught.value.get_http_status_code() == 401
    _login(monkeypatch, admin, admin_password)  # the admin sees that nothing was registered
    with pytest.raises(MlflowException) as missing:
        mlflow.MlflowClient(url).get_registered_model(name)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.parametrize("password", [None, "wrong-password-123"])
def test_ctr_run_without_valid_credentials_is_one_line_saying_what_to_set(auth_server, tiny_spec_file, monkeypatch,
                                                                        capsys, password):
    url, admin, _ = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    _login(monkeypatch, None if password is None else admin, password)
    assert main(["run", str(tiny_spec_file), "--set", "train.epochs=1"]) == 2
    line = _error_line(capsys)
    assert "401" in line and "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line, line
    assert password is None or password not in line
    assert main(["models", "list"]) == 2  # every command that talks to the registry says the same
    assert "MLFLOW_TRACKING_PASSWORD" in _error_line(capsys)


def test_an_authenticated_ctr_run_registers_and_another_user_cannot_write_to_it(auth_server, tiny_spec_file, tmp_path,
                                                                                monkeypatch, capsys):
    import mlflow

    url, admin, admin_password = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    trainer = _add_user(url, (admin, admin_password), monkeypatch)
    name, experiment = f"ctr-auth-{uuid.uuid4().hex[:8]}", f"ctr-auth-{uuid.uuid4().hex[:8]}"
    sets = ["--set", "train.epochs=1", "--set", f"register.model_name={name}",
            "--set", f"register.experiment={experiment}"]
    out = tmp_path / "summary.json"
    _login(monkeypatch, *trainer)
    assert main(["run", str(tiny_spec_file), *sets, "--summary-json", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["model_uri"] == f"models:/{name}/1"

    _login(monkeypatch, admin, admin_password)  # checked as the admin, independently of ctr
    version = mlflow.MlflowClient(url).get_model_version(name, "1")
    assert version.run_id == summary["run_id"]

    reader = _add_user(url, (admin, admin_password), monkeypatch)  # default permission: READ
    _login(monkeypatch, *reader)
    assert main(["models", "list", "--name", name]) == 0  # reading is allowed
    assert summary["run_id"] in capsys.readouterr().out
    assert main(["run", str(tiny_spec_file), *sets]) == 2  # writing into the trainer's experiment is not
    line = _error_line(capsys)
    assert "403" in line and "permission" in line, line
    _login(monkeypatch, admin, admin_password)
    assert [v.version for v in mlflow.MlflowClient(url).search_model_versions(f"name='{name}'")] == ["1"]
