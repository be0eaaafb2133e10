"""The codec server over real HTTP: protocol, CORS, JWT attacks, RBAC, limits, audit."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload

from temporal_shield.codec import ConfigError
from temporal_shield.converter import ShieldConfig, build_codec
from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, verify

from .conftest import ORIGIN, ClientFactory
from .conftest import wire_body as _body
from .idp import AUDIENCE, ISSUER, Idp

SECRET = b'"SECRET-MARKER-plaintext"'


def _plain(text: bytes = SECRET) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text)


async def _encrypted(config: ShieldConfig, namespace: str, text: bytes = SECRET) -> Payload:
    return (await build_codec(config).with_namespace(namespace).encode([_plain(text)]))[0]


def _datas(doc: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(p["data"]) for p in doc["payloads"]]


def _headers(token: str | None, namespace: str = "dev-team", **extra: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Namespace": namespace, "Origin": ORIGIN}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra)
    return headers


def _withheld(data: bytes) -> bool:
    """Whether ``data`` is a readable placeholder (what a browser gets for a denial)."""
    try:
        return bool(json.loads(data).get("temporal-shield") == "withheld")
    except ValueError:
        return False


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- protocol -------------------------------------------------------------------------


async def test_decode_one_per_input_in_order_with_passthrough(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    client = await make_client()
    enc_a = await _encrypted(shield_config, "dev-team", b'"a"')
    enc_b = await _encrypted(shield_config, "dev-team", b'"b"')
    plain = _plain(b'"already plain"')
    for path in (
        "/decode",
        "/codec/decode",
        "/dev-team/decode",
        "/decode?preserveStorageRefs=true",
    ):
        resp = await client.post(
            path,
            json=_body(enc_a, plain, enc_b),
            headers=_headers(idp.token(groups=["engineering"])),
        )
        assert resp.status == 200, await resp.text()
        assert _datas(await resp.json()) == [b'"a"', b'"already plain"', b'"b"']


async def test_a_damaged_envelope_is_answered_unchanged_as_failed(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    # docs/format.md "Telling formats apart": starting with the magic makes a
    # payload ours; one that does not parse is failed, not someone else's.
    client = await make_client()
    good = await _encrypted(shield_config, "dev-team", b'"a"')
    damaged = Payload()
    damaged.CopyFrom(good)
    damaged.data = b"TS" + bytes(30)
    foreign = Payload()
    foreign.CopyFrom(good)
    foreign.data = b"XX" + good.data[2:]
    resp = await client.post(
        "/decode",
        json=_body(good, damaged, foreign),
        headers=_headers(idp.token(groups=["engineering"])),
    )
    assert resp.status == 200, await resp.text()
    assert _datas(await resp.json()) == [b'"a"', damaged.data, foreign.data]
    record = _records(audit_path)[-1]
    assert (record["decoded"], record["failed"], record["foreign_encryption"]) == (1, 1, 1)
    assert "malformed ciphertext" in record["reason"]


async def test_download_is_not_supported(
    make_client: ClientFactory, idp: Idp, audit_path: Path
) -> None:
    client = await make_client()
    resp = await client.post("/download", json={}, headers=_headers(idp.token()))
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_supported"
    # Like every request that reaches a handler, recorded (with a fixed operation name).
    resp = await client.post("/codec/other", json={}, headers=_headers(None))
    assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
    records = _records(audit_path)[-2:]
    assert [(r["operation"], r["decision"], r["status"]) for r in records] == [
        ("download", "deny", 404),
        ("unknown", "deny", 404),
    ]
    assert records[1]["reason"] == "no such endpoint"


async def test_encode_round_trips_through_decode(make_client: ClientFactory, idp: Idp) -> None:
    client = await make_client()
    token = idp.token(groups=["engineering"])
    resp = await client.post("/encode", json=_body(_plain()), headers=_headers(token))
    assert resp.status == 200
    encoded = await resp.json()
    assert SECRET not in _datas(encoded)[0]
    assert base64.b64decode(encoded["payloads"][0]["metadata"]["encoding"]) == b"binary/encrypted"
    resp = await client.post("/decode", json=encoded, headers=_headers(token))
    assert _datas(await resp.json()) == [SECRET]
    # finance may decode but not encode.
    resp = await client.post(
        "/encode",
        json=_body(_plain()),
        headers=_headers(idp.token(email="cfo@example.com", email_verified=True)),
    )
    assert resp.status == 403


async def test_health_ready_metrics(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    client = await make_client()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    enc = await _encrypted(shield_config, "dev-team")
    await client.post(
        "/decode", json=_body(enc), headers=_headers(idp.token(groups=["engineering"]))
    )
    text = await (await client.get("/metrics")).text()
    assert "codec_requests" in text
    assert 'result="decoded"' in text
    assert "kms_calls" in text


# -- CORS --------------------------------------------------------------------------------


async def test_cors_preflight_and_error_responses(make_client: ClientFactory) -> None:
    client = await make_client(cors_credentials=True)
    resp = await client.options(
        "/decode",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert "x-namespace" in resp.headers["Access-Control-Allow-Headers"]
    assert "authorization-extras" in resp.headers["Access-Control-Allow-Headers"]
    assert resp.headers["Vary"] == "Origin"
    bad = await client.options("/decode", headers={"Origin": "https://evil.example"})
    assert bad.status == 403
    assert "Access-Control-Allow-Origin" not in bad.headers
    # A 401 still carries CORS headers, so the browser shows the real error.
    resp = await client.post("/decode", json=_body(), headers=_headers(None))
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert (await resp.json())["error"] == "unauthorized"


async def test_unknown_routes_and_methods_get_json_errors_with_cors(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    cases = [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/decode", 405, "method_not_allowed"),
        ("PUT", "/dev-team/encode", 405, "method_not_allowed"),
        ("DELETE", "/healthz", 405, "method_not_allowed"),
        ("POST", "/codec/other", 404, "not_found"),
    ]
    for method, path, status, code in cases:
        resp = await client.request(method, path, headers={"Origin": ORIGIN})
        assert resp.status == status, (method, path)
        doc = await resp.json()
        assert doc["error"] == code
        assert doc["request_id"] == resp.headers["X-Request-Id"]
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    # A preflight on any path is answered (the UI may prefix the endpoint).
    resp = await client.options("/codec/dev-team/decode", headers={"Origin": ORIGIN})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


# -- authentication --------------------------------------------------------------------------


def _attacks(idp: Idp) -> dict[str, str]:
    now = int(time.time())
    public_pem = idp.rsa.public_key().public_bytes(
        encoding=__import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["x"]
        ).Encoding.PEM,
        format=__import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["x"]
        ).PublicFormat.SubjectPublicKeyInfo,
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "rsa-1"}).encode()).rstrip(
        b"="
    )
    payload = base64.urlsafe_b64encode(json.dumps(idp.claims()).encode()).rstrip(b"=")
    hs = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode()
    ).rstrip(b"=")
    import hashlib
    import hmac

    signing_input = hs + b"." + payload
    hs_sig = base64.urlsafe_b64encode(
        hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    ).rstrip(b"=")
    good = idp.token()
    return {
        "alg none": (header + b"." + payload + b".").decode(),
        "HS256 signed with the public key": (signing_input + b"." + hs_sig).decode(),
        "expired": idp.token(exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not yet valid": idp.token(nbf=now + 3600),
        "wrong issuer": idp.token(iss="https://evil.test/"),
        "wrong audience": idp.token(aud="someone-else"),
        "unknown kid": idp.token(kid="nope"),
        "bad signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "signed by another key": idp.token(key=idp.other),
        "missing exp": idp.token(exp=None),
        "missing iss": idp.token(iss=None),
        "missing aud": idp.token(aud=None),
        "missing sub": idp.token(sub=None),
        "ES256 token claiming the RSA kid": idp.token(alg="ES256", kid="rsa-1"),
        "garbage": "not.a.jwt",
    }


async def test_every_jwt_attack_is_401_without_plaintext(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    enc = await _encrypted(shield_config, "dev-team")
    for name, token in _attacks(idp).items():
        resp = await client.post(
            "/decode", json=_body(enc), headers=_headers(token, groups="engineering")
        )
        text = await resp.text()
        assert resp.status == 401, name
        assert "SECRET-MARKER" not in text, name
        assert token not in text, name
    records = _records(audit_path)
    assert len(records) == len(_attacks(idp))
    assert {r["decision"] for r in records} == {"deny"}
    assert all(r["reason"].startswith("unauthenticated") for r in records)
    # Other authorization schemes are not tokens.
    resp = await client.post(
        "/decode",
        json=_body(enc),
        headers={**_headers(None), "Authorization": "Basic dXNlcjpwdw=="},
    )
    assert resp.status == 401


async def test_valid_rsa_and_ec_tokens_and_cli_style_header(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    client = await make_client()
    enc = await _encrypted(shield_config, "dev-team")
    for token in (
        idp.token(groups=["engineering"]),
        idp.token(alg="ES256", groups=["engineering"]),
    ):
        resp = await client.post("/decode", json=_body(enc), headers=_headers(token))
        assert _datas(await resp.json()) == [SECRET]


async def test_unknown_kid_refetch_is_rate_limited(make_client: ClientFactory, idp: Idp) -> None:
    client = await make_client()
    for _ in range(20):
        resp = await client.post(
            "/decode", json=_body(), headers=_headers(idp.token(kid="unknown"))
        )
        assert resp.status == 401
    assert idp.fetches <= 2


async def test_id_token_from_authorization_extras(
    make_client: ClientFactory,
    idp: Idp,
    policy_file: Path,
    tmp_path: Path,
    shield_config: ShieldConfig,
) -> None:
    auth = AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url, accept_id_token=True)
    client = await make_client(auth=auth)
    enc = await _encrypted(shield_config, "dev-team")
    headers = _headers(None)
    headers["Authorization-Extras"] = idp.token(groups=["engineering"])
    resp = await client.post("/decode", json=_body(enc), headers=headers)
    assert _datas(await resp.json()) == [SECRET]
    off = await make_client()
    resp = await off.post("/decode", json=_body(enc), headers=headers)
    assert resp.status == 401
    # An ID token issued to another client (OIDC Core 3.1.3.7) opens nothing,
    # here as at sign-in, even after the same token passed as an access token.
    for claims in ({"aud": [AUDIENCE, "other"]}, {"aud": [AUDIENCE, "other"], "azp": "other"}):
        other_client = idp.token(groups=["engineering"], **claims)
        bearer = await client.post("/decode", json=_body(enc), headers=_headers(other_client))
        assert _datas(await bearer.json()) == [SECRET]  # an access token may list several
        extras = {**_headers(None), "Authorization-Extras": other_client}
        resp = await client.post("/decode", json=_body(enc), headers=extras)
        assert resp.status == 401, claims
    ours = idp.token(groups=["engineering"], aud=[AUDIENCE, "other"], azp=AUDIENCE)
    resp = await client.post(
        "/decode", json=_body(enc), headers={**_headers(None), "Authorization-Extras": ours}
    )
    assert _datas(await resp.json()) == [SECRET]


def test_refuses_to_start_without_authenticator(policy_file: Path) -> None:
    with pytest.raises(ConfigError, match="no authenticator"):
        ServerConfig(policy_file=str(policy_file))
    with pytest.raises(ConfigError, match="unsupported JWT algorithm"):
        AuthConfig(algorithms=("HS256",))
    with pytest.raises(ConfigError, match="unsupported JWT algorithm"):
        AuthConfig(algorithms=("none",))
    assert ServerConfig(insecure_dev=True).insecure_dev


def test_insecure_dev_listens_on_loopback_only() -> None:
    """No authentication: only this machine may reach the port."""
    for host in ("0.0.0.0", "::", "192.0.2.10", "codec.example.com"):  # noqa: S104
        with pytest.raises(ConfigError, match="loopback only"):
            ServerConfig(insecure_dev=True, host=host)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert ServerConfig(insecure_dev=True, host=host).host == host


def _complete(policy_file: Path, tmp_path: Path) -> dict[str, Any]:
    """Every setting a server needs outside --insecure-dev (static key, file sink)."""
    key = tmp_path / "idp.pem"
    key.write_text("not read by the settings check")
    return {
        "policy_file": str(policy_file),
        "auth": AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), public_key_files=(str(key),)),
        "audit": AuditConfig(file=str(tmp_path / "audit.jsonl")),
    }


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"auth": {"issuer": ""}}, "issuer and server.auth.audience are required"),
        ({"auth": {"audience": ()}}, "issuer and server.auth.audience are required"),
        ({"policy_file": ""}, "policy_file is required"),
        ({"audit": {"file": ""}}, "an audit sink is required"),
    ],
    ids=["issuer", "audience", "policy", "audit sink"],
)
def test_refuses_to_start_without_each_required_setting(
    policy_file: Path, tmp_path: Path, missing: dict[str, Any], message: str
) -> None:
    """Without one of them the server would decode for anyone, or record nothing."""
    complete = _complete(policy_file, tmp_path)
    assert not ServerConfig(**complete).insecure_dev  # the complete set starts
    settings = dict(complete)
    for name, value in missing.items():
        settings[name] = (
            dataclasses.replace(complete[name], **value) if isinstance(value, dict) else value
        )
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**settings)
    assert ServerConfig(**settings, insecure_dev=True).insecure_dev


async def test_insecure_dev_mode_needs_no_token(
    make_client: ClientFactory,
    shield_config: ShieldConfig,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    audit = tmp_path / "dev-audit.jsonl"
    config = ServerConfig(
        insecure_dev=True, cors_origins=(ORIGIN,), audit=AuditConfig(file=str(audit))
    )
    client = await make_client(config=config)
    enc = await _encrypted(shield_config, "anything")
    resp = await client.post(
        "/decode", json=_body(enc), headers=_headers(None, namespace="anything")
    )
    assert _datas(await resp.json()) == [SECRET]
    assert "INSECURE DEV MODE" in caplog.text
    # The record names the identity every caller gets, and how (docs/server.md).
    record = _records(audit)[-1]
    assert (record["subject"], record["auth"], record["decision"]) == (
        "insecure-dev",
        "insecure-dev",
        "allow",
    )


async def test_a_request_without_credentials_is_recorded_with_no_auth(
    make_client: ClientFactory, audit_path: Path
) -> None:
    client = await make_client()
    resp = await client.post("/decode", json=_body(), headers=_headers(None))
    assert resp.status == 401
    record = _records(audit_path)[-1]
    assert (record["subject"], record["auth"], record["decision"]) == ("", "", "deny")


# -- authorisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "namespace", "visible"),
    [
        ({"groups": ["engineering"]}, "dev-team", True),  # internal in dev
        ({"groups": ["engineering"]}, "pay-eu", False),  # pci
        ({"groups": ["engineering"]}, "clinic-1", False),  # phi
        ({"email": "CFO@example.com", "email_verified": True}, "pay-eu", True),  # finance: pci
        ({"email": "cfo@example.com", "email_verified": True}, "clinic-1", False),  # not phi
        ({"sub": "dr-house"}, "clinic-1", True),
        ({"sub": "dr-house"}, "prod-clinic", True),
        ({"sub": "dr-house"}, "pay-eu", False),
        ({"permissions": ["misc:read"]}, "misc", True),  # permission claim, internal
        ({"permissions": ["other:read"]}, "misc", False),  # claim for another namespace
        ({"permissions": ["misc:read"]}, "pay-eu", False),
        ({}, "dev-team", False),  # authenticated but no role
    ],
)
async def test_rbac_matrix(
    make_client: ClientFactory,
    idp: Idp,
    shield_config: ShieldConfig,
    claims: dict[str, Any],
    namespace: str,
    visible: bool,
) -> None:
    client = await make_client()
    enc = await _encrypted(shield_config, namespace)
    resp = await client.post(
        "/decode", json=_body(enc), headers=_headers(idp.token(**claims), namespace)
    )
    assert resp.status == 200
    data = _datas(await resp.json())
    assert (data == [SECRET]) is visible
    if not visible:
        # Never dropped: a browser (this request has an Origin) gets a readable
        # placeholder in its place, the CLI the payload unchanged.
        assert _withheld(data[0])
        cli = await client.post(
            "/decode",
            json=_body(enc),
            headers={
                k: v for k, v in _headers(idp.token(**claims), namespace).items() if k != "Origin"
            },
        )
        assert _datas(await cli.json()) == [enc.data]


async def test_per_payload_classification_in_one_request(
    make_client: ClientFactory,
    idp: Idp,
    shield_config: ShieldConfig,
    keyring_path: Path,
    audit_path: Path,
) -> None:
    import dataclasses

    from temporal_shield.converter import ClassificationConfig

    client = await make_client()
    internal = await _encrypted(shield_config, "misc", b'"card"')
    phi_config = dataclasses.replace(
        shield_config, classification=ClassificationConfig(default="phi")
    )
    phi = await _encrypted(phi_config, "misc", b'"diagnosis"')
    resp = await client.post(
        "/decode",
        json=_body(internal, phi),
        headers=_headers(idp.token(email="cfo@example.com", email_verified=True), "misc"),
    )
    data = _datas(await resp.json())
    assert data[0] == b'"card"'  # misc is "internal" by default: finance reads it
    assert _withheld(data[1])  # phi stays withheld (a browser request: a placeholder)
    record = _records(audit_path)[-1]
    assert record["decision"] == "partial"
    assert record["denied"] == 1
    assert record["decoded"] == 1
    assert "phi" in record["classifications"]


async def test_namespace_mismatch_is_denial_not_decryption(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    enc = await _encrypted(shield_config, "dev-a")
    resp = await client.post(
        "/decode", json=_body(enc), headers=_headers(idp.token(groups=["engineering"]), "dev-b")
    )
    assert _withheld(_datas(await resp.json())[0])
    assert _records(audit_path)[-1]["reason"] == "namespace mismatch"
    for ns in ("undefined", ""):
        resp = await client.post(
            "/decode", json=_body(enc), headers=_headers(idp.token(groups=["engineering"]), ns)
        )
        assert _withheld(_datas(await resp.json())[0])  # a browser: a placeholder
        assert _records(audit_path)[-1]["reason"] == "namespace unknown"
        headers = _headers(idp.token(groups=["engineering"]), ns)
        del headers["Origin"]
        resp = await client.post("/decode", json=_body(enc), headers=headers)
        assert _datas(await resp.json()) == [enc.data]  # the CLI: unchanged


async def test_tampered_ciphertext_comes_back_unchanged(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    client = await make_client()
    enc = await _encrypted(shield_config, "dev-team")
    tampered = Payload()
    tampered.CopyFrom(enc)
    tampered.data = enc.data[:-1] + bytes([enc.data[-1] ^ 1])
    truncated = Payload()
    truncated.CopyFrom(enc)
    truncated.data = enc.data[:20]
    resp = await client.post(
        "/decode",
        json=_body(tampered, truncated),
        headers=_headers(idp.token(groups=["engineering"])),
    )
    assert resp.status == 200
    assert _datas(await resp.json()) == [tampered.data, truncated.data]


# -- limits and malformed input ----------------------------------------------------------------


async def test_limits_and_malformed_bodies(make_client: ClientFactory, idp: Idp) -> None:
    client = await make_client(max_body_bytes=64 * 1024, max_payloads=5, max_payload_bytes=1024)
    headers = _headers(idp.token(groups=["engineering"]))
    cases = [
        (b"x" * (70 * 1024), 413),
        (json.dumps(_body(*[_plain()] * 6)).encode(), 400),
        (json.dumps(_body(_plain(b"x" * 2000))).encode(), 413),
        (b"{not json", 400),
        (b"[1,2]", 400),
        (json.dumps({"payloads": "nope"}).encode(), 400),
        (json.dumps({"payloads": [{"data": "!!!not base64!!!"}]}).encode(), 400),
        (json.dumps({"payloads": [{"metadata": {"encoding": 5}, "data": ""}]}).encode(), 400),
    ]
    for body, status in cases:
        resp = await client.post("/decode", data=body, headers=headers)
        assert resp.status == status, body[:40]
        doc = await resp.json()
        assert set(doc) == {"error", "message", "request_id"}
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    # Unknown fields (newer UIs send externalPayloads) are ignored.
    resp = await client.post(
        "/decode", json={"payloads": [], "externalPayloads": []}, headers=headers
    )
    assert resp.status == 200


# -- audit --------------------------------------------------------------------------------------


async def test_audit_records_and_chain(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    enc = await _encrypted(shield_config, "dev-team")
    token = idp.token(groups=["engineering"], email="eng@example.com")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await client.post(
        "/decode",
        json=_body(enc, _plain()),
        headers={**_headers(token), "traceparent": traceparent},
    )
    await client.post("/decode", json=_body(enc), headers=_headers(idp.token(), "clinic-1"))
    await client.post("/decode", json=_body(enc), headers=_headers(None))
    records = _records(audit_path)
    assert [r["decision"] for r in records] == ["allow", "deny", "deny"]
    first = records[0]
    assert first["subject"] == "user-1"
    assert first["email"] == "eng@example.com"
    assert first["namespace"] == "dev-team"
    assert first["decoded"] == 1
    assert first["passed_through"] == 1
    assert first["key_ids"][0].startswith("local:")
    assert first["classifications"] == ["internal"]
    assert first["origin"] == ORIGIN
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # continued from the caller
    assert len(records[1]["trace_id"]) == 32
    assert records[1]["trace_id"] != records[2]["trace_id"]
    assert first["client"] == "127.0.0.1"
    text = audit_path.read_text()
    assert "SECRET-MARKER" not in text
    assert token not in text
    assert verify(audit_path).ok
    # Edit one field of the middle record: verification names that line.
    lines = text.splitlines()
    lines[1] = lines[1].replace('"deny"', '"allow"', 1)
    audit_path.write_text("\n".join(lines) + "\n")
    result = verify(audit_path)
    assert not result.ok
    assert result.broken_line == 2


async def test_audit_chain_continues_across_restarts(
    make_client: ClientFactory, idp: Idp, audit_path: Path
) -> None:
    for _ in range(2):
        client = await make_client()
        await client.post("/decode", json=_body(), headers=_headers(idp.token()))
        await client.close()
    assert verify(audit_path).records == 2
    assert verify(audit_path).ok


async def test_failing_audit_sink_returns_503_and_no_plaintext(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, tmp_path: Path
) -> None:
    class Broken:
        def write(self, _: str) -> int:
            raise OSError("disk full")

        def flush(self) -> None:
            pass

    from temporal_shield.server import AuditConfig

    client = await make_client(audit=AuditConfig(stdout=True), audit_stdout=Broken())
    enc = await _encrypted(shield_config, "dev-team")
    resp = await client.post(
        "/decode", json=_body(enc), headers=_headers(idp.token(groups=["engineering"]))
    )
    assert resp.status == 503
    text = await resp.text()
    assert "SECRET-MARKER" not in text
    assert json.loads(text)["error"] == "audit_unavailable"
    # Counted as what the caller got, not as the decision that could not be recorded.
    metrics = await (await client.get("/metrics")).text()
    assert 'decision="error"' in metrics
    assert 'status="503"' in metrics
    assert 'status="200"' not in metrics


def test_audit_verify_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from temporal_shield._main import main
    from temporal_shield.server import AuditConfig, AuditLog

    path = tmp_path / "a.jsonl"
    log = AuditLog(AuditConfig(file=str(path)))
    for i in range(3):
        log.record({"n": i})
    log.close()
    assert main(["audit", "verify", str(path)]) == 0
    assert "3 records" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 2" in capsys.readouterr().out


async def test_verified_token_cache_never_outlives_exp(idp: Idp) -> None:
    from temporal_shield.server import Authenticator, AuthError

    auth = Authenticator(
        AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url, leeway=0)
    )
    now = int(time.time())
    token = idp.token(exp=now + 2)
    first = await auth.verify(token)
    assert (await auth.verify(token)) is first  # served from the cache
    await asyncio.sleep(2.2)
    with pytest.raises(AuthError, match="expired"):
        await auth.verify(token)


async def test_traces_cover_the_request_and_the_kms_call(
    idp: Idp, policy_file: Path, tmp_path: Path, shield_config: ShieldConfig
) -> None:
    from aiohttp.test_utils import TestClient, TestServer
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from temporal_shield.server import create_app

    from .conftest import server_config

    exporter = InMemorySpanExporter()
    app = create_app(
        server_config(idp, policy_file, tmp_path),
        shield_config,
        span_processor=SimpleSpanProcessor(exporter),
    )
    enc = await _encrypted(shield_config, "dev-team")  # another process wrote it: KMS Decrypt
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post(
            "/decode", json=_body(enc), headers=_headers(idp.token(groups=["engineering"]))
        )
        assert _datas(await resp.json()) == [SECRET]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"codec decode", "kms Decrypt"}
    assert spans["kms Decrypt"].parent is not None
    assert spans["kms Decrypt"].parent.span_id == spans["codec decode"].context.span_id
    record = _records(tmp_path / "audit.jsonl")[-1]
    assert record["trace_id"] == format(spans["codec decode"].context.trace_id, "032x")


async def test_unexpected_failure_is_audited_and_opaque(
    make_client: ClientFactory,
    idp: Idp,
    shield_config: ShieldConfig,
    audit_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from temporal_shield.server import CodecService

    async def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail that must not leak")

    monkeypatch.setattr(CodecService, "decode", boom)
    client = await make_client()
    enc = await _encrypted(shield_config, "dev-team")
    resp = await client.post("/decode", json=_body(enc), headers=_headers(idp.token()))
    assert resp.status == 500
    assert "secret detail" not in await resp.text()
    record = _records(audit_path)[-1]
    assert (record["decision"], record["status"]) == ("error", 500)
    assert record["reason"] == "internal error: RuntimeError"
    assert "RuntimeError" in caplog.text
    assert "secret detail" not in caplog.text  # logs name the failure, never its message


async def test_otlp_export_when_otel_variables_say_so(
    idp: Idp,
    policy_file: Path,
    tmp_path: Path,
    shield_config: ShieldConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real OTLP/HTTP receiver on 127.0.0.1 gets traces and metrics."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from temporal_shield.server import create_app

    from .conftest import server_config

    received: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}

    async def collect(request: web.Request) -> web.Response:
        received[request.path].append(await request.read())
        return web.Response(status=200)

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    collector.router.add_post("/v1/metrics", collect)
    async with TestServer(collector, host="127.0.0.1") as otlp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp.port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "codec-under-test")
        app = create_app(server_config(idp, policy_file, tmp_path), shield_config)
        enc = await _encrypted(shield_config, "dev-team")
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.post(
                "/decode", json=_body(enc), headers=_headers(idp.token(groups=["engineering"]))
            )
            assert resp.status == 200
        # Closing the app shut the providers down, which flushes both exporters.
        for _ in range(50):
            if received["/v1/traces"] and received["/v1/metrics"]:
                break
            await asyncio.sleep(0.1)
    spans = [
        span.name
        for body in received["/v1/traces"]
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert "codec decode" in spans
    assert "kms Decrypt" in spans
    metric_names = {
        metric.name
        for body in received["/v1/metrics"]
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert {"codec_requests", "codec_request_duration", "kms_calls"} <= metric_names
    resource = ExportTraceServiceRequest.FromString(received["/v1/traces"][0]).resource_spans[0]
    assert any(a.value.string_value == "codec-under-test" for a in resource.resource.attributes)
