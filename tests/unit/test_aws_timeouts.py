"""Every AWS client has timeouts and standard retries: a hung endpoint fails in seconds.

The hung endpoint is real: a TCP listener on 127.0.0.1 that accepts connections
and never answers (botocore's defaults would hold each call for minutes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from temporal_shield._main import main
from temporal_shield.codec import (
    AwsSettings,
    ConfigError,
    KeyProviderError,
    aws_client_config,
    provider_from_uri,
)
from temporal_shield.codec._aws import AwsKmsKeyProvider
from temporal_shield.converter import (
    Boto3S3Client,
    KeysConfig,
    ShieldConfig,
    ShieldPlugin,
    StorageConfig,
    external_storage,
    load_config,
)

from ..blackhole import Blackhole

# Generous on purpose: the configured bound is ~2-4 s; only "minutes" must fail.
BOUND = 30.0
FAST: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 1.0, "max_attempts": 2}


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials for a loopback endpoint; no profile or real AWS setting leaks in."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hung() -> Iterator[Blackhole]:
    with Blackhole() as hole:
        yield hole


def _options(settings: AwsSettings) -> tuple[Any, Any, Any]:
    # botocore's stubs do not declare Config's attributes; they are instance fields.
    options = vars(aws_client_config(settings))
    return options["connect_timeout"], options["read_timeout"], options["retries"]


def test_client_config_sets_timeouts_and_standard_retries() -> None:
    assert _options(AwsSettings(connect_timeout=1.5, read_timeout=4, max_attempts=2)) == (
        1.5,
        4,
        {"mode": "standard", "max_attempts": 2},
    )
    assert _options(AwsSettings()) == (2.0, 5.0, {"mode": "standard", "max_attempts": 3})


@pytest.mark.parametrize(
    "settings",
    [{"connect_timeout": 0}, {"read_timeout": -1}, {"max_attempts": 0}],
)
def test_nonsense_timeouts_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AwsSettings(**settings)


def test_timeouts_come_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "shield.toml"
    path.write_text("[keys]\nkms_read_timeout = 7.5\n[storage]\ns3_max_attempts = 5\n")
    config = load_config(
        path,
        env={
            "TEMPORAL_SHIELD_KEYS_KMS_CONNECT_TIMEOUT": "0.5",
            "TEMPORAL_SHIELD_KEYS_KMS_MAX_ATTEMPTS": "4",
            "TEMPORAL_SHIELD_STORAGE_S3_CONNECT_TIMEOUT": "1",
            "TEMPORAL_SHIELD_STORAGE_S3_READ_TIMEOUT": "9",
        },
    )
    assert config.keys.aws == AwsSettings(connect_timeout=0.5, read_timeout=7.5, max_attempts=4)
    assert config.storage.aws == AwsSettings(connect_timeout=1, read_timeout=9, max_attempts=5)
    with pytest.raises(ConfigError):
        load_config(env={"TEMPORAL_SHIELD_KEYS_KMS_READ_TIMEOUT": "0"})


class _Built(Exception):
    """Stops a code path right after it created its boto3 client."""


def _rewrap_cli() -> None:
    main(["keys", "rewrap", "--bucket", "b"])


@pytest.mark.parametrize(
    "build",
    [
        lambda: provider_from_uri("aws-kms://alias/x", aws=KeysConfig(kms_read_timeout=3).aws),
        lambda: external_storage(StorageConfig(s3_bucket="b", s3_read_timeout=3)),
        _rewrap_cli,
    ],
    ids=["kms provider", "s3 offload", "keys rewrap"],
)
def test_every_aws_client_gets_the_shared_config(
    build: Callable[[], object], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: list[dict[str, Any]] = []

    def client(service: str, **kwargs: Any) -> Any:
        made.append({"service": service, **kwargs})
        raise _Built

    monkeypatch.setattr(boto3, "client", client)
    monkeypatch.setenv("TEMPORAL_SHIELD_STORAGE_S3_READ_TIMEOUT", "3")  # for the CLI
    monkeypatch.setenv("TEMPORAL_SHIELD_KEYS_URI", f"local://{tmp_path / 'ring.json'}")
    with pytest.raises(_Built):
        build()
    (kwargs,) = made
    assert vars(kwargs["config"])["read_timeout"] == 3
    assert vars(kwargs["config"])["retries"]["mode"] == "standard"


@pytest.mark.usefixtures("fake_credentials")
def test_hung_kms_fails_provider_construction_within_seconds(hung: Blackhole) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="ReadTimeoutError"):
        provider_from_uri(
            "aws-kms://alias/payloads", aws=AwsSettings(endpoint_url=hung.url, **FAST)
        )
    assert time.monotonic() - started < BOUND


@pytest.mark.usefixtures("fake_credentials")
async def test_hung_kms_decrypt_is_a_key_provider_error_within_seconds(hung: Blackhole) -> None:
    settings = AwsSettings(endpoint_url=hung.url, **FAST)
    kms = boto3.client("kms", endpoint_url=hung.url, config=aws_client_config(settings))
    provider = AwsKmsKeyProvider(None, client=kms)  # decrypt-only: nothing resolved up front
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="ReadTimeoutError"):
        await provider.decrypt_data_key("arn:aws:kms:us-east-1:1:key/k", b"x" * 64, "default")
    assert time.monotonic() - started < BOUND


@pytest.mark.usefixtures("fake_credentials")
async def test_hung_s3_offload_fails_within_seconds(hung: Blackhole) -> None:
    storage = external_storage(
        StorageConfig(
            s3_bucket="payloads",
            s3_endpoint_url=hung.url,
            s3_connect_timeout=1,
            s3_read_timeout=1,
            s3_max_attempts=2,
        )
    )
    assert storage is not None
    client = storage.drivers[0]._client  # type: ignore[attr-defined]
    assert isinstance(client, Boto3S3Client)
    started = time.monotonic()
    with pytest.raises(Exception, match="Read timeout"):
        await client.get_object(bucket="payloads", key="k")
    assert time.monotonic() - started < BOUND


def test_shield_config_keeps_the_defaults() -> None:
    config = ShieldConfig()
    assert config.keys.aws.read_timeout == config.storage.aws.read_timeout == 5.0


@pytest.mark.parametrize(
    "url", ["notaurl", "ftp://kms.local", "http://", "https://host:99999", " http:// h", ""]
)
def test_an_invalid_endpoint_url_is_a_config_error_not_an_internal_error(url: str) -> None:
    with pytest.raises(ConfigError, match="endpoint URL"):
        AwsSettings(endpoint_url=url)
    # Through the schema and the environment (a manifest's typo), the same error
    # (the environment's surrounding whitespace is stripped first).
    with pytest.raises(ConfigError, match="endpoint URL"):
        load_config(env={"TEMPORAL_SHIELD_STORAGE_S3_ENDPOINT_URL": url.strip() or "x"})


def test_valid_endpoint_urls_are_kept() -> None:
    for url in ("http://127.0.0.1:5000", "https://kms.eu-west-1.amazonaws.com", "http://[::1]:9"):
        assert AwsSettings(endpoint_url=url).endpoint_url == url


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AWS_DEFAULT_REGION", None, "region"),  # no region anywhere
        ("AWS_PROFILE", "no-such-profile", "no-such-profile"),
    ],
    ids=["no region", "unknown profile"],
)
def test_an_aws_configuration_problem_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
    value: str | None,
    message: str,
) -> None:
    """What the docs promise callers who catch ConfigError (botocore raised its own)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    if value is not None:
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        ShieldPlugin(ShieldConfig(keys=KeysConfig(uri="aws-kms://alias/payloads")))
