"""The Temporal PayloadCodec, configuration loading and one-line installation."""

from __future__ import annotations

import base64
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
    SampleKeys,
    ShieldError,
    is_envelope,
)
from temporal_shield.converter import (
    ClassificationConfig,
    KeysConfig,
    PlaintextRefusedError,
    ShieldCodec,
    ShieldConfig,
    ShieldPlugin,
    build_codec,
    data_converter,
    load_config,
)

from ..sample_codec import SAMPLE_KEY, SAMPLE_KEY_ID, sample_codec, write_sample_keys


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
        ("nmespace = 'x'", r"unknown setting.*nmespace \(did you mean namespace\?\)"),
        ("[keys]\nurl = 'x'", r"unknown setting.*keys: url \(did you mean uri\?\)"),
        ("[compresion]\nlevel = 1", r"compresion \(did you mean compression\?\)"),
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


# --- Telling formats apart, enforcement, the sample codec reader ---------------------


def _sample_file(tmp_path: Path, **keys: bytes) -> Path:
    return write_sample_keys(tmp_path / "sample-keys.json", keys or {SAMPLE_KEY_ID: SAMPLE_KEY})


async def test_a_foreign_binary_encrypted_payload_passes_through_not_decryption_error(
    keyring_path: Path,
) -> None:
    codec = build_codec(_config(keyring_path))
    foreign = await sample_codec().encode([_json('"old"')])
    # Not ours by its bytes: unchanged, whatever the label says (no reader configured).
    assert await codec.decode(foreign) == foreign
    # A forged label on plaintext is not ours either.
    forged = Payload(metadata={"encoding": b"binary/encrypted"}, data=b'"plain"')
    assert await codec.decode([forged]) == [forged]
    # Our own envelopes are still authenticated: a flipped bit after the magic fails.
    ours = (await codec.encode([_json('"x"')]))[0]
    tampered = Payload()
    tampered.CopyFrom(ours)
    tampered.data = ours.data[:2] + bytes([ours.data[2] ^ 1]) + ours.data[3:]
    with pytest.raises(DecryptionError):
        await codec.decode([tampered])


async def test_sample_reader_decodes_sample_payloads_and_writes_only_ours(
    keyring_path: Path, tmp_path: Path
) -> None:
    keys = _sample_file(tmp_path)
    codec = _reader(keyring_path, keys)
    old = [_json(f'"old-{i}"') for i in range(3)]
    sample = await sample_codec().encode(old)
    ours = await codec.encode([_json('"new"')])
    assert is_envelope(ours[0].data)  # writes ours, never the sample's format
    assert await codec.decode([*sample, *ours]) == [*old, _json('"new"')]


async def test_sample_payload_starting_with_our_magic_is_still_the_samples(
    keyring_path: Path, tmp_path: Path
) -> None:
    keys = _sample_file(tmp_path)
    codec = _reader(keyring_path, keys)
    sample = sample_codec()
    inner = _json('"collision"')
    # One sample nonce in 65,536 starts with b"TS": forge that nonce on purpose.
    nonce = b"TS" + bytes(10)
    data = nonce + sample.encryptor.encrypt(nonce, inner.SerializeToString(), None)
    payload = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": SAMPLE_KEY_ID.encode()},
        data=data,
    )
    assert await codec.decode([payload]) == [inner]
    # And with the header cache warm (the shortcut is tried first): still the sample's.
    ours = await codec.encode([_json('"ours"')])
    assert await codec.decode([*ours, payload, *ours]) == [_json('"ours"'), inner, _json('"ours"')]


async def test_without_the_sample_reader_a_ts_prefixed_foreign_payload_fails_closed(
    keyring_path: Path,
) -> None:
    # docs/format.md: starting with the magic makes a payload ours; one that does
    # not parse is a damaged envelope (the opaque error), never passed through.
    codec = build_codec(_config(keyring_path))
    sample = sample_codec()
    nonce = b"TS" + bytes(10)
    data = nonce + sample.encryptor.encrypt(nonce, _json('"x"').SerializeToString(), None)
    payload = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": SAMPLE_KEY_ID.encode()},
        data=data,
    )
    assert not is_envelope(data)
    with pytest.raises(DecryptionError):
        await codec.decode([payload])
    # The same bytes without the magic: someone else's, passed through unchanged.
    other = Payload()
    other.CopyFrom(payload)
    other.data = b"XX" + data[2:]
    assert await codec.decode([other]) == [other]


@pytest.mark.parametrize(
    "case", ["truncated", "short", "wrong key id", "wrong key", "not a payload", "flipped"]
)
async def test_hostile_sample_payloads_are_one_opaque_error(
    keyring_path: Path, tmp_path: Path, case: str
) -> None:
    keys = _sample_file(tmp_path, **{SAMPLE_KEY_ID: SAMPLE_KEY, "other": bytes(32)})
    codec = _reader(keyring_path, keys)
    sample = sample_codec()
    good = (await sample.encode([_json('"secret-value"')]))[0]
    key_id = SAMPLE_KEY_ID
    data = good.data
    if case == "truncated":
        data = data[:-1]
    elif case == "short":
        data = data[:27]  # less than a nonce and a tag
    elif case == "wrong key id":
        key_id = "other"  # a configured id, but not the key that sealed it
    elif case == "wrong key":
        data = sample_codec(key=bytes(range(32))).encrypt(_json('"x"').SerializeToString())
    elif case == "not a payload":
        data = sample.encrypt(b"\xff\xff\xff\xff")  # authenticates, but holds no Payload
    elif case == "flipped":
        data = data[:20] + bytes([data[20] ^ 0x80]) + data[21:]
    payload = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": key_id.encode()},
        data=data,
    )
    with pytest.raises(DecryptionError) as raised:
        await codec.decode([payload])
    assert str(raised.value) == "payload could not be decrypted"
    assert "secret-value" not in repr(raised.value.__cause__)


async def test_sample_payload_under_an_unknown_key_id_passes_through(
    keyring_path: Path, tmp_path: Path
) -> None:
    keys = _sample_file(tmp_path)
    codec = _reader(keyring_path, keys)
    unknown = await sample_codec(key_id="someone-elses").encode([_json('"x"')])
    assert await codec.decode(unknown) == unknown


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (None, 0o600, "does not exist"),
        ("ok", 0o640, "accessible by group or others"),
        ("ok", 0o604, "accessible by group or others"),
        ('{"format": "other/v1", "keys": {}}', 0o600, "malformed"),
        ('{"format": "temporal-shield-sample-keys/v1", "keys": {"k": "!!"}}', 0o600, "malformed"),
        ('{"format": "temporal-shield-sample-keys/v1", "keys": []}', 0o600, "malformed"),
        ("not json", 0o600, "malformed"),
        ('{"format": "temporal-shield-sample-keys/v1", "keys": {}}', 0o600, "at least one"),
        ('{"format": "temporal-shield-sample-keys/v1", "keys": {"k": "AAAA"}}', 0o600, "32 bytes"),
    ],
)
def test_sample_keys_file_is_validated(
    tmp_path: Path, content: str | None, mode: int, message: str
) -> None:
    path = tmp_path / "sample-keys.json"
    if content == "ok":
        write_sample_keys(path, {SAMPLE_KEY_ID: SAMPLE_KEY}, mode)
    elif content is not None:
        path.write_text(content)
        path.chmod(mode)
    with pytest.raises(ConfigError, match=message) as raised:
        SampleKeys.load(path)
    assert base64.b64encode(SAMPLE_KEY).decode() not in str(raised.value)


def test_sample_keys_never_print_their_material(tmp_path: Path) -> None:
    keys = SampleKeys.load(_sample_file(tmp_path))
    assert keys.key_ids == (SAMPLE_KEY_ID,)
    assert SAMPLE_KEY.decode() not in repr(keys)
    assert "test-key-id" in repr(keys)


def _reader(keyring_path: Path, sample_keys: Path, **kw: object) -> ShieldCodec:
    keys = KeysConfig(uri=f"local://{keyring_path}", sample_keys_file=str(sample_keys))
    return build_codec(ShieldConfig(keys=keys, **kw))  # type: ignore[arg-type]


def _requiring(keyring_path: Path) -> ShieldCodec:
    return build_codec(_config(keyring_path, require_encryption=("prod-*",)))


async def test_require_encryption_refuses_non_envelopes_by_namespace_glob(
    keyring_path: Path,
) -> None:
    codec = _requiring(keyring_path)
    prod = codec.with_context(WorkflowSerializationContext(namespace="prod-eu", workflow_id="w"))
    dev = codec.with_context(WorkflowSerializationContext(namespace="dev", workflow_id="w"))
    assert prod.requires_encryption
    assert not dev.requires_encryption
    planted = _json('"planted secret"')
    assert await dev.decode([planted]) == [planted]
    with pytest.raises(PlaintextRefusedError) as raised:
        await prod.decode([planted])
    message = str(raised.value)
    assert "prod-eu" in message
    assert "json/plain" in message
    assert "planted secret" not in message
    assert isinstance(raised.value, ShieldError)
    # Our envelopes still decode there.
    ours = await prod.encode([_json('"fine"')])
    assert await prod.decode(ours) == [_json('"fine"')]


@pytest.mark.parametrize(
    "payload",
    [
        Payload(metadata={"encoding": b"binary/encrypted"}, data=b'"secret-data"'),
        Payload(metadata={"encoding": b"binary/null"}),
        Payload(data=b"secret-data"),
        Payload(metadata={"encoding": b"x" * 500 + b"\xff"}, data=b"secret-data"),
    ],
    ids=["forged label", "null", "no metadata", "hostile encoding"],
)
async def test_require_encryption_refuses_every_non_envelope_shape(
    keyring_path: Path, payload: Payload
) -> None:
    codec = _requiring(keyring_path).with_namespace("prod-1")
    with pytest.raises(PlaintextRefusedError) as raised:
        await codec.decode([payload])
    # The label is shown cut and escaped: an error line stays bounded.
    assert len(str(raised.value)) < 300
    assert "secret-data" not in str(raised.value)


async def test_require_encryption_refuses_sample_payloads_even_with_a_reader(
    keyring_path: Path, tmp_path: Path
) -> None:
    keys = _sample_file(tmp_path)
    codec = _reader(keyring_path, keys, require_encryption=("prod-*",))
    sample = await sample_codec().encode([_json('"old"')])
    assert await codec.with_namespace("staging").decode(sample) == [_json('"old"')]
    with pytest.raises(PlaintextRefusedError, match="binary/encrypted"):
        await codec.with_namespace("prod-1").decode(sample)


def test_sample_keys_file_is_a_keys_setting(tmp_path: Path) -> None:
    path = _sample_file(tmp_path)
    config = load_config(env={"TEMPORAL_SHIELD_KEYS_SAMPLE_KEYS_FILE": str(path)})
    assert config.keys.sample_keys_file == str(path)


async def test_read_only_reads_envelopes_writes_inputs_unchanged_and_warns(
    keyring_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sealed = await build_codec(_config(keyring_path)).encode([_json('"secret"')])
    with caplog.at_level("WARNING", logger="temporal_shield"):
        reader = build_codec(_config(keyring_path, read_only=True))
    assert "written unencrypted" in caplog.text
    inputs = [_json('"new"')]
    # The bound copies the SDK makes per workflow keep the mode.
    bound = reader.with_namespace("other")
    assert await bound.encode(inputs) == inputs
    assert await reader.decode(sealed) == [_json('"secret"')]


def test_read_only_cannot_be_combined_with_require_encryption(keyring_path: Path) -> None:
    with pytest.raises(ConfigError, match="read_only"):
        _config(keyring_path, read_only=True, require_encryption=("*",))
    with pytest.raises(ConfigError, match="read_only"):
        load_config(
            env={
                "TEMPORAL_SHIELD_READ_ONLY": "true",
                "TEMPORAL_SHIELD_REQUIRE_ENCRYPTION": "prod-*",
                "TEMPORAL_SHIELD_KEYS_URI": f"local://{keyring_path}",
            }
        )
