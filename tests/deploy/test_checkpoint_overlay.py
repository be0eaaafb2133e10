"""deploy/overlays/checkpoint and the Helm admin client, rendered by ``kubectl kustomize``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from temporal_shield._main import parser
from temporal_shield.codec import ConfigError
from temporal_shield.server import load_server_config
from temporal_shield.server._signer import generate_ed25519, signer_from_uri

from .manifests import DEPLOY, Doc, build, load_yaml, pod_spec

OVERLAY = DEPLOY / "overlays" / "checkpoint"
POD = "temporal-shield-codec-1"


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(workload: Doc, name: str = "codec-server") -> Doc:
    [container] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    return dict(container)


def _env(container: Doc, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it for ``pod_name``."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name
    return env


def _mount(container: Doc, volume: str) -> str:
    [path] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return str(path)


def _serve(container: Doc) -> argparse.Namespace:
    """The container's arguments parsed by the real command line."""
    return parser().parse_args(container["args"])


def _server_config(docs: list[Doc], env: dict[str, str], tmp_path: Path) -> Any:
    config_map = _one(docs, "ConfigMap", "temporal-shield-codec-config")
    (tmp_path / "shield.toml").write_text(config_map["data"]["shield.toml"])
    server, _ = load_server_config(tmp_path / "shield.toml", env=env)
    return server


def test_every_resource_gets_the_kustomize_labels_and_namespace() -> None:
    for folder in ("base", "overlays/dev", "overlays/production", "overlays/checkpoint"):
        for doc in build(DEPLOY / folder):
            labels = doc["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/part-of") == "temporal-shield", doc["metadata"]
            assert doc["metadata"]["namespace"] == "temporal"


def test_the_checkpoint_overlay_runs_a_statefulset_with_an_audit_volume_per_pod(
    tmp_path: Path,
) -> None:
    docs = build(OVERLAY)
    assert not [d for d in docs if d["kind"] == "Deployment" and "codec" in d["metadata"]["name"]]
    sts = _one(docs, "StatefulSet", "temporal-shield-codec")
    assert _one(docs, "Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    hpa = _one(docs, "HorizontalPodAutoscaler", "temporal-shield-codec")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    container = _container(sts)
    audit_dir = _mount(container, claim["metadata"]["name"])

    server = _server_config(docs, _env(container, POD), tmp_path)
    args = _serve(container)
    assert args.command == "serve"
    assert args.workers == 2
    # The audit file is on the pod's own volume, under the pod's stable name.
    assert Path(server.audit.file).parent == Path(audit_dir)
    assert server.audit.replica_id == POD
    assert server.audit.fsync is True
    # Checkpoints: a signing key outside the log's folder, anchored in S3.
    assert server.audit.signing_key.startswith("ed25519://")
    key = Path(server.audit.signing_key.removeprefix("ed25519://"))
    assert key.parent == Path(_mount(container, "audit-key"))
    assert Path(audit_dir) not in key.parents
    assert server.audit.s3_bucket
    assert server.audit.s3_retention_days > 0
    # With several workers a stdout-only audit would be refused: the file is set.
    assert server.audit.file


def test_every_worker_has_its_metrics_port_open(tmp_path: Path) -> None:
    docs = build(OVERLAY)
    container = _container(_one(docs, "StatefulSet", "temporal-shield-codec"))
    server = _server_config(docs, _env(container, POD), tmp_path)
    workers = _serve(container).workers
    wanted = {server.metrics_port + k for k in range(workers)}
    assert wanted <= {p["containerPort"] for p in container["ports"]}
    policy = _one(docs, "NetworkPolicy", "temporal-shield-codec")
    allowed = set()
    for port in policy["spec"]["ingress"][0]["ports"]:
        allowed |= set(range(port["port"], port.get("endPort", port["port"]) + 1))
    assert wanted | {8443} <= allowed


def test_the_signing_key_is_copied_private_by_the_init_container(tmp_path: Path) -> None:
    docs = build(OVERLAY)
    sts = _one(docs, "StatefulSet", "temporal-shield-codec")
    [init] = pod_spec(sts)["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"]
    source, target = init["command"][3:]
    assert Path(source).parent == Path(_mount(init, "audit-signing"))
    assert Path(target).parent == Path(_mount(init, "audit-key"))
    [secret] = [v for v in pod_spec(sts)["volumes"] if v["name"] == "audit-signing"]
    assert secret["secret"]["secretName"] == "temporal-shield-audit-signing"
    assert Path(source).name == "audit-signing.key"  # the name `audit keygen` writes
    env = _env(_container(sts), POD)
    assert env["TEMPORAL_SHIELD_SERVER_AUDIT_SIGNING_KEY"] == f"ed25519://{target}"

    # Why the copy: a Secret file under fsGroup is group-readable, which the
    # signer refuses; the same key installed 0600 is accepted.
    private, _ = generate_ed25519(tmp_path / "secret")
    private.chmod(0o440)
    with pytest.raises(ConfigError, match="group or others"):
        signer_from_uri(f"ed25519://{private}", log_file=tmp_path / "log" / "audit.jsonl")
    install = shutil.which("install")
    assert install is not None
    copied = tmp_path / "run" / "audit-signing.key"
    copied.parent.mkdir()
    subprocess.run([install, "-m", "0600", str(private), str(copied)], check=True)
    assert signer_from_uri(f"ed25519://{copied}", log_file=tmp_path / "log" / "audit.jsonl")


def test_a_kms_signer_instead_of_the_secret_loads(tmp_path: Path) -> None:
    docs = build(OVERLAY)
    env = _env(_container(_one(docs, "StatefulSet", "temporal-shield-codec")), POD)
    env["TEMPORAL_SHIELD_SERVER_AUDIT_SIGNING_KEY"] = "aws-kms://alias/temporal-shield-audit"
    server = _server_config(docs, env, tmp_path)
    assert server.audit.signing_key == "aws-kms://alias/temporal-shield-audit"


def test_helm_admin_pods_get_a_client_certificate() -> None:
    values = load_yaml(DEPLOY / "helm" / "temporal-values.yaml")[0]
    assert values["server"]["config"]["tls"]["frontend"]["server"]["requireClientAuth"] is True
    certs = {
        d["spec"]["secretName"]: d["spec"]
        for d in build(DEPLOY / "base")
        if d["kind"] == "Certificate"
    }
    admin = values["admintools"]
    [volume] = admin["additionalVolumes"]
    spec = certs[volume["secret"]["secretName"]]
    assert "client auth" in spec["usages"]
    [mount] = admin["additionalVolumeMounts"]
    assert mount["name"] == volume["name"]
    env = {e["name"]: e["value"] for e in admin["additionalEnv"]}
    # The envconfig names the `temporal` CLI reads, each file in the mounted Secret.
    for name, file in (
        ("TEMPORAL_TLS_CLIENT_CERT_PATH", "tls.crt"),
        ("TEMPORAL_TLS_CLIENT_KEY_PATH", "tls.key"),
        ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "ca.crt"),
    ):
        assert env[name] == f"{mount['mountPath']}/{file}"
    assert env["TEMPORAL_TLS_SERVER_NAME"] in certs["temporal-frontend-tls"]["dnsNames"]


def test_the_helm_chart_version_is_pinned_in_the_docs() -> None:
    header = (DEPLOY / "helm" / "temporal-values.yaml").read_text()
    readme = (DEPLOY / "README.md").read_text()
    assert "--version 1.6.0" in header
    assert "--version 1.6.0" in readme
