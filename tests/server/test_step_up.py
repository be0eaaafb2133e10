"""Step-up: acr, amr and max_age rules over a real codec server, for roles and grants alike."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from temporalio.api.common.v1 import Payload

from temporal_shield.converter import ClassificationConfig, ShieldConfig, build_codec
from temporal_shield.server import Identity
from temporal_shield.server import _service as service_module
from temporal_shield.server._app import STATE
from temporal_shield.server._grant import Grant
from temporal_shield.server._service import CodecService

from .conftest import ORIGIN, ClientFactory, wire_body
from .idp import Idp

STEP_UP_POLICY = """
roles:
  engineer: {namespaces: ["dev-*"], operations: [decode, encode], classifications: ["*"]}
  sre: {namespaces: ["prod-*"], operations: [decode], classifications: ["internal"]}
  auditor: {namespaces: ["prod-*"], operations: [decode], classifications: ["internal", "pci"]}
bindings:
  - {role: engineer, groups: [engineering]}
  - {role: sre, groups: [sre]}
  - {role: auditor, groups: [auditors]}
step_up:
  - namespaces: ["prod-*"]
    acr: ["urn:example:mfa", "urn:example:hwk"]
    max_age: 900
  - namespaces: ["prod-*"]
    classifications: ["pci"]
    amr: ["hwk"]
  - namespaces: ["dev-secure"]
    amr: ["mfa"]
grants:
  namespaces: ["prod-*"]
  classifications: ["*"]
  max_duration: 14400
  approvers: {groups: [security]}
"""
"""``prod-*`` needs a recent MFA sign-in, its ``pci`` payloads a hardware key as well;
reading ``dev-secure`` needs MFA."""

SECRET = b'"SECRET-MARKER-prod"'
MFA = "urn:example:mfa"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(STEP_UP_POLICY)
    return path


def labelled(shield: ShieldConfig) -> ShieldConfig:
    """``shield`` writing ``pci`` in ``prod-pay`` and ``internal`` elsewhere."""
    return ShieldConfig(
        keys=shield.keys,
        classification=ClassificationConfig(default="internal", namespaces=(("prod-pay", "pci"),)),
    )


async def sealed(shield: ShieldConfig, namespace: str, text: bytes = SECRET) -> Payload:
    """A payload as a worker in ``namespace`` writes it."""
    codec = build_codec(labelled(shield)).with_namespace(namespace)
    plain = Payload(metadata={"encoding": b"json/plain"}, data=text)
    return (await codec.encode([plain]))[0]


def headers(token: str, namespace: str, *, origin: bool = False) -> dict[str, str]:
    """A codec request's headers; with ``origin``, as a browser sends them (see placeholders)."""
    out = {"Content-Type": "application/json", "X-Namespace": namespace}
    if origin:
        out["Origin"] = ORIGIN
    out["Authorization"] = f"Bearer {token}"
    return out


def datas(doc: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(p["data"]) for p in doc["payloads"]]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strong(**claims: Any) -> dict[str, Any]:
    """Claims of a fresh MFA sign-in (override any of them)."""
    return {"acr": MFA, "amr": ["pwd", "mfa"], "auth_time": int(time.time()) - 30, **claims}


@dataclass
class StubGrants:
    """A :class:`GrantLookup` holding fixed grants (the registry's contract, nothing more)."""

    grants: list[Grant] = field(default_factory=list)
    asked: list[tuple[str, str, str]] = field(default_factory=list)

    def find(
        self, identity: Identity, namespace: str, classification: str, now: float
    ) -> Grant | None:
        self.asked.append((identity.subject, namespace, classification))
        for grant in self.grants:
            if grant.covers(identity, namespace, classification, now):
                return grant
        return None


def service_of(client: TestClient[Any, Any]) -> CodecService:
    """The codec service behind a test client's app (to install a grant registry)."""
    app = client.app
    assert app is not None
    service: CodecService = app[STATE].service
    return service


def grant(subject: str = "user-1", namespace: str = "prod-orders", **kw: Any) -> Grant:
    fields: dict[str, Any] = {
        "id": "grant-7",
        "subject": subject,
        "namespace": namespace,
        "classification": "*",
        "expires_at": time.time() + 3600,
        "justification": "INC-4242",
        "approver": "sec-1",
    }
    fields.update(kw)
    return Grant(**fields)


# -- role access -----------------------------------------------------------------------


async def test_step_up_claims_allow_and_their_absence_denies_with_reason_and_record(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    payload = await sealed(shield_config, "prod-orders")
    ok = await client.post(
        "/decode",
        json=wire_body(payload),
        headers=headers(idp.token(groups=["sre"], **strong()), "prod-orders"),
    )
    assert ok.status == 200
    assert datas(await ok.json()) == [SECRET]
    lacking = {
        "no acr": strong(acr=None),
        "another acr": strong(acr="urn:example:pwd"),
        "no auth_time": strong(auth_time=None),
    }
    for name, claims in lacking.items():
        resp = await client.post(
            "/decode",
            json=wire_body(payload),
            headers=headers(idp.token(groups=["sre"], **claims), "prod-orders"),
        )
        assert resp.status == 200, name
        assert datas(await resp.json()) == [payload.data], name  # unchanged: no placeholder
    found = records(audit_path)
    assert [r["decision"] for r in found] == ["allow", "deny", "deny", "deny"]
    assert found[0]["roles"] == ["sre"]
    assert found[1]["reason"] == ("step-up required: acr urn:example:mfa or urn:example:hwk")
    assert found[3]["reason"] == "step-up required: sign-in within the last 900 s"
    assert all(r["denied"] == 1 and r["decoded"] == 0 for r in found[1:])
    # A namespace without rules needs nothing more than the role.
    dev = await sealed(shield_config, "dev-team")
    resp = await client.post(
        "/decode",
        json=wire_body(dev),
        headers=headers(idp.token(groups=["engineering"]), "dev-team"),
    )
    assert datas(await resp.json()) == [SECRET]


async def test_every_covering_rule_applies_and_amr_must_all_be_present(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    pci = await sealed(shield_config, "prod-pay")
    mfa_only = idp.token(groups=["auditors"], **strong())
    resp = await client.post("/decode", json=wire_body(pci), headers=headers(mfa_only, "prod-pay"))
    assert datas(await resp.json()) == [pci.data]
    assert records(audit_path)[-1]["reason"] == "step-up required: amr hwk"
    hwk = idp.token(groups=["auditors"], **strong(acr="urn:example:hwk", amr=["hwk", "pwd"]))
    resp = await client.post("/decode", json=wire_body(pci), headers=headers(hwk, "prod-pay"))
    assert datas(await resp.json()) == [SECRET]
    # Neither rule met: both named, in one reason.
    weak = idp.token(groups=["auditors"], amr=["pwd"])
    resp = await client.post("/decode", json=wire_body(pci), headers=headers(weak, "prod-pay"))
    assert datas(await resp.json()) == [pci.data]
    assert records(audit_path)[-1]["reason"] == (
        "step-up required: acr urn:example:mfa or urn:example:hwk; "
        "sign-in within the last 900 s; amr hwk"
    )


async def test_step_up_is_for_reading_encode_needs_none(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    token = idp.token(groups=["engineering"], amr=["pwd"])
    plain = Payload(metadata={"encoding": b"json/plain"}, data=SECRET)
    resp = await client.post("/encode", json=wire_body(plain), headers=headers(token, "dev-secure"))
    assert resp.status == 200
    (encoded,) = (await resp.json())["payloads"]
    resp = await client.post(
        "/decode", json={"payloads": [encoded]}, headers=headers(token, "dev-secure")
    )
    assert datas(await resp.json()) == [base64.b64decode(encoded["data"])]
    assert records(audit_path)[-1]["reason"] == "step-up required: amr mfa"
    mfa = idp.token(groups=["engineering"], amr=["pwd", "mfa"])
    resp = await client.post(
        "/decode", json={"payloads": [encoded]}, headers=headers(mfa, "dev-secure")
    )
    assert datas(await resp.json()) == [SECRET]


async def test_max_age_ages_out(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    payload = await sealed(shield_config, "prod-orders")
    now = int(time.time())
    cases = {
        "signed in 100 s ago": (now - 100, True),
        "signed in 30 s ahead of our clock (skew)": (now + 30, True),
        "signed in 901 s ago": (now - 901, False),
        "signed in a day ago": (now - 86400, False),
        "a sign-in far in the future": (now + 3600, False),
    }
    for name, (auth_time, allowed) in cases.items():
        token = idp.token(groups=["sre"], **strong(auth_time=auth_time))
        resp = await client.post(
            "/decode", json=wire_body(payload), headers=headers(token, "prod-orders")
        )
        expected = SECRET if allowed else payload.data
        assert datas(await resp.json()) == [expected], name


async def test_max_age_is_judged_per_request_even_for_a_cached_token(
    make_client: ClientFactory,
    idp: Idp,
    shield_config: ShieldConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The verified token is cached; its sign-in's age is not: it grows with the clock."""
    client = await make_client()
    payload = await sealed(shield_config, "prod-orders")
    token = idp.token(groups=["sre"], **strong(auth_time=int(time.time()) - 60))
    resp = await client.post(
        "/decode", json=wire_body(payload), headers=headers(token, "prod-orders")
    )
    assert datas(await resp.json()) == [SECRET]

    class Later:
        """The service's clock, 900 s on (the token itself is still valid and cached)."""

        @staticmethod
        def time() -> float:
            return time.time() + 900

    monkeypatch.setattr(service_module, "time", Later)
    resp = await client.post(
        "/decode", json=wire_body(payload), headers=headers(token, "prod-orders")
    )
    assert datas(await resp.json()) == [payload.data]


@pytest.mark.parametrize(
    "claims",
    [
        {"acr": 2},
        {"acr": ["urn:example:mfa"]},
        {"amr": "mfa"},
        {"amr": ["mfa", 1]},
        {"amr": {"mfa": True}},
        {"auth_time": "1700000000"},
        {"auth_time": True},
        {"auth_time": 1e300},
        {"auth_time": -1},
    ],
    ids=repr,
)
async def test_bad_step_up_claim_types_are_401(
    make_client: ClientFactory,
    idp: Idp,
    shield_config: ShieldConfig,
    audit_path: Path,
    claims: dict[str, Any],
) -> None:
    client = await make_client()
    payload = await sealed(shield_config, "prod-orders")
    token = idp.token(groups=["sre"], **{**strong(), **claims})
    resp = await client.post(
        "/decode", json=wire_body(payload), headers=headers(token, "prod-orders")
    )
    assert resp.status == 401
    assert "SECRET-MARKER" not in await resp.text()
    record = records(audit_path)[-1]
    assert (record["decision"], record["status"]) == ("deny", 401)
    assert record["reason"].startswith("unauthenticated: ")


# -- grant access ------------------------------------------------------------------------


async def test_grant_access_still_needs_step_up(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    stub = StubGrants([grant()])
    service_of(client).grants = stub
    payload = await sealed(shield_config, "prod-orders")
    # user-1 holds no role in prod-*: only the grant opens it, and only with MFA.
    weak = idp.token(groups=["engineering"])
    resp = await client.post(
        "/decode", json=wire_body(payload), headers=headers(weak, "prod-orders")
    )
    assert datas(await resp.json()) == [payload.data]
    record = records(audit_path)[-1]
    assert record["decision"] == "deny"
    assert record["reason"].startswith("step-up required: acr urn:example:mfa")
    assert stub.asked == [("user-1", "prod-orders", "internal")]

    fresh = idp.token(groups=["engineering"], **strong())
    resp = await client.post(
        "/decode", json=wire_body(payload), headers=headers(fresh, "prod-orders")
    )
    assert datas(await resp.json()) == [SECRET]
    record = records(audit_path)[-1]
    assert record["decision"] == "allow"
    assert record["roles"] == ["grant:grant-7"]
    assert record["grants"] == [{"id": "grant-7", "justification": "INC-4242"}]


async def test_a_grant_opens_only_its_subject_namespace_and_time(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    """Whatever the registry answers, the service honours a grant only where it covers."""
    client = await make_client()

    class Careless(StubGrants):
        """A registry that answers with its first grant whatever is asked."""

        def find(
            self, identity: Identity, namespace: str, classification: str, now: float
        ) -> Grant | None:
            return self.grants[0]

    service = service_of(client)
    payload = await sealed(shield_config, "prod-orders")
    token = idp.token(groups=["engineering"], **strong())
    for wrong in (
        grant(subject="someone-else"),
        grant(namespace="prod-other"),
        grant(expires_at=time.time() - 1),
        grant(classification="pci"),
    ):
        service.grants = Careless([wrong])
        resp = await client.post(
            "/decode", json=wire_body(payload), headers=headers(token, "prod-orders")
        )
        assert datas(await resp.json()) == [payload.data], wrong
    assert {r["reason"] for r in records(audit_path)} == {"classification internal not permitted"}
    assert all(r["grants"] == [] for r in records(audit_path))


async def test_the_role_path_asks_no_grant(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    stub = StubGrants([grant()])
    service_of(client).grants = stub
    payload = await sealed(shield_config, "prod-orders")
    token = idp.token(groups=["sre"], **strong())
    resp = await client.post(
        "/decode", json=wire_body(payload), headers=headers(token, "prod-orders")
    )
    assert datas(await resp.json()) == [SECRET]
    assert stub.asked == []
    assert records(audit_path)[-1]["grants"] == []
