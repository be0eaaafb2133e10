"""Render deploy/ with the real ``kubectl kustomize`` and check it against schemas."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from ..helpers import require

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "tests" / "data" / "cert-manager"
K8S_VERSION = "1.33.0"

Doc = dict[str, Any]


def load_yaml(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubectl() -> str | None:
    """The ``kubectl`` binary (its built-in kustomize renders offline), if installed."""
    found = shutil.which("kubectl")
    if found is None and Path("/usr/bin/kubectl").exists():
        found = "/usr/bin/kubectl"
    return found


@functools.cache
def _render(folder: Path) -> str:
    exe = kubectl()
    require(exe is not None, "kubectl (with kustomize v5) is not installed")
    assert exe is not None
    result = subprocess.run(
        [exe, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed: {result.stderr.strip()}")
    return result.stdout


def build(folder: Path) -> list[Doc]:
    """Render a kustomization folder with the real ``kubectl kustomize``.

    Kubernetes' own merge rules apply (``volumeMounts`` by ``mountPath``, ``ports``
    by ``containerPort``, ``labels:``), which a renderer of our own got wrong.
    Each call returns fresh documents: tests may change them.
    """
    return [d for d in yaml.safe_load_all(_render(folder.resolve())) if d]


def _crd_schema(kind: str) -> Doc:
    plural = {"Certificate": "certificates", "Issuer": "issuers"}[kind]
    crd = load_yaml(CRDS / f"cert-manager.io_{plural}.yaml")[0]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def schema_errors(doc: Doc) -> list[str]:
    """Schema violations of one document (Kubernetes core or cert-manager CRD)."""
    if doc["apiVersion"].startswith("cert-manager.io/"):
        validator = jsonschema.Draft7Validator(_crd_schema(doc["kind"]))
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc.message)]
    return []


OPERATOR_SECRETS = frozenset({"temporal-shield-audit-signing"})
"""Secrets an operator creates (deploy/README.md says how), not cert-manager."""

WORKLOADS = ("Deployment", "StatefulSet")


def pod_spec(doc: Doc) -> Doc:
    """The pod template's spec of a Deployment or StatefulSet."""
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def secret_mounts(docs: list[Doc]) -> Iterator[tuple[str, str]]:
    """(workload, secret name) for every Secret volume of every Deployment/StatefulSet."""
    for d in docs:
        if d["kind"] in WORKLOADS:
            for volume in pod_spec(d).get("volumes", []):
                if "secret" in volume:
                    yield d["metadata"]["name"], volume["secret"]["secretName"]


def consistency_errors(docs: list[Doc]) -> list[str]:
    """Cross-resource rules: mounts produced, issuers exist, usages explicit and right."""
    errors = []
    certs = [d for d in docs if d["kind"] == "Certificate"]
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    produced = {c["spec"]["secretName"] for c in certs}
    for deployment, secret in secret_mounts(docs):
        if secret not in produced | OPERATOR_SECRETS:
            errors.append(f"{deployment} mounts Secret {secret} that no Certificate produces")
    for c in certs:
        name, spec = c["metadata"]["name"], c["spec"]
        if spec["issuerRef"]["name"] not in issuers:
            errors.append(f"{name}: issuer {spec['issuerRef']['name']} does not exist")
        if not spec.get("usages"):
            errors.append(f"{name}: usages must be explicit")
        if spec.get("privateKey", {}).get("rotationPolicy") != "Always":
            errors.append(f"{name}: privateKey.rotationPolicy must be Always")
        if not spec.get("isCA"):
            if not spec.get("dnsNames"):
                errors.append(f"{name}: leaf certificates need dnsNames")
            if "commonName" in spec and not spec.get("dnsNames"):
                errors.append(f"{name}: commonName-only certificate")
            if not any(u in spec.get("usages", []) for u in ("server auth", "client auth")):
                errors.append(f"{name}: leaf without server/client auth usage")
        for field in ("duration", "renewBefore"):
            if field not in spec:
                errors.append(f"{name}: {field} missing")
    client_secrets = {"temporal-worker-tls", "temporal-ui-tls", "temporal-admin-tls"}
    for c in certs:
        if c["spec"]["secretName"] in client_secrets and "client auth" not in c["spec"]["usages"]:
            errors.append(f"{c['metadata']['name']}: client certificate without client auth")
    return errors
