"""What data_converter/ShieldPlugin keep, replace, chain and refuse in a client's converter."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    ExternalStorage,
    FailureConverter,
    PayloadCodec,
    PayloadConverter,
    StorageDriver,
)
from temporalio.worker import ReplayerConfig

from temporal_shield.codec import ConfigError
from temporal_shield.converter import (
    ChainedCodec,
    KeysConfig,
    ShieldCodec,
    ShieldConfig,
    ShieldPlugin,
    ShieldS3Driver,
    StorageConfig,
    data_converter,
    shield_codec,
)


def _config(keyring_path: Path, **kw: Any) -> ShieldConfig:
    return ShieldConfig(keys=KeysConfig(uri=f"local://{keyring_path}"), **kw)


class Reverse(PayloadCodec):
    """A user's codec."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload(metadata={"encoding": b"x/rev"}, data=p.data[::-1]) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload(metadata={"encoding": b"json/plain"}, data=p.data[::-1]) for p in payloads]


class PlainTextFailures(FailureConverter):
    """A custom failure converter that writes messages in the clear."""

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        DefaultFailureConverter().to_failure(exception, payload_converter, failure)

    def from_failure(self, failure: Failure, payload_converter: PayloadConverter) -> BaseException:
        return DefaultFailureConverter().from_failure(failure, payload_converter)


class EncodingFailures(DefaultFailureConverter):
    """A custom failure converter that already moves messages into encoded attributes."""

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)


class LeakyDefault(DefaultFailureConverter):
    """A DefaultFailureConverter subclass that keeps messages in the clear."""


def test_the_payload_converter_is_kept(keyring_path: Path) -> None:
    conv = data_converter(_config(keyring_path), base=pydantic_data_converter)
    assert conv.payload_converter_class is PydanticPayloadConverter
    assert isinstance(conv.payload_codec, ShieldCodec)
    assert conv.failure_converter_class is DefaultFailureConverterWithEncodedAttributes


def test_a_data_converter_subclass_is_kept(keyring_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Mine(DataConverter):
        pass

    assert type(data_converter(_config(keyring_path), base=Mine())) is Mine


def test_a_foreign_codec_is_refused_unless_chained(keyring_path: Path) -> None:
    base = DataConverter(payload_codec=Reverse())
    with pytest.raises(ConfigError, match=r"payload codec \(Reverse\).*chain_codec=True"):
        data_converter(_config(keyring_path), base=base)
    chained = data_converter(_config(keyring_path), base=base, chain_codec=True).payload_codec
    assert isinstance(chained, ChainedCodec)
    assert isinstance(chained.user_codec, Reverse)


async def test_chained_codec_runs_the_users_codec_inside_ours(keyring_path: Path) -> None:
    conv = data_converter(
        _config(keyring_path), base=DataConverter(payload_codec=Reverse()), chain_codec=True
    )
    codec = conv.payload_codec
    assert isinstance(codec, ChainedCodec)
    (sealed,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"ab"')])
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    (under,) = await codec.shield.decode([sealed])
    assert (under.metadata["encoding"], under.data) == (b"x/rev", b'"ba"')
    (plain,) = await codec.decode([sealed])
    assert plain.data == b'"ab"'
    assert await conv.decode([sealed], [str]) == ["ab"]


def test_ours_is_replaced_not_stacked(keyring_path: Path) -> None:
    once = data_converter(_config(keyring_path))
    twice = data_converter(_config(keyring_path), base=once)
    assert isinstance(twice.payload_codec, ShieldCodec)
    assert twice.payload_codec is not once.payload_codec
    chained = data_converter(
        _config(keyring_path), base=DataConverter(payload_codec=Reverse()), chain_codec=True
    )
    # A chain accepted once stays one chain (even without chain_codec the second time).
    rechained = data_converter(_config(keyring_path), base=chained).payload_codec
    assert isinstance(rechained, ChainedCodec)
    assert isinstance(rechained.user_codec, Reverse)
    assert isinstance(rechained.shield, ShieldCodec)


@pytest.mark.parametrize(
    "failures", [DefaultFailureConverterWithEncodedAttributes, EncodingFailures]
)
def test_failure_converters_that_encode_are_kept(
    keyring_path: Path, failures: type[FailureConverter]
) -> None:
    conv = data_converter(
        _config(keyring_path), base=DataConverter(failure_converter_class=failures)
    )
    assert conv.failure_converter_class is failures


@pytest.mark.parametrize("failures", [PlainTextFailures, LeakyDefault])
def test_failure_converters_that_leak_are_refused_or_kept_without_encryption(
    keyring_path: Path, failures: type[FailureConverter]
) -> None:
    base = DataConverter(failure_converter_class=failures)
    with pytest.raises(ConfigError, match=rf"custom failure converter \({failures.__name__}\)"):
        data_converter(_config(keyring_path), base=base)
    conv = data_converter(_config(keyring_path, encrypt_failures=False), base=base)
    assert conv.failure_converter_class is failures


def test_encrypt_failures_false_leaves_the_default_alone(keyring_path: Path) -> None:
    conv = data_converter(_config(keyring_path, encrypt_failures=False))
    assert conv.failure_converter_class is DefaultFailureConverter


def _s3(keyring_path: Path, monkeypatch: pytest.MonkeyPatch) -> ShieldConfig:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Building the S3 client makes no request: nothing listens there.
    storage = StorageConfig(s3_bucket="payloads", s3_endpoint_url="http://127.0.0.1:9")
    return _config(keyring_path, storage=storage)


def test_a_users_storage_is_kept_and_refused_with_our_bucket(
    keyring_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Memory(StorageDriver):
        def name(self) -> str:
            return "memory"

        async def store(self, context: Any, payloads: Sequence[Payload]) -> list[Any]:
            raise NotImplementedError

        async def retrieve(self, context: Any, claims: Sequence[Any]) -> list[Payload]:
            raise NotImplementedError

    storage = ExternalStorage(drivers=[Memory()])
    base = DataConverter(external_storage=storage)
    assert data_converter(_config(keyring_path), base=base).external_storage is storage
    with pytest.raises(ConfigError, match=r"already has external storage.*storage\.s3_bucket"):
        data_converter(_s3(keyring_path, monkeypatch), base=base)


def test_our_storage_applied_twice_is_one_storage(
    keyring_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _s3(keyring_path, monkeypatch)
    once = data_converter(config)
    assert once.external_storage is not None
    twice = data_converter(config, base=once)
    assert twice.external_storage is not None
    (driver,) = twice.external_storage.drivers
    assert isinstance(driver, ShieldS3Driver)
    # Through the plugin too: its converter over a converter that already has ours.
    plugin = ShieldPlugin(config)
    assert plugin.compose(twice).external_storage is not None


def test_plugin_binds_namespace_also_when_chained(keyring_path: Path) -> None:
    plugin = ShieldPlugin(_config(keyring_path), chain_codec=True)
    cfg = plugin.configure_client(
        {"namespace": "payments", "data_converter": DataConverter(payload_codec=Reverse())}  # type: ignore[typeddict-item]
    )
    codec = shield_codec(cfg["data_converter"])
    assert codec is not None
    assert codec.namespace == "payments"
    assert isinstance(cfg["data_converter"].payload_codec, ChainedCodec)


def test_plugin_refuses_a_foreign_codec_on_the_client(keyring_path: Path) -> None:
    plugin = ShieldPlugin(_config(keyring_path))
    with pytest.raises(ConfigError, match="chain_codec=True"):
        plugin.configure_client(
            {"namespace": "default", "data_converter": DataConverter(payload_codec=Reverse())}  # type: ignore[typeddict-item]
        )


def test_plugin_binds_the_replayers_namespace(keyring_path: Path) -> None:
    plugin = ShieldPlugin(_config(keyring_path))
    cfg = plugin.configure_replayer(
        ReplayerConfig(namespace="orders", data_converter=pydantic_data_converter)
    )
    conv = cfg["data_converter"]
    assert conv.payload_converter_class is PydanticPayloadConverter
    codec = shield_codec(conv)
    assert codec is not None
    assert codec.namespace == "orders"
