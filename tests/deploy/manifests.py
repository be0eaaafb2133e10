"""Load deploy/ like kustomize would (resources + strategic-merge patches) and check it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "tests" / "data" / "cert-manager"
K8S_VERSION = "1.33.0"

Doc = dict[str, Any]


def load_yaml(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def merge(base: Any, patch: Any) -> Any:
    """The subset of strategic merge our patches use: maps merge, named lists merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out_list) if x["name"] == item["name"]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = merge(out_list[match], item)
        return out_list
    return copy.deepcopy(patch)


def build(folder: Path) -> list[Doc]:
    """Render a kustomization folder (resources, patches, namespace) into documents."""
    kust = load_yaml(folder / "kustomization.yaml")[0]
    docs: list[Doc] = []
    for resource in kust.get("resources", []):
        path = folder / resource
        docs += build(path) if path.is_dir() else load_yaml(path)
    for patch in kust.get("patches", []):
        for p in load_yaml(folder / patch["path"]):
            index = next((i for i, d in enumerate(docs) if _key(d) == _key(p)), None)
            if index is None:
                raise AssertionError(f"patch {patch['path']} targets missing {_key(p)}")
            docs[index] = merge(docs[index], p)
    if "namespace" in kust:
        for d in docs:
            d.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return docs


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


def secret_mounts(docs: list[Doc]) -> Iterator[tuple[str, str]]:
    """(deployment, secret name) for every Secret volume of every Deployment."""
    for d in docs:
        if d["kind"] == "Deployment":
            for volume in d["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume:
                    yield d["metadata"]["name"], volume["secret"]["secretName"]


def consistency_errors(docs: list[Doc]) -> list[str]:
    """Cross-resource rules: mounts produced, issuers exist, usages explicit and right."""
    errors = []
    certs = [d for d in docs if d["kind"] == "Certificate"]
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    produced = {c["spec"]["secretName"] for c in certs}
    for deployment, secret in secret_mounts(docs):
        if secret not in produced:
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
    client_secrets = {"temporal-worker-tls", "temporal-ui-tls"}
    for c in certs:
        if c["spec"]["secretName"] in client_secrets and "client auth" not in c["spec"]["usages"]:
            errors.append(f"{c['metadata']['name']}: client certificate without client auth")
    return errors
