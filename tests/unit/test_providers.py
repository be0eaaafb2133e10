"""The key-provider registry: factories chosen by URI, from the config and the plugin."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload

from temporal_shield.codec import (
    AwsSettings,
    ConfigError,
    KeyProvider,
    KeyProviderFactory,
    LocalKeyProvider,
    LocalKeyProviderFactory,
    provider_from_uri,
    register_key_provider,
    registered_key_providers,
    unregister_key_provider,
)
from temporal_shield.converter import (
    KeysConfig,
    ShieldCodec,
    ShieldConfig,
    ShieldPlugin,
    build_codec,
    key_providers,
    load_config,
    shield_codec,
)

from ..helpers import FakeKms, VaultFactory


@pytest.fixture
def vault() -> Iterator[VaultFactory]:
    factory = VaultFactory()
    register_key_provider(factory)
    try:
        yield factory
    finally:
        unregister_key_provider(factory)


def _plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


def test_built_ins_are_registered_by_default() -> None:
    schemes = [f.scheme for f in registered_key_providers()]
    assert schemes[-2:] == ["local://", "aws-kms://"]


def test_local_uri_builds_a_keyring_provider(keyring_path: Path) -> None:
    provider = provider_from_uri(f"local://{keyring_path}")
    assert isinstance(provider, LocalKeyProvider)


def test_unknown_scheme_names_the_registered_ones(vault: VaultFactory) -> None:
    with pytest.raises(ConfigError) as caught:
        provider_from_uri("gcp-kms://projects/p/keys/k")
    message = str(caught.value)
    assert "gcp-kms://projects/p/keys/k" in message
    for scheme in ("vault://", "local://", "aws-kms://"):
        assert scheme in message


def test_unknown_scheme_from_the_config_is_a_config_error(tmp_path: Path) -> None:
    toml = tmp_path / "shield.toml"
    toml.write_text('[keys]\nuri = "hsm://slot/1"\n')
    config = load_config(toml, env={})
    with pytest.raises(ConfigError, match=r"hsm://slot/1.*local://, aws-kms://"):
        build_codec(config)


@pytest.mark.parametrize(
    "uri", ["", "local://", "aws-kms://", "vault://", "LOCAL://x", " local://x"]
)
def test_hostile_uris_are_config_errors(uri: str, vault: VaultFactory) -> None:
    with pytest.raises(ConfigError):
        provider_from_uri(uri)


def test_non_string_uri_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="non-empty string"):
        provider_from_uri(None)  # type: ignore[arg-type]


async def test_registered_factory_is_reached_from_the_config(vault: VaultFactory) -> None:
    config = ShieldConfig(keys=KeysConfig(uri="vault://payments", decrypt_uris=("vault://old",)))
    providers = key_providers(config)
    assert [p.primary_key_id for p in providers] == ["vault:payments", "vault:old"]
    assert [c["decrypt_only"] for c in vault.created] == [False, True]
    assert vault.created[0]["aws"] == config.keys.aws
    codec = build_codec(config)
    (sealed,) = await codec.encode([_plain("x")])
    assert sealed.metadata["encryption-key-id"] == b"vault:payments"
    assert vault.kms["payments"].generate_calls == 1
    assert (await codec.decode([sealed]))[0].data == b'"x"'


async def test_plugin_factories_need_no_registration() -> None:
    factory = VaultFactory()
    config = ShieldConfig(keys=KeysConfig(uri="vault://orders"))
    with pytest.raises(ConfigError, match="vault://orders"):
        ShieldPlugin(config)
    plugin = ShieldPlugin(config, key_providers=[factory])
    assert factory not in registered_key_providers()
    codec = shield_codec(plugin.converter)
    assert isinstance(codec, ShieldCodec)
    (sealed,) = await codec.encode([_plain("y")])
    assert sealed.metadata["encryption-key-id"] == b"vault:orders"


def test_newest_registration_takes_over_a_built_in_scheme(keyring_path: Path) -> None:
    fake = FakeKms("hsm:1")

    class Override(LocalKeyProviderFactory):
        def create(
            self,
            uri: str,
            *,
            decrypt_only: bool,
            allowed_key_ids: tuple[str, ...],
            aws: AwsSettings | None,
        ) -> KeyProvider:
            return fake

    override = Override()
    register_key_provider(override)
    try:
        assert provider_from_uri(f"local://{keyring_path}") is fake
        register_key_provider(override)  # again: moved to the front, not listed twice
        assert registered_key_providers().count(override) == 1
    finally:
        unregister_key_provider(override)
    assert isinstance(provider_from_uri(f"local://{keyring_path}"), LocalKeyProvider)


def _restore(snapshot: tuple[KeyProviderFactory, ...]) -> None:
    for factory in registered_key_providers():
        unregister_key_provider(factory)
    for factory in reversed(snapshot):  # oldest first: the newest ends up in front
        register_key_provider(factory)


def test_a_built_in_can_be_unregistered(keyring_path: Path) -> None:
    snapshot = registered_key_providers()
    (local,) = [f for f in snapshot if isinstance(f, LocalKeyProviderFactory)]
    unregister_key_provider(local)
    try:
        with pytest.raises(ConfigError, match=r"available: aws-kms://\)"):
            provider_from_uri(f"local://{keyring_path}")
    finally:
        _restore(snapshot)
    assert registered_key_providers() == snapshot
    assert isinstance(provider_from_uri(f"local://{keyring_path}"), LocalKeyProvider)


@pytest.mark.parametrize("factories", [VaultFactory(), "vault://", [object()], None])
def test_factories_that_are_not_a_list_of_factories_are_type_errors(factories: Any) -> None:
    with pytest.raises(TypeError, match="KeyProviderFactory"):
        provider_from_uri("vault://x", factories=factories)


def test_registering_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="KeyProviderFactory"):
        register_key_provider(object())  # type: ignore[arg-type]


class _Broken(KeyProviderFactory):
    scheme = "broken://"

    def __init__(self, *, supports: Any = True, creates: Any = None) -> None:
        self._supports = supports
        self._creates = creates

    def supports(self, uri: str) -> bool:
        if isinstance(self._supports, Exception):
            raise self._supports
        return bool(self._supports) and uri.startswith(self.scheme)

    def create(
        self,
        uri: str,
        *,
        decrypt_only: bool,
        allowed_key_ids: tuple[str, ...],
        aws: AwsSettings | None,
    ) -> KeyProvider:
        if isinstance(self._creates, Exception):
            raise self._creates
        return self._creates  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (_Broken(supports=RuntimeError("boom")), "_Broken failed on supports"),
        (_Broken(creates=RuntimeError("no token")), "broken:// could not be set up.*no token"),
        (_Broken(creates="not a provider"), "returned str, not a KeyProvider"),
        (_Broken(creates=None), "returned NoneType, not a KeyProvider"),
    ],
)
def test_broken_factories_are_config_errors(factory: _Broken, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        provider_from_uri("broken://k", factories=[factory])


def test_factory_config_errors_pass_through_unchanged(vault: VaultFactory) -> None:
    with pytest.raises(ConfigError, match=r"^vault:// URI needs a key name$"):
        provider_from_uri("vault://")


def test_local_keyrings_never_import_boto3(tmp_path: Path) -> None:
    """The AWS factory is registered by default but imports boto3 only for aws-kms:// URIs."""
    ring = tmp_path / "ring.json"
    script = f"""
import sys
from pathlib import Path
from temporal_shield.codec import Keyring, provider_from_uri
Keyring.new().save(Path({str(ring)!r}))
provider_from_uri("local://{ring}")
print("boto3" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
