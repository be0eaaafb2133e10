"""Readable denials: what a placeholder says, what it never says, and that it never gets encoded."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.common.v1 import Payload

from temporal_shield.converter import PayloadLike, ShieldConfig, build_codec
from temporal_shield.server import Identity, ServerConfig
from temporal_shield.server._placeholder import (
    PLACEHOLDER_METADATA,
    is_placeholder,
    placeholder,
    placeholder_in,
)
from temporal_shield.server._policy import Policy
from temporal_shield.server._service import MEMORY_PER_DECODED_BYTE, CodecService
from temporal_shield.server._wire import BadRequest, WirePayload

from .conftest import ClientFactory, wire_body
from .idp import Idp
from .test_step_up import (
    SECRET,
    STEP_UP_POLICY,
    StubGrants,
    grant,
    headers,
    labelled,
    records,
    sealed,
    service_of,
    strong,
)
from .test_step_up import policy_file as policy_file  # the step-up policy for the app

SIGN_IN = "https://codec.example/auth/login"
ENGINEER = Identity(subject="user-1", groups=frozenset({"engineering"}))
SRE = Identity(subject="sre-1", groups=frozenset({"sre"}))
GRANT_COMMAND = (
    "Request temporary access: temporal-shield grants request --namespace prod-orders"
    ' --classification internal --duration 1h --justification "<ticket>"'
)
STEP_UP_URL = f"{SIGN_IN}?acr_values=urn%3Aexample%3Amfa%20urn%3Aexample%3Ahwk&max_age=900"


def service(shield: ShieldConfig, policy_text: str = STEP_UP_POLICY) -> CodecService:
    """A codec service over the real codec and keyring, with ``policy_text``."""
    shield = labelled(shield)
    policy = Policy.from_mapping(yaml.safe_load(policy_text))
    return CodecService(build_codec(shield), shield, policy, ServerConfig(insecure_dev=True))


def notice(payload: PayloadLike) -> dict[str, Any]:
    """A placeholder's JSON, checked to be one."""
    assert payload.metadata["encoding"] == b"json/plain"
    assert payload.metadata[PLACEHOLDER_METADATA] == b"withheld"
    doc = json.loads(payload.data)
    assert isinstance(doc, dict)
    return doc


# -- what a placeholder says ------------------------------------------------------------


async def test_a_policy_denial_names_roles_grant_and_step_up(shield_config: ShieldConfig) -> None:
    codec = service(shield_config)
    payload = await sealed(shield_config, "prod-orders")
    out, outcome = await codec.decode(
        ENGINEER, "prod-orders", [payload], placeholders=True, sign_in_url=SIGN_IN
    )
    assert notice(out[0]) == {
        "temporal-shield": "withheld",
        "reason": "classification internal not permitted",
        "namespace": "prod-orders",
        "classification": "internal",
        "how to get access": [
            "Ask for one of these roles: auditor, sre.",
            GRANT_COMMAND,
            "Reading it also requires a stronger sign-in (acr urn:example:mfa or"
            f" urn:example:hwk; sign-in within the last 900 s): {STEP_UP_URL}",
        ],
    }
    # Compact JSON text, as the contract says (the UI indents it itself).
    assert out[0].data.startswith(b'{"temporal-shield":"withheld","reason":')
    assert (outcome.denied, outcome.placeholders, outcome.decision) == (1, 1, "deny")
    assert outcome.reasons == {"classification internal not permitted"}


async def test_a_step_up_denial_offers_the_stronger_sign_in(shield_config: ShieldConfig) -> None:
    codec = service(shield_config)
    pci = await sealed(shield_config, "prod-pay")
    auditor = Identity(subject="a-1", groups=frozenset({"auditors"}), acr="urn:example:pwd")
    out, outcome = await codec.decode(
        auditor, "prod-pay", [pci], placeholders=True, sign_in_url=f"{SIGN_IN}?return_to=x"
    )
    doc = notice(out[0])
    assert doc["reason"] == (
        "step-up required: acr urn:example:mfa or urn:example:hwk;"
        " sign-in within the last 900 s; amr hwk"
    )
    assert doc["classification"] == "pci"
    # Only the sign-in: the role is already held, a grant would not help.
    assert doc["how to get access"] == [
        "Sign in again with a stronger sign-in (acr urn:example:mfa or urn:example:hwk;"
        " sign-in within the last 900 s; amr hwk): "
        f"{SIGN_IN}?return_to=x&acr_values=urn%3Aexample%3Amfa%20urn%3Aexample%3Ahwk&max_age=900"
    ]
    assert outcome.reasons == {doc["reason"]}
    # Without sign-in at the server, the person is told what to get from the IdP.
    out, _ = await codec.decode(auditor, "prod-pay", [pci], placeholders=True)
    assert notice(out[0])["how to get access"] == [
        "Sign in again with a stronger sign-in at your identity provider"
        " (acr urn:example:mfa or urn:example:hwk; sign-in within the last 900 s; amr hwk)."
    ]


async def test_several_rules_ask_for_what_every_rule_accepts(shield_config: ShieldConfig) -> None:
    rules = """
step_up:
  - {namespaces: ["prod-*"], acr: ["a", "b"], max_age: 900}
  - {namespaces: ["prod-*"], acr: ["c", "b"], max_age: 300.5}
  - {namespaces: ["prod-*"], amr: ["hwk"]}
"""
    text = STEP_UP_POLICY[: STEP_UP_POLICY.index("step_up:")] + rules
    codec = service(shield_config, text)
    payload = await sealed(shield_config, "prod-orders")
    out, _ = await codec.decode(
        SRE, "prod-orders", [payload], placeholders=True, sign_in_url=SIGN_IN
    )
    (remedy,) = notice(out[0])["how to get access"]
    assert remedy.endswith(f"{SIGN_IN}?acr_values=b&max_age=300")
    assert (
        "(acr a or b; sign-in within the last 900 s; acr c or b; sign-in within the last" in remedy
    )
    # No value common to all: the first rule's (no sign-in can meet them all anyway).
    disjoint = text.replace('acr: ["c", "b"]', 'acr: ["c"]')
    out, _ = await service(shield_config, disjoint).decode(
        SRE, "prod-orders", [payload], placeholders=True, sign_in_url=SIGN_IN
    )
    (remedy,) = notice(out[0])["how to get access"]
    assert remedy.endswith(f"{SIGN_IN}?acr_values=a%20b&max_age=300")


async def test_a_grant_is_offered_only_where_it_may_be_requested_by_this_caller(
    shield_config: ShieldConfig,
) -> None:
    restricted = STEP_UP_POLICY.replace(
        "  max_duration: 14400\n", "  max_duration: 14400\n  requesters: {groups: [oncall]}\n"
    )
    codec = service(shield_config, restricted)
    payload = await sealed(shield_config, "prod-orders")
    out, _ = await codec.decode(ENGINEER, "prod-orders", [payload], placeholders=True)
    remedies = notice(out[0])["how to get access"]
    assert not any("grants request" in r for r in remedies)
    oncall = Identity(subject="user-2", groups=frozenset({"oncall"}))
    out, _ = await codec.decode(oncall, "prod-orders", [payload], placeholders=True)
    assert GRANT_COMMAND in notice(out[0])["how to get access"]
    # Not requestable in dev-* at all (and no step-up there): only the role.
    dev = await sealed(shield_config, "dev-team")
    out, _ = await codec.decode(SRE, "dev-team", [dev], placeholders=True, sign_in_url=SIGN_IN)
    assert notice(out[0])["how to get access"] == ["Ask for one of these roles: engineer."]


async def test_nothing_would_allow_it_says_whom_to_ask(shield_config: ShieldConfig) -> None:
    codec = service(shield_config)
    payload = await sealed(shield_config, "staging-x")  # no role, no grant, no step-up there
    out, _ = await codec.decode(ENGINEER, "staging-x", [payload], placeholders=True)
    assert notice(out[0])["how to get access"] == [
        "Ask the codec server's administrators (its RBAC policy)."
    ]


async def test_the_grant_command_quotes_a_hostile_namespace(shield_config: ShieldConfig) -> None:
    policy = STEP_UP_POLICY.replace(
        'grants:\n  namespaces: ["prod-*"]', 'grants:\n  namespaces: ["*"]'
    )
    assert policy != STEP_UP_POLICY
    codec = service(shield_config, policy)
    namespace = "x; rm -rf ~ #"
    payload = await sealed(shield_config, namespace)
    out, _ = await codec.decode(ENGINEER, namespace, [payload], placeholders=True)
    remedies = notice(out[0])["how to get access"]
    assert (
        "Request temporary access: temporal-shield grants request --namespace 'x; rm -rf ~ #'"
        ' --classification internal --duration 1h --justification "<ticket>"'
    ) in remedies
    # With a public URL the command names this server (quoted like the rest).
    shield = labelled(shield_config)
    public = CodecService(
        build_codec(shield),
        shield,
        Policy.from_mapping(yaml.safe_load(policy)),
        ServerConfig(insecure_dev=True, public_url="https://codec.example/a b"),
    )
    out, _ = await public.decode(ENGINEER, namespace, [payload], placeholders=True)
    assert (
        "Request temporary access: temporal-shield grants request --server"
        " 'https://codec.example/a b' --namespace 'x; rm -rf ~ #'"
        ' --classification internal --duration 1h --justification "<ticket>"'
    ) in notice(out[0])["how to get access"]


# -- what a placeholder never says -------------------------------------------------------


async def test_another_namespace_is_neither_named_nor_described(
    shield_config: ShieldConfig,
) -> None:
    codec = service(shield_config)
    theirs = await sealed(shield_config, "prod-pay")  # pci, in a namespace not asked about
    key_id = theirs.metadata["encryption-key-id"].decode()
    out, outcome = await codec.decode(
        SRE, "prod-orders", [theirs], placeholders=True, sign_in_url=SIGN_IN
    )
    assert notice(out[0]) == {
        "temporal-shield": "withheld",
        "reason": "namespace mismatch: the payload belongs to another namespace",
        "namespace": "prod-orders",
        "how to get access": ["Open it from the namespace its workflow runs in."],
    }
    for secret in (b"prod-pay", b"pci", key_id.encode(), b"SECRET"):
        assert secret not in out[0].data
    assert outcome.reasons == {"namespace mismatch"}
    out, outcome = await codec.decode(SRE, None, [theirs], placeholders=True)
    assert notice(out[0]) == {
        "temporal-shield": "withheld",
        "reason": "namespace unknown: the request names no namespace",
        "how to get access": [
            "Send the namespace: the X-Namespace header, or a codec endpoint ending in"
            " /{namespace}."
        ],
    }
    assert outcome.reasons == {"namespace unknown"}


async def test_no_key_id_size_or_plaintext_in_any_placeholder(
    shield_config: ShieldConfig,
) -> None:
    codec = service(shield_config)
    big = b'"' + b"SECRET-MARKER" * 1000 + b'"'
    payload = await sealed(shield_config, "prod-orders", big)
    key_id = payload.metadata["encryption-key-id"]
    for identity in (ENGINEER, SRE):  # a policy denial, a step-up denial
        out, _ = await codec.decode(
            identity, "prod-orders", [payload], placeholders=True, sign_in_url=SIGN_IN
        )
        data = out[0].data
        assert notice(out[0])["namespace"] == "prod-orders"
        assert key_id not in data
        assert b"SECRET" not in data
        assert str(len(big)).encode() not in data
        assert set(out[0].metadata) == {"encoding", PLACEHOLDER_METADATA}


async def test_a_hostile_namespace_header_stays_one_bounded_json_string(
    shield_config: ShieldConfig,
) -> None:
    codec = service(shield_config)
    payload = await sealed(shield_config, "prod-orders")
    for namespace, shown in (
        ('a"},{"temporal-shield":"x', 'a"},{"temporal-shield":"x'),
        ("\udcff\x00\n" + "n" * 10_000, "\udcff\x00\n" + "n" * 509 + "...[truncated]"),
    ):
        out, _ = await codec.decode(ENGINEER, namespace, [payload], placeholders=True)
        doc = notice(out[0])
        assert doc["temporal-shield"] == "withheld"
        assert doc["namespace"] == shown
        assert len(out[0].data) < 2048
        assert out[0].data.isascii()


# -- what is and is not replaced --------------------------------------------------------


async def test_only_denials_become_placeholders_count_and_order_kept(
    shield_config: ShieldConfig,
) -> None:
    codec = service(shield_config)
    allowed = await sealed(shield_config, "prod-orders")
    denied = await sealed(shield_config, "prod-pay")  # pci: sre has no role for it
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"plain"')
    foreign = Payload(metadata={"encoding": b"binary/encrypted"}, data=b"not ours")
    broken = Payload(metadata=dict(allowed.metadata), data=allowed.data[:12])
    sre = Identity(subject="sre-1", groups=frozenset({"sre"}), **strong_identity())
    batch = [plain, allowed, foreign, broken, allowed]
    out, outcome = await codec.decode(sre, "prod-orders", batch, placeholders=True)
    assert [p.data for p in out] == [b'"plain"', SECRET, b"not ours", broken.data, SECRET]
    assert not any(is_placeholder(p) for p in out)
    assert outcome.placeholders == 0
    out, outcome = await codec.decode(
        sre, "prod-orders", [allowed, denied, plain, denied], placeholders=True
    )
    assert out[0].data == SECRET
    assert out[2] is plain
    assert [is_placeholder(p) for p in out] == [False, True, False, True]
    assert (outcome.decoded, outcome.denied, outcome.placeholders) == (1, 2, 2)
    # The default: a denied payload comes back unchanged.
    out, outcome = await codec.decode(sre, "prod-orders", [allowed, denied])
    assert out[1] is denied
    assert outcome.placeholders == 0


async def test_budget_withheld_payloads_are_not_denials(shield_config: ShieldConfig) -> None:
    shield = labelled(shield_config)
    policy = Policy.from_mapping(yaml.safe_load(STEP_UP_POLICY))
    limits = ServerConfig(insecure_dev=True, max_decoded_payload_bytes=4)
    codec = CodecService(build_codec(shield), shield, policy, limits)
    payload = await sealed(shield_config, "prod-orders")
    sre = Identity(subject="sre-1", groups=frozenset({"sre"}), **strong_identity())
    out, outcome = await codec.decode(sre, "prod-orders", [payload], placeholders=True)
    assert out[0] is payload
    assert (outcome.withheld, outcome.denied, outcome.placeholders) == (1, 0, 0)


async def test_placeholders_are_held_in_the_memory_budget(shield_config: ShieldConfig) -> None:
    payload = await sealed(shield_config, "prod-orders")
    out, _ = await service(shield_config).decode(
        ENGINEER, "prod-orders", [payload], placeholders=True
    )
    size = len(out[0].data)
    shield = labelled(shield_config)
    policy = Policy.from_mapping(yaml.safe_load(STEP_UP_POLICY))
    limits = ServerConfig(
        insecure_dev=True,
        max_decoded_bytes_in_flight=1 << 20,
        max_decoded_bytes_in_flight_per_caller=2 * MEMORY_PER_DECODED_BYTE * size,
    )
    codec = CodecService(build_codec(shield), shield, policy, limits)
    hold = codec.hold(ENGINEER)
    out, outcome = await codec.decode(
        ENGINEER, "prod-orders", [payload] * 10, hold, placeholders=True
    )
    # Two notices fit the caller's share; the rest come back unchanged (denied all the same).
    assert [is_placeholder(p) for p in out] == [True, True] + [False] * 8
    assert out[2] is payload
    assert (outcome.denied, outcome.placeholders) == (10, 2)
    assert hold.held == 2 * MEMORY_PER_DECODED_BYTE * size
    hold.release()


async def test_a_grant_from_the_registry_opens_the_payload(shield_config: ShieldConfig) -> None:
    codec = service(shield_config)
    codec.grants = StubGrants([grant()])
    payload = await sealed(shield_config, "prod-orders")
    engineer = Identity(subject="user-1", groups=frozenset({"engineering"}), **strong_identity())
    out, outcome = await codec.decode(engineer, "prod-orders", [payload], placeholders=True)
    assert out[0].data == SECRET
    assert outcome.roles == {"grant:grant-7"}
    assert outcome.grants == {"grant-7": "INC-4242"}
    # Another subject: the same registry has nothing for them.
    other = Identity(subject="user-9", **strong_identity())
    out, outcome = await codec.decode(other, "prod-orders", [payload], placeholders=True)
    assert is_placeholder(out[0])
    assert outcome.grants is None


def strong_identity() -> dict[str, Any]:
    """Identity fields of a fresh MFA sign-in (see ``strong`` for the token claims)."""
    claims = strong()
    return {"acr": claims["acr"], "amr": frozenset(claims["amr"]), "auth_time": claims["auth_time"]}


# -- /encode refuses placeholders --------------------------------------------------------


def _smuggled() -> dict[str, Payload]:
    real = placeholder(
        namespace="dev-team", reason="r", classification="internal", remedies=["ask"]
    )
    text = json.loads(real.data)
    json_plain = {"encoding": b"json/plain"}
    return {
        "as returned": Payload(metadata=real.metadata, data=real.data),
        "marker in another case": Payload(
            metadata={"encoding": b"json/plain", "Temporal-Shield-Placeholder": b"x"},
            data=b"{}",
        ),
        "marker with any value": Payload(
            metadata={"encoding": b"json/plain", PLACEHOLDER_METADATA: b""}, data=b'"x"'
        ),
        "marker gone, text sent back": Payload(metadata=json_plain, data=real.data),
        "re-indented by a UI": Payload(
            metadata=json_plain, data=json.dumps(text, indent=2).encode()
        ),
        "with a BOM": Payload(metadata=json_plain, data=b"\xef\xbb\xbf" + real.data),
        "in UTF-16": Payload(metadata=json_plain, data=json.dumps(text).encode("utf-16")),
        "in UTF-32": Payload(metadata=json_plain, data=json.dumps(text).encode("utf-32-le")),
        "escaped key": Payload(metadata=json_plain, data=b'{"temporal\\u002dshield": "withheld"}'),
        "as the workflow's argument list": Payload(
            metadata=json_plain, data=b"[" + real.data + b"]"
        ),
        "another encoding label": Payload(metadata={"encoding": b"binary/plain"}, data=real.data),
        # Found by the attacker review: nested, wrapped, repeated, after a large value.
        "nested in a list": Payload(metadata=json_plain, data=b"[[" + real.data + b"]]"),
        "inside an object": Payload(metadata=json_plain, data=b'{"args": ' + real.data + b"}"),
        "followed by junk": Payload(metadata=json_plain, data=real.data + b" x"),
        "twice": Payload(metadata=json_plain, data=real.data + b" " + real.data),
        "duplicate key": Payload(
            metadata=json_plain,
            data=b'{"temporal-shield": "withheld", "temporal-shield": "other"}',
        ),
        "nested deeper": Payload(
            metadata=json_plain, data=b'{"log": [{"temporal-shield": "withheld"}]}'
        ),
        "larger than any notice": Payload(
            metadata=json_plain,
            data=b'{"temporal-shield": "withheld", "x": "' + b"x" * 70_000 + b'"}',
        ),
        "after a large argument": Payload(
            metadata=json_plain, data=b'["' + b"x" * 70_000 + b'", ' + real.data + b"]"
        ),
    }


def test_a_large_document_is_searched_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile /encode (4 MiB of objects that say "withheld") costs a search, not a parse.

    Parsing calls back into Python for every object (about a second for 4 MiB
    of ``{}``, on the event loop): above the parse limit the parser must not run.
    """

    class NoParsing(json.JSONDecoder):
        def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
            raise AssertionError("a large document was parsed")

    monkeypatch.setattr(json, "JSONDecoder", NoParsing)
    hostile = b'["withheld",' + b"{}," * 1_400_000 + b"{}]"
    assert not is_placeholder(Payload(metadata={"encoding": b"json/plain"}, data=hostile))
    notice = placeholder(namespace="n", reason="r", classification=None, remedies=[]).data
    pasted = b'["' + b"x" * 4_000_000 + b'", ' + notice + b"]"
    assert is_placeholder(Payload(metadata={"encoding": b"json/plain"}, data=pasted))
    indented = json.dumps(["x" * 70_000, json.loads(notice)], indent=2).encode("utf-16")
    assert is_placeholder(Payload(metadata={"encoding": b"json/plain"}, data=indented))


def test_a_request_parses_at_most_64_kib_however_many_payloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """90 payloads each just under the parse limit: the rest is searched, not parsed."""
    parsed: list[int] = []

    class Counting(json.JSONDecoder):
        def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
            if idx == 0:
                parsed.append(len(s))
            return super().raw_decode(s, idx)

    monkeypatch.setattr(json, "JSONDecoder", Counting)
    json_plain = {"encoding": b"json/plain"}
    hostile = b"[" + b"{}," * 20_000 + b'"withheld"]'
    many = [Payload(metadata=json_plain, data=hostile) for _ in range(90)]
    assert not placeholder_in(many)
    assert 0 < sum(parsed) <= 64 * 1024
    notice = placeholder(namespace="n", reason="r", classification=None, remedies=[]).data
    assert placeholder_in([*many, Payload(metadata=json_plain, data=b"[" + notice + b"]")])


def test_every_form_of_a_placeholder_is_recognised() -> None:
    for name, payload in _smuggled().items():
        assert is_placeholder(payload), name
        assert is_placeholder(WirePayload(dict(payload.metadata), payload.data)), name
    ordinary = {
        "other JSON": b'{"temporal-shield": "is our product", "reason": "x"}',
        "a string": b'"temporal-shield withheld"',
        "binary": bytes(range(256)),
        "deep nesting": b"[" * 60_000,
        "withheld in other words": b'{"temporal-shield": "withheld later", "w": "withheld"}',
        "a document quoting a notice": b'# Notes\n{"temporal-shield": "withheld"}',
        "a large document quoting a notice": b"# Notes\n"
        + b" " * 70_000
        + b'{"temporal-shield": "withheld"}',
        "empty": b"",
    }
    for name, data in ordinary.items():
        assert not is_placeholder(Payload(metadata={"encoding": b"json/plain"}, data=data)), name


async def test_encode_refuses_placeholders_before_any_kms_call(
    shield_config: ShieldConfig,
) -> None:
    codec = service(shield_config)
    stats = codec._keys.stats
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"fine"')
    for name, smuggled in _smuggled().items():
        with pytest.raises(BadRequest, match="placeholder payloads cannot be encoded"):
            await codec.encode(ENGINEER, "dev-team", [plain, smuggled, plain])
        assert stats.kms_calls == 0, name
    mention = Payload(
        metadata={"encoding": b"json/plain"}, data=b'{"temporal-shield": "is our product"}'
    )
    encoded, _ = await codec.encode(ENGINEER, "dev-team", [plain, mention])
    assert [p.metadata["encoding"] for p in encoded] == [b"binary/encrypted"] * 2


async def test_encode_over_http_is_400_and_audited(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    client = await make_client()
    token = idp.token(groups=["engineering"])
    codec = service_of(client)
    real = _smuggled()["as returned"]
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"fine"')
    for batch in ([real], [plain, real], [plain, _smuggled()["re-indented by a UI"]]):
        resp = await client.post(
            "/encode", json=wire_body(*batch), headers=headers(token, "dev-team")
        )
        assert resp.status == 400
        body = await resp.json()
        assert body["error"] == "bad_request"
        assert body["message"] == "placeholder payloads cannot be encoded"
    assert codec._keys.stats.kms_calls == 0
    found = records(audit_path)
    assert [(r["operation"], r["decision"], r["status"]) for r in found] == [
        ("encode", "deny", 400)
    ] * 3
    assert {r["reason"] for r in found} == {"placeholder payloads cannot be encoded"}
    assert all(r["encoded"] == 0 for r in found)
    # Not allowed to encode at all: the permission answer comes first.
    resp = await client.post(
        "/encode",
        json=wire_body(real),
        headers=headers(idp.token(groups=["sre"]), "prod-orders"),
    )
    assert resp.status == 403
    resp = await client.post("/encode", json=wire_body(plain), headers=headers(token, "dev-team"))
    assert resp.status == 200
    assert base64.b64decode((await resp.json())["payloads"][0]["metadata"]["encoding"]) == (
        b"binary/encrypted"
    )


async def test_a_decoded_placeholder_round_trip_is_refused(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    """What the server handed out as a notice cannot come back in to be stored."""
    client = await make_client()
    codec = service_of(client)
    payload = await sealed(shield_config, "dev-team")
    out, _ = await codec.decode(SRE, "dev-team", [payload], placeholders=True)
    assert is_placeholder(out[0])
    wire = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in out[0].metadata.items()},
                "data": base64.b64encode(out[0].data).decode(),
            }
        ]
    }
    token = idp.token(groups=["engineering"])
    resp = await client.post("/encode", json=wire, headers=headers(token, "dev-team"))
    assert resp.status == 400


# -- over HTTP: who gets placeholders ------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "with_origin", "expected"),
    [
        ("browser", True, True),
        ("browser", False, False),
        ("always", False, True),
        ("always", True, True),
        ("never", True, False),
        ("never", False, False),
    ],
)
async def test_who_gets_placeholders(
    make_client: ClientFactory,
    idp: Idp,
    shield_config: ShieldConfig,
    audit_path: Path,
    mode: str,
    with_origin: bool,
    expected: bool,
) -> None:
    client = await make_client(placeholders=mode)
    allowed = await sealed(shield_config, "dev-team")
    denied = await sealed(shield_config, "prod-orders")
    token = idp.token(groups=["engineering"])
    resp = await client.post(
        "/decode",
        json=wire_body(allowed, denied, allowed),
        headers=headers(token, "prod-orders", origin=with_origin),
    )
    assert resp.status == 200
    doc = await resp.json()
    assert len(doc["payloads"]) == 3
    # dev-team payloads in a prod-orders request: namespace mismatch; the other: policy.
    shown = [
        WirePayload(
            {k: base64.b64decode(v) for k, v in p["metadata"].items()},
            base64.b64decode(p["data"]),
        )
        for p in doc["payloads"]
    ]
    assert [is_placeholder(p) for p in shown] == [expected] * 3
    if expected:
        assert notice(shown[1])["reason"] == "classification internal not permitted"
        assert notice(shown[0])["reason"].startswith("namespace mismatch")
    else:
        assert [p.data for p in shown] == [allowed.data, denied.data, allowed.data]
    (record,) = records(audit_path)
    assert (record["denied"], record["placeholders"], record["decision"]) == (
        3,
        3 if expected else 0,
        "deny",
    )
