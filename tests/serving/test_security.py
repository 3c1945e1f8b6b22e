"""Security of the scorer: TLS and mutual TLS, tampered or foreign bundles refused, no code run from the registry,
unparseable requests answered INVALID_ARGUMENT."""

import datetime
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ctr.errors import ArtifactError, CtrError, SchemaMismatchError
from ctr.export.bundle import load_bundle
from serving._proto import scorer_pb2
from serving.client import ScorerClient, build_request
from serving.server import ScoringServer, ServerSettings
from tests.serving.conftest import register_bundle

pytestmark = pytest.mark.slow
NAME = "ctr-security-test"


# ------------------------------------------------------------------ a throw-away PKI
def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_key, subject: str, issuer_key=None, issuer: str | None = None, ca: bool = False,
          ip: str | None = None):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
               .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key or subject_key, hashes.SHA256())


def _write(path: Path, key=None, cert=None) -> str:
    from cryptography.hazmat.primitives import serialization

    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca, other_ca = _cert(ca_key, "ctr test CA", ca=True), _cert(other_key, "someone else's CA", ca=True)
    srv_key, cli_key, rogue_key = _key(), _key(), _key()
    return {
        "ca": _write(d / "ca.pem", cert=ca),
        "server_cert": _write(d / "server.pem", cert=_cert(srv_key, "scorer", ca_key, "ctr test CA", ip="127.0.0.1")),
        "server_key": _write(d / "server.key", key=srv_key),
        "client_cert": _write(d / "client.pem", cert=_cert(cli_key, "client", ca_key, "ctr test CA")),
        "client_key": _write(d / "client.key", key=cli_key),
        "rogue_cert": _write(d / "rogue.pem", cert=_cert(rogue_key, "rogue", other_key, "someone else's CA")),
        "rogue_key": _write(d / "rogue.key", key=rogue_key),
        "other_ca": _write(d / "other_ca.pem", cert=other_ca),
    }


def _start(bundle, **kw) -> ScoringServer:
    return ScoringServer(ServerSettings(model=str(bundle), port=0, poll_seconds=0, grace_seconds=1, **kw)).start()


def _refused(addr: str, rows, **client_kw) -> grpc.StatusCode:
    with ScorerClient(addr, timeout=3, **client_kw) as c, pytest.raises(grpc.RpcError) as err:
        c.score(rows)
    return err.value.code()


def test_tls_server(bundle_factory, raw_rows, pki):
    srv = _start(bundle_factory("deepfm"), tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    addr = f"127.0.0.1:{srv.port}"
    try:
        with ScorerClient(addr, tls_ca=pki["ca"]) as c:
            assert len(c.score(raw_rows[:3]).probabilities) == 3
        assert _refused(addr, raw_rows[:1]) == grpc.StatusCode.UNAVAILABLE  # plaintext client
        assert _refused(addr, raw_rows[:1], tls_ca=pki["other_ca"]) == grpc.StatusCode.UNAVAILABLE  # untrusted server
    finally:
        srv.stop(0)


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(bundle_factory, raw_rows, pki):
    srv = _start(bundle_factory("deepfm"), tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                 tls_client_ca=pki["ca"])
    addr = f"127.0.0.1:{srv.port}"
    try:
        assert _refused(addr, raw_rows[:1], tls_ca=pki["ca"]) == grpc.StatusCode.UNAVAILABLE  # no client cert
        assert _refused(addr, raw_rows[:1], tls_ca=pki["ca"], tls_cert=pki["rogue_cert"],
                        tls_key=pki["rogue_key"]) == grpc.StatusCode.UNAVAILABLE  # cert from another CA
        with ScorerClient(addr, tls_ca=pki["ca"], tls_cert=pki["client_cert"], tls_key=pki["client_key"]) as c:
            assert len(c.score(raw_rows[:2]).probabilities) == 2
    finally:
        srv.stop(0)


def test_tls_settings_errors(bundle_factory, pki, tmp_path):
    with pytest.raises(CtrError, match="needs both --tls-cert and --tls-key"):
        _start(bundle_factory("lr"), tls_cert=pki["server_cert"])
    (tmp_path / "x.pem").write_text("not a certificate")
    with pytest.raises(CtrError, match="not a PEM file"):
        _start(bundle_factory("lr"), tls_cert=str(tmp_path / "x.pem"), tls_key=pki["server_key"])


# ------------------------------------------------------------------ bundles as data, never code
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_or_foreign_bundles_are_refused(bundle_factory, tmp_path):
    src = bundle_factory("dnn")
    weights = _copy(src, tmp_path / "weights")
    with open(weights / "model.pt", "r+b") as f:
        f.seek(-20, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ArtifactError, match="model.pt: checksum differs"):
        load_bundle(weights)
    features = _copy(src, tmp_path / "features")
    vocab = features / "features" / "vocab.parquet"
    vocab.write_bytes(vocab.read_bytes() + b"\x00")
    with pytest.raises(ArtifactError, match="vocab.parquet"):
        load_bundle(features)
    foreign = _copy(src, tmp_path / "foreign")
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["versions"]["torchrec"] = "0.9.0"
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"exported with torchrec 0.9.0 \(installed 1.8.0\)"):
        load_bundle(foreign)
    swapped = _copy(src, tmp_path / "swapped")  # the feature artifact of another model
    shutil.rmtree(swapped / "features")
    shutil.copytree(bundle_factory("lr") / "features", swapped / "features")
    manifest = json.loads((swapped / "manifest.json").read_text())
    manifest["feature_hash"] = "0" * 64
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaMismatchError, match="feature artifact hash"):
        load_bundle(swapped)


def _artifact_dir(tracking_uri: str, name: str, version: str) -> Path:
    """Local folder of a registered version's MLflow model (file artifact store)."""
    import mlflow

    source = mlflow.MlflowClient(tracking_uri).get_model_version_download_uri(name, version)
    path = Path(source.removeprefix("file://"))
    assert path.is_dir(), source
    return path


def test_registry_versions_are_loaded_as_data_and_tampered_ones_refused(bundle_factory, raw_rows, tracking_uri,
                                                                        tmp_path):
    import mlflow

    marker = tmp_path / "code-was-executed"
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
    rows = raw_rows[:10]
    client = mlflow.MlflowClient(tracking_uri)

    # v1: a good bundle, but the registered model's Python files (pyfunc code and a planted module
    # inside the bundle) would write the marker if anything imported them
    v1 = register_bundle(tracking_uri, NAME, bundle_factory("deepfm", seed=0))
    model_dir = _artifact_dir(tracking_uri, NAME, v1)
    for py in model_dir.rglob("*.py"):
        py.write_text(evil + py.read_text())
    bundle_dir = next(p.parent for p in model_dir.rglob("manifest.json") if (p.parent / "model.pt").exists())
    (bundle_dir / "__init__.py").write_text(evil)
    (bundle_dir / "model.py").write_text(evil)
    client.set_registered_model_alias(NAME, "champion", v1)
    srv = ScoringServer(ServerSettings(model=f"models:/{NAME}@champion", tracking_uri=tracking_uri, port=0,
                                       poll_seconds=0.2, grace_seconds=1)).start()
    try:
        with ScorerClient(f"127.0.0.1:{srv.port}") as c:
            before = c.score(rows)
            assert before.model_version == v1 and not marker.exists()
            # v2 and v3: tampered weights, tampered feature artifact — both refused, v1 keeps serving
            for what, tamper in (("weights", "model.pt"), ("features", "features/numeric.json")):
                v = register_bundle(tracking_uri, NAME, bundle_factory("deepfm", seed=1))
                target = next(_artifact_dir(tracking_uri, NAME, v).rglob(tamper))
                target.write_bytes(target.read_bytes()[:-4] + b"\x01\x02\x03\x04")
                client.set_registered_model_alias(NAME, "champion", v)
                end = time.time() + 120
                while v not in srv.store.policy.refused and time.time() < end:
                    time.sleep(0.05)
                assert v in srv.store.policy.refused, f"tampered {what} not refused"
                after = c.score(rows)
                assert after.model_version == v1
                np.testing.assert_array_equal(after.probabilities, before.probabilities)
        assert not marker.exists()
    finally:
        srv.stop(0)


# ------------------------------------------------------------------ requests protobuf cannot parse
@pytest.fixture(scope="module")
def plain_server(bundle_factory):
    srv = _start(bundle_factory("deepfm"))
    yield srv
    srv.stop(0)


def _raw_call(port: int, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ctr.scoring.v1.Scorer/Score", request_serializer=None,
                                   response_deserializer=scorer_pb2.ScoreResponse.FromString)
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=5)
    return err.value


def test_unparseable_requests_are_invalid_argument(plain_server, raw_rows):
    good = build_request([{**raw_rows[0], "C1": "AAAAAAAA"}]).SerializeToString()
    not_utf8 = good.replace(b"AAAAAAAA", b"\xff\xfe\xfd\xfc\xff\xfe\xfd\xfc")
    for payload in (not_utf8, b"\xff" * 64, good[:-3]):
        err = _raw_call(plain_server.port, payload)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in err.details()
    with ScorerClient(f"127.0.0.1:{plain_server.port}") as c:
        assert len(c.score(raw_rows[:2]).probabilities) == 2


def test_non_finite_numbers_are_invalid_argument(plain_server, raw_rows):
    with ScorerClient(f"127.0.0.1:{plain_server.port}") as c:
        for bad in (float("inf"), float("-inf"), "1e400", "9" * 100):
            with pytest.raises(grpc.RpcError) as err:
                c.score([{**raw_rows[0], "I1": bad}])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'I1'" in err.value.details()
        nan = c.score([{**raw_rows[0], "I1": float("nan")}]).probabilities[0]
        missing = c.score([{**raw_rows[0], "I1": None}]).probabilities[0]
        assert nan == missing  # NaN is a missing value, as in training
