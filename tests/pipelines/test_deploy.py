"""deploy/ manifests agree with constraints.txt and the CLI (no container engine here: parse and cross-check)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {a.lower(): b for a, b in (ln.split("==", 1) for ln in lines if "==" in ln and not ln.startswith("#"))}


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + \
            [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_every_manifest_parses():
    files = [p for p in DEPLOY.rglob("*.yaml")]
    assert len(files) >= 4
    for p in files:
        assert _docs(str(p.relative_to(DEPLOY))), p


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_runs_the_pinned_ray_and_the_training_image(name):
    doc = _docs(name)[0]
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    assert spec["rayVersion"] == _pins()["ray"]
    assert set(_images(spec)) == {_train_image()}


def _train_image() -> str:
    doc = _docs("cluster.yaml")[0]
    return doc["docker"]["image"]


def test_rayjob_entrypoint_is_a_valid_ctr_command():
    argv = shlex.split(_docs("kuberay/rayjob.yaml")[0]["spec"]["entrypoint"])
    assert argv[0] == "ctr"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.workers == 2 and args.address == "auto"
    assert (ROOT / args.pipeline).is_file()


def test_cluster_launcher_checks_the_pinned_stack_and_starts_the_job_server():
    doc = _docs("cluster.yaml")[0]
    pins = _pins()
    checked = [c for c in doc["setup_commands"] if "check-stack" in c]
    assert checked
    for pin in shlex.split(checked[0])[4:]:
        name, version = pin.split("==")
        assert pins[name] == version, pin
    head = " ".join(doc["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-port=8265" in head
    assert doc["head_node_type"] in doc["available_node_types"]


def test_containerfile_installs_the_constraints_on_the_supported_python():
    text = (DEPLOY / "Containerfile").read_text()
    py = re.search(r"^FROM python:(\d+\.\d+)", text, re.M).group(1)
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert py == requires
    assert "-r requirements.txt -c constraints.txt" in text and "pip check" in text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


def _mlflow_commands() -> dict[str, tuple[list[str], dict]]:
    """``{where: (mlflow server argv, environment)}`` for the compose service and the k8s Deployment."""
    compose = _docs("mlflow/compose.yaml")[0]["services"]["mlflow"]
    k8s = next(d for d in _docs("mlflow/k8s.yaml") if d["kind"] == "Deployment")
    container = k8s["spec"]["template"]["spec"]["containers"][0]
    return {"compose": (shlex.split(compose["command"]), compose["environment"]),
            "k8s": (container["command"], {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]})}


def test_mlflow_server_uses_auth_postgres_and_proxied_artifacts_with_the_pinned_mlflow():
    from mlflow.cli import server

    for where, (argv, env) in _mlflow_commands().items():
        assert argv[:2] == ["mlflow", "server"], where
        ctx = server.make_context("server", argv[2:])  # the flags exist in the pinned mlflow
        assert ctx.params["app_name"] == "basic-auth", where
        backend = ctx.params["backend_store_uri"]
        assert backend.startswith("postgresql") and not re.search(r"//[^/@]*:[^/@]*@", backend), where
        assert ctx.params["serve_artifacts"] and ctx.params["artifacts_destination"].startswith("s3://"), where
        assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini", where
        for var in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
            assert var in env, (where, var)
    compose = _docs("mlflow/compose.yaml")[0]
    assert compose["services"]["postgres"]["image"] == "postgres:15"
    containerfile = (DEPLOY / "mlflow" / "Containerfile").read_text()
    pins = _pins()
    for name in ("mlflow", "flask-wtf", "wtforms", "psycopg2-binary"):
        assert re.search(rf"{name}==(\S+)", containerfile).group(1) == pins[name], name
    assert "COPY basic_auth.ini /etc/mlflow/basic_auth.ini" in containerfile
    kustomize = _docs("mlflow/kustomization.yaml")[0]
    assert kustomize["configMapGenerator"][0]["files"] == ["basic_auth.ini"]


def test_the_auth_config_has_no_credentials_and_is_read_by_mlflow(monkeypatch):
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.permissions import get_permission

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(DEPLOY / "mlflow" / "basic_auth.ini"))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    assert config.admin_password is None  # only MLFLOW_AUTH_ADMIN_PASSWORD (a Secret) supplies it
    assert get_permission(config.default_permission).name == "READ"
    assert config.auth_cache_ttl_seconds > 0  # without it every request pays a PBKDF2 check (ctr run: 4x slower)
    assert config.database_uri.startswith("postgresql") and ":" not in config.database_uri.split("//")[1].split("@")[0]


# --- who runs, who may connect -----------------------------------------------------------------------------------

K8S = ["mlflow/k8s.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]
SENSITIVE = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY|CREDENTIAL", re.I)


def _pod_specs(node, where="") -> list[tuple[str, dict]]:
    """Every pod spec (a dict with ``containers``) under a manifest."""
    if isinstance(node, dict):
        found = [(where, node)] if "containers" in node else []
        return found + [p for k, v in node.items() for p in _pod_specs(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _pod_specs(v, f"{where}[{i}]")]
    return []


def _all_pod_specs() -> list[tuple[str, dict]]:
    return [(f"{name}{where}", pod) for name in K8S for doc in _docs(name) for where, pod in _pod_specs(doc)]


def test_every_pod_and_container_runs_as_non_root_without_privilege_escalation():
    pods = _all_pod_specs()
    assert len(pods) == 5  # mlflow; raycluster head + workers; rayjob head + workers
    for where, pod in pods:
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert csc["readOnlyRootFilesystem"] is True and csc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            writable = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in writable, (where, c["name"])  # the only scratch space on a read-only root


def test_images_and_compose_services_run_as_a_fixed_non_root_uid():
    uids = []
    for name in ("Containerfile", "mlflow/Containerfile"):
        users = re.findall(r"^USER (\S+)", (DEPLOY / name).read_text(), re.M)
        assert users and users[-1].isdigit() and int(users[-1]) > 0, name
        uids.append(int(users[-1]))
    k8s_uids = {pod["securityContext"]["runAsUser"] for _, pod in _all_pod_specs()}
    assert k8s_uids == set(uids)  # the manifests run the uid the images were built for
    for service, spec in _docs("mlflow/compose.yaml")[0]["services"].items():
        assert int(str(spec["user"]).split(":")[0]) > 0, service
    options = _docs("cluster.yaml")[0]["docker"]["run_options"]
    assert f"--user={uids[0]}" in options


def _env_entries(node) -> list[dict]:
    if isinstance(node, dict):
        own = [e for e in node.get("env", []) if isinstance(e, dict) and "name" in e] if "env" in node else []
        return own + [e for v in node.values() for e in _env_entries(v)]
    if isinstance(node, list):
        return [e for v in node for e in _env_entries(v)]
    return []


def test_no_secret_literal_in_the_manifests():
    texts = {p: p.read_text() for p in DEPLOY.rglob("*") if p.is_file()}
    for path, text in texts.items():
        assert not re.search(r"://[^/\s@:]+:[^/\s@]+@", text), f"{path}: credentials inside a URI"
    for name in K8S:
        for doc in _docs(name):
            assert doc["kind"] != "Secret", name  # Secrets are created out of band, never committed
            for e in _env_entries(doc):
                if SENSITIVE.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e["name"])
    compose = _docs("mlflow/compose.yaml")[0]
    for service, spec in compose["services"].items():
        for var, value in spec.get("environment", {}).items():
            if SENSITIVE.search(var):
                ok = re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)) or str(value).startswith("/run/secrets/")
                assert ok, f"compose {service}.{var} must come from the shell or a secret, not a literal"
    assert all("file" not in s for s in compose["secrets"].values())  # no password file beside the repo
    runtime_env = yaml.safe_load(_docs("kuberay/rayjob.yaml")[0]["spec"]["runtimeEnvYAML"])
    assert not any(SENSITIVE.search(k) for k in runtime_env.get("env_vars", {}))  # Ray shows runtime envs


def _head_templates() -> dict[str, dict]:
    out = {}
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        doc = _docs(name)[0]
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        out[name] = spec
    return out


def test_network_policy_admits_the_job_server_only_from_the_cluster():
    policies = {d["metadata"]["name"]: d for d in _docs("kuberay/networkpolicy.yaml")}
    head = policies["ctr-ray-head"]["spec"]
    selector = head["podSelector"]["matchLabels"]
    assert selector.pop("ray.io/node-type") == "head"  # the label KubeRay puts on head pods
    for name, spec in _head_templates().items():  # ... and the rest are on both heads' templates
        labels = spec["headGroupSpec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0"  # pod network only
    assert head["policyTypes"] == ["Ingress"]
    ray_nodes = {"app.kubernetes.io/part-of": "ctr", "ray.io/is-ray-node": "yes"}
    seen_job_server = False
    for rule in head["ingress"]:
        peers = rule["from"]  # no rule without `from` (that would admit everyone)
        assert peers and all("ipBlock" not in p for p in peers)
        ports = {p["port"] for p in rule.get("ports", [])}
        if not ports:  # all ports: only the cluster's own Ray pods
            assert all(p == {"podSelector": {"matchLabels": ray_nodes}} for p in peers), rule
        else:
            assert ports == {8265, 10001}, rule
            seen_job_server = True
            for p in peers:
                labels = p["podSelector"]["matchLabels"]
                assert labels in ({"ctr.io/ray-client": "true"}, {"app.kubernetes.io/name": "kuberay-operator"}), p
    assert seen_job_server
    raycluster = _docs("kuberay/raycluster.yaml")[0]
    head_ports = {p["containerPort"] for p in raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                  ["ports"]}
    assert {8265, 10001} <= head_ports
    launcher = " ".join(_docs("cluster.yaml")[0]["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in launcher  # the launcher's head: loopback + SSH tunnel


def test_ray_clusters_require_a_token_and_submit_help_says_how_to_reach_them():
    raycluster = _docs("kuberay/raycluster.yaml")[0]
    for where, pod in _pod_specs(raycluster):
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ctr-ray-auth", "key": "auth_token"}
    assert _docs("kuberay/rayjob.yaml")[0]["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert "RAY_AUTH_MODE" not in (DEPLOY / "kuberay" / "rayjob.yaml").read_text()  # no `disabled` override
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command")
    text = sub.choices["submit"].format_help()
    service = f"{raycluster['metadata']['name']}-head-svc"  # the Service KubeRay makes for the head
    assert f"kubectl port-forward svc/{service} 8265:8265" in text
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN" in text and "ctr-ray-auth" in text
    assert "ctr.io/ray-client" in text
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl port-forward svc/{service} 8265:8265" in readme and "RAY_AUTH_TOKEN" in readme
