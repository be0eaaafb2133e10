"""Every manifest in deploy/ against real schemas, plus cross-resource consistency."""

from __future__ import annotations

import copy

import pytest
import yaml

from temporal_shield.certs import LEAVES

from .manifests import DEPLOY, build, consistency_errors, load_yaml, schema_errors

OVERLAYS = ["base", "overlays/dev", "overlays/production", "overlays/checkpoint"]


@pytest.mark.parametrize("folder", OVERLAYS)
def test_every_rendered_resource_matches_its_schema(folder: str) -> None:
    docs = build(DEPLOY / folder)
    kinds = {d["kind"] for d in docs}
    assert {
        "Certificate",
        "Issuer",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
        "ConfigMap",
    } <= kinds
    for doc in docs:
        assert schema_errors(doc) == [], (doc["kind"], doc["metadata"]["name"])


@pytest.mark.parametrize("folder", OVERLAYS)
def test_consistency(folder: str) -> None:
    assert consistency_errors(build(DEPLOY / folder)) == []


def test_validators_catch_broken_manifests() -> None:
    docs = build(DEPLOY / "base")
    cert = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "temporal-worker-tls"))
    cert["spec"]["usages"] = ["digital signature", "server auth"]
    cert["spec"]["privateKey"]["rotationPolicy"] = "Never"
    broken = [d for d in docs if d["metadata"]["name"] != "temporal-worker-tls"] + [cert]
    errors = consistency_errors(broken)
    assert any("client auth" in e for e in errors)
    assert any("rotationPolicy" in e for e in errors)
    cert["spec"]["duration"] = 5  # wrong type for the CRD schema
    cert["spec"]["bogus"] = True
    assert schema_errors(cert)
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["replicas"] = "three"
    assert schema_errors(deployment)
    orphan = [d for d in docs if d["kind"] != "Certificate"]
    assert any("no Certificate produces" in e for e in consistency_errors(orphan))


def test_manifests_match_the_local_pki() -> None:
    certs = {
        d["metadata"]["name"]: d["spec"]
        for d in build(DEPLOY / "base")
        if d["kind"] == "Certificate" and not d["spec"].get("isCA")
    }
    assert set(certs) == {spec.name for spec in LEAVES}
    for spec in LEAVES:
        assert certs[spec.name]["secretName"] == spec.name
        assert certs[spec.name]["dnsNames"] == list(spec.dns_names)
        assert set(certs[spec.name]["usages"]) == {"digital signature", *spec.usages}


def test_codec_server_deployment_is_hardened() -> None:
    docs = build(DEPLOY / "overlays/production")
    deployment = next(
        d
        for d in docs
        if d["metadata"]["name"] == "temporal-shield-codec" and d["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] == "1"  # the production patch applied
    assert deployment["spec"]["replicas"] == 3
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    sa = next(
        d
        for d in docs
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "temporal-shield-codec"
    )
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_shipped_codec_server_config_and_policy_load() -> None:
    import tempfile
    from pathlib import Path

    from temporal_shield.server import Policy, load_server_config

    config_map = next(d for d in build(DEPLOY / "base") if d["kind"] == "ConfigMap")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "shield.toml").write_text(config_map["data"]["shield.toml"])
        (Path(tmp) / "policy.yaml").write_text(config_map["data"]["policy.yaml"])
        server, shield = load_server_config(Path(tmp) / "shield.toml", env={})
        assert server.tls.dir == "/etc/temporal-shield/tls"
        assert shield.keys.uri.startswith("aws-kms://")
        policy = Policy.load(Path(tmp) / "policy.yaml")
        assert set(policy.roles) == {"engineer", "finance", "clinician"}


def test_helm_values_wire_mtls_and_the_codec_server() -> None:
    values = load_yaml(DEPLOY / "helm" / "temporal-values.yaml")[0]
    tls = values["server"]["config"]["tls"]
    assert tls["frontend"]["server"]["requireClientAuth"] is True
    assert tls["internode"]["server"]["requireClientAuth"] is True
    produced = {
        d["spec"]["secretName"] for d in build(DEPLOY / "base") if d["kind"] == "Certificate"
    }
    for section in ("server", "web"):
        for volume in values[section]["additionalVolumes"]:
            assert volume["secret"]["secretName"] in produced
    env = {e["name"]: e["value"] for e in values["web"]["additionalEnv"]}
    assert env["TEMPORAL_CODEC_ENDPOINT"].startswith("https://")
    assert env["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] == "true"
    assert "TEMPORAL_CODEC_INCLUDE_CREDENTIALS" in env


def test_every_yaml_file_in_deploy_parses() -> None:
    for path in DEPLOY.rglob("*.yaml"):
        assert list(yaml.safe_load_all(path.read_text())), path
