"""The Temporal PayloadCodec, configuration loading and one-line installation."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    DefaultFailureConverterWithEncodedAttributes,
    WorkflowSerializationContext,
)

from temporal_shield.codec import (
    CLASSIFICATION_METADATA,
    KEY_ID_METADATA,
    ConfigError,
    DecryptionError,
)
from temporal_shield.converter import (
    ClassificationConfig,
    KeysConfig,
    ShieldCodec,
    ShieldConfig,
    ShieldPlugin,
    build_codec,
    data_converter,
    load_config,
)


def _config(keyring: Path, **kw: object) -> ShieldConfig:
    return ShieldConfig(keys=KeysConfig(uri=f"local://{keyring}"), **kw)  # type: ignore[arg-type]


def _json(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_encode_decode_one_per_payload_in_order(keyring_path: Path) -> None:
    codec = build_codec(_config(keyring_path))
    inputs = [_json(f'"value-{i}"') for i in range(5)]
    encoded = await codec.encode(inputs)
    assert len(encoded) == 5
    for p in encoded:
        assert p.metadata["encoding"] == b"binary/encrypted"
        assert b"value" not in p.data
    decoded = await codec.decode(encoded)
    assert decoded == inputs


async def test_foreign_encodings_pass_through(keyring_path: Path) -> None:
    codec = build_codec(_config(keyring_path))
    plain = [_json('"old plaintext"'), Payload(metadata={"encoding": b"binary/null"})]
    assert await codec.decode(plain) == plain


async def test_context_binds_namespace(keyring_path: Path) -> None:
    codec = build_codec(_config(keyring_path))
    in_a = codec.with_context(WorkflowSerializationContext(namespace="a", workflow_id="w"))
    in_b = codec.with_context(WorkflowSerializationContext(namespace="b", workflow_id="w"))
    encoded = await in_a.encode([_json('"x"')])
    assert (await in_a.decode(encoded))[0].data == b'"x"'
    with pytest.raises(DecryptionError):
        await in_b.decode(encoded)
    # Encoded without context: bound to the configured namespace, still decodable.
    bare = await codec.encode([_json('"y"')])
    assert (await codec.decode(bare))[0].data == b'"y"'
    with_default = codec.with_context(
        WorkflowSerializationContext(namespace="default", workflow_id="any")
    )
    assert (await with_default.decode(bare))[0].data == b'"y"'


async def test_strict_workflow_binding(keyring_path: Path) -> None:
    codec = build_codec(_config(keyring_path, strict_workflow_binding=True))
    wf1 = codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id="1"))
    wf2 = codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id="2"))
    act = codec.with_context(
        ActivitySerializationContext(
            namespace="default",
            activity_id="a",
            activity_type="t",
            activity_task_queue="q",
            workflow_id="1",
            workflow_type="W",
            is_local=False,
        )
    )
    encoded = await wf1.encode([_json('"x"')])
    assert await act.decode(encoded) == [_json('"x"')]
    with pytest.raises(DecryptionError):
        await wf2.decode(encoded)


async def test_classification_label_is_authenticated(keyring_path: Path) -> None:
    cfg = _config(
        keyring_path,
        classification=ClassificationConfig(default="internal", namespaces=(("clinic-*", "phi"),)),
    )
    codec = build_codec(cfg)
    clinic = codec.with_namespace("clinic-eu")
    encoded = await clinic.encode([_json('"x"')])
    assert encoded[0].metadata[CLASSIFICATION_METADATA] == b"phi"
    assert (await codec.encode([_json('"x"')]))[0].metadata[CLASSIFICATION_METADATA] == b"internal"
    forged = Payload()
    forged.CopyFrom(encoded[0])
    forged.metadata[CLASSIFICATION_METADATA] = b"internal"
    with pytest.raises(DecryptionError):
        await clinic.decode([forged])
    del forged.metadata[CLASSIFICATION_METADATA]
    with pytest.raises(DecryptionError):
        await clinic.decode([forged])


async def test_cached_decode_path_checks_the_label_and_key_id(keyring_path: Path) -> None:
    codec = build_codec(_config(keyring_path, classification=ClassificationConfig(default="phi")))
    encoded = await codec.encode([_json('"x"'), _json('"y"')])
    # The second payload (and every later one) opens through the cached header.
    assert await codec.decode(encoded) == [_json('"x"'), _json('"y"')]
    assert codec.envelope.open_cached(
        encoded[1].data, key_id=encoded[1].metadata[KEY_ID_METADATA].decode(), namespace="default"
    )
    for key, value in (
        (CLASSIFICATION_METADATA, b"internal"),
        (CLASSIFICATION_METADATA, b"\xff"),
        (KEY_ID_METADATA, b"local:other"),
        (KEY_ID_METADATA, b"\xff"),
    ):
        forged = Payload()
        forged.CopyFrom(encoded[1])
        forged.metadata[key] = value
        with pytest.raises(DecryptionError):
            await codec.decode([forged])


async def test_missing_key_id_metadata(keyring_path: Path) -> None:
    codec = build_codec(_config(keyring_path))
    encoded = (await codec.encode([_json('"x"')]))[0]
    del encoded.metadata["encryption-key-id"]
    with pytest.raises(DecryptionError):
        await codec.decode([encoded])


def test_data_converter_encrypts_failures(keyring_path: Path) -> None:
    conv = data_converter(_config(keyring_path))
    assert isinstance(conv.payload_codec, ShieldCodec)
    assert isinstance(conv.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    assert conv.external_storage is None
    plain = data_converter(_config(keyring_path, encrypt_failures=False))
    assert not isinstance(plain.failure_converter, DefaultFailureConverterWithEncodedAttributes)


def test_missing_keyring_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys init"):
        build_codec(_config(tmp_path / "missing.json"))


def test_plugin_binds_client_namespace(keyring_path: Path) -> None:
    plugin = ShieldPlugin(_config(keyring_path))
    cfg = plugin.configure_client({"namespace": "payments"})  # type: ignore[typeddict-item]
    codec = cfg["data_converter"].payload_codec
    assert isinstance(codec, ShieldCodec)
    assert codec.namespace == "payments"


# -- configuration loading ---------------------------------------------------------


def test_toml_env_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "shield.toml"
    toml.write_text(
        """
namespace = "orders"
strict_workflow_binding = true

[keys]
uri = "aws-kms://alias/from-toml"
decrypt_uris = ["local:///old.json"]

[compression]
threshold = 2048

[classification]
default = "internal"
[classification.namespaces]
"clinic-*" = "phi"
"pay-*" = "pci"

[server]
whatever = 1
"""
    )
    env = {
        "TEMPORAL_SHIELD_CONFIG": str(toml),
        "TEMPORAL_SHIELD_KEY_URI": "aws-kms://alias/from-env",
        "TEMPORAL_SHIELD_COMPRESSION": "off",
        "TEMPORAL_SHIELD_S3_BUCKET": "payloads",
        "TEMPORAL_SHIELD_DEK_MAX_MESSAGES": "1000",
    }
    cfg = load_config(env=env, other_sections=["server"])
    assert cfg.namespace == "orders"
    assert cfg.strict_workflow_binding is True
    assert cfg.keys.uri == "aws-kms://alias/from-env"
    assert cfg.keys.decrypt_uris == ("local:///old.json",)
    assert cfg.compression.enabled is False
    assert cfg.compression.threshold == 2048
    assert cfg.storage.s3_bucket == "payloads"
    assert cfg.data_keys.max_messages == 1000
    assert cfg.classification.label_for("clinic-1") == "phi"
    assert cfg.classification.label_for("pay-x") == "pci"
    assert cfg.classification.label_for("misc") == "internal"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("nmespace = 'x'", "unknown setting"),
        ("[keys]\nurl = 'x'", "unknown setting"),
        ("[compression]\nthreshold = 'big'", "must be a number"),
        ("[compression]\nlevel = 99", "level"),
        ("[data_keys]\nmax_messages = 10000000000", "max_messages"),
        ("[classification]\ndefault = 'PHI!'", "classification"),
        ("strict_workflow_binding = 'yes'", "boolean"),
        ("keys = 3", "table"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_bad_env_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="boolean"):
        load_config(env={"TEMPORAL_SHIELD_COMPRESSION": "maybe"})
    with pytest.raises(ConfigError, match="number"):
        load_config(env={"TEMPORAL_SHIELD_S3_THRESHOLD": "lots"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(env={"TEMPORAL_SHIELD_CONFIG": "/nonexistent/shield.toml"})


def test_temporal_tls_from_secret_layout_env_and_toml(tmp_path: Path) -> None:
    from temporal_shield.certs import CLIENT_AUTH, issue, make_ca, write_secret
    from temporal_shield.converter import TemporalTlsConfig, temporal_tls

    ca = make_ca()
    write_secret(tmp_path / "worker", issue(ca, dns_names=["w"], usages=[CLIENT_AUTH]), ca.cert)
    cfg = load_config(
        env={
            "TEMPORAL_SHIELD_TLS_DIR": str(tmp_path / "worker"),
            "TEMPORAL_SHIELD_TLS_SERVER_NAME": "temporal-frontend",
        }
    )
    tls = temporal_tls(cfg)
    assert tls is not None
    assert tls.client_cert == (tmp_path / "worker" / "tls.crt").read_bytes()
    assert tls.client_private_key == (tmp_path / "worker" / "tls.key").read_bytes()
    assert tls.server_root_ca_cert == (tmp_path / "worker" / "ca.crt").read_bytes()
    assert tls.domain == "temporal-frontend"
    assert temporal_tls(ShieldConfig()) is None
    toml = tmp_path / "s.toml"
    toml.write_text(f'[tls]\nca_file = "{tmp_path / "worker" / "ca.crt"}"\n')
    only_ca = temporal_tls(load_config(toml, env={}))
    assert only_ca is not None
    assert only_ca.client_cert is None
    with pytest.raises(ConfigError, match="together"):
        temporal_tls(ShieldConfig(tls=TemporalTlsConfig(cert_file=str(toml))))
    with pytest.raises(ConfigError, match="cannot read"):
        temporal_tls(ShieldConfig(tls=TemporalTlsConfig(ca_file=str(tmp_path / "missing.crt"))))


async def test_classification_by_workflow_id_is_consistent_across_contexts(
    keyring_path: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(
        f"""
[keys]
uri = "local://{keyring_path}"
[classification]
default = "internal"
[classification.workflow_ids]
"claim-*" = "phi"
"invoice-*" = "pci"
[classification.namespaces]
"clinic-*" = "phi"
"""
    )
    codec = build_codec(load_config(toml, env={}))
    claim = "claim-8431"
    contexts = [
        WorkflowSerializationContext(namespace="default", workflow_id=claim),  # client + workflow
        ActivitySerializationContext(
            namespace="default",
            activity_id="1",
            activity_type="a",
            activity_task_queue="q",
            workflow_id=claim,
            workflow_type="ClaimWorkflow",
            is_local=False,
        ),
    ]
    for context in contexts:
        encoded = await codec.with_context(context).encode([_json('"x"')])
        assert encoded[0].metadata[CLASSIFICATION_METADATA] == b"phi"
    invoice = codec.with_context(
        WorkflowSerializationContext(namespace="default", workflow_id="invoice-1")
    )
    assert (await invoice.encode([_json('"x"')]))[0].metadata[CLASSIFICATION_METADATA] == b"pci"
    other = codec.with_context(WorkflowSerializationContext(namespace="clinic-2", workflow_id="x"))
    assert (await other.encode([_json('"x"')]))[0].metadata[CLASSIFICATION_METADATA] == b"phi"
    plain = codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id="x"))
    assert (await plain.encode([_json('"x"')]))[0].metadata[CLASSIFICATION_METADATA] == b"internal"
