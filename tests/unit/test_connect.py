"""client_connect_config: envconfig + our [tls] + explicit overrides, and no silent downgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from temporal_shield.certs import CLIENT_AUTH, issue, make_ca, write_secret
from temporal_shield.codec import ConfigError
from temporal_shield.converter import (
    ShieldConfig,
    TemporalTlsConfig,
    client_connect_config,
    load_config,
)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    ca = make_ca()
    folder = tmp_path / "worker"
    write_secret(folder, issue(ca, dns_names=["temporal-worker"], usages=[CLIENT_AUTH]), ca.cert)
    return folder


def test_defaults_env_and_explicit_overrides() -> None:
    assert client_connect_config(ShieldConfig(), env={}) == {
        "target_host": "localhost:7233",
        "namespace": "default",
    }
    env = {"TEMPORAL_ADDRESS": "temporal.example:7233", "TEMPORAL_NAMESPACE": "payments"}
    assert client_connect_config(ShieldConfig(), env=env) == {
        "target_host": "temporal.example:7233",
        "namespace": "payments",
    }
    got = client_connect_config(ShieldConfig(), env=env, address="other:1", namespace="ns2")
    assert (got["target_host"], got["namespace"]) == ("other:1", "ns2")


def test_api_key_forces_tls_and_grpc_meta_is_kept() -> None:
    got = client_connect_config(ShieldConfig(), env={"TEMPORAL_API_KEY": "k-123"})
    assert got["api_key"] == "k-123"
    assert got["tls"] is True


def test_profiles_from_file_env_and_argument(tmp_path: Path) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text(
        '[profile.default]\naddress = "dev:7233"\n'
        '[profile.prod]\naddress = "prod:7233"\nnamespace = "prod-ns"\n'
        '[profile.prod.grpc_meta]\nx-team = "payments"\n'
    )
    env = {"TEMPORAL_CONFIG_FILE": str(toml)}
    assert client_connect_config(ShieldConfig(), env=env)["target_host"] == "dev:7233"
    prod = client_connect_config(ShieldConfig(), env={**env, "TEMPORAL_PROFILE": "prod"})
    assert (prod["target_host"], prod["namespace"]) == ("prod:7233", "prod-ns")
    assert prod["rpc_metadata"] == {"x-team": "payments"}
    by_arg = client_connect_config(
        ShieldConfig(), env={}, profile="prod", temporal_config_file=toml
    )
    assert by_arg["target_host"] == "prod:7233"
    # TEMPORAL_ADDRESS overrides the profile; an explicit address overrides both.
    over = client_connect_config(
        ShieldConfig(), env={**env, "TEMPORAL_PROFILE": "prod", "TEMPORAL_ADDRESS": "env:1"}
    )
    assert over["target_host"] == "env:1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEMPORAL_PROFILE": "nope"}, "Profile 'nope' not found"),
        ({"TEMPORAL_CONFIG_FILE": "/nonexistent/temporal.toml"}, "no such file"),
        ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/nonexistent/ca.crt"}, "cannot read TLS file"),
    ],
)
def test_bad_sdk_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        client_connect_config(ShieldConfig(), env=env)


def test_bad_profile_toml_is_one_line_config_error(tmp_path: Path) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text("[profile.default]\naddress = \n")
    with pytest.raises(ConfigError) as caught:
        client_connect_config(ShieldConfig(), env={"TEMPORAL_CONFIG_FILE": str(toml)})
    assert "\n" not in str(caught.value)


def test_sdk_client_cert_without_key_is_refused(secret: Path) -> None:
    env = {"TEMPORAL_TLS_CLIENT_CERT_PATH": str(secret / "tls.crt")}
    with pytest.raises(ConfigError, match="together"):
        client_connect_config(ShieldConfig(), env=env)


def test_sdk_tls_files_are_read(secret: Path) -> None:
    env = {
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(secret / "tls.crt"),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(secret / "tls.key"),
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(secret / "ca.crt"),
        "TEMPORAL_TLS_SERVER_NAME": "frontend",
    }
    tls = client_connect_config(ShieldConfig(), env=env)["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == (secret / "tls.crt").read_bytes()
    assert tls.server_root_ca_cert == (secret / "ca.crt").read_bytes()
    assert tls.domain == "frontend"


def test_our_tls_section_from_secret_folder(secret: Path) -> None:
    config = load_config(env={"TEMPORAL_SHIELD_TLS_DIR": str(secret)})
    tls = client_connect_config(config, env={"TEMPORAL_TLS_SERVER_NAME": "frontend"})["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.client_private_key == (secret / "tls.key").read_bytes()
    assert tls.server_root_ca_cert == (secret / "ca.crt").read_bytes()
    assert tls.domain == "frontend"  # the SDK's server name completes our folder


def test_tls_configured_twice_is_refused(secret: Path) -> None:
    config = ShieldConfig(tls=TemporalTlsConfig(dir=str(secret)))
    env = {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(secret / "ca.crt")}
    with pytest.raises(ConfigError, match="configured twice"):
        client_connect_config(config, env=env)
    with pytest.raises(ConfigError, match="configured twice"):
        client_connect_config(config, env={"TEMPORAL_TLS": "false"})


def test_missing_tls_folder_is_an_error_not_an_empty_tls_config(tmp_path: Path) -> None:
    config = ShieldConfig(tls=TemporalTlsConfig(dir=str(tmp_path / "not-mounted")))
    with pytest.raises(ConfigError, match="is not a folder"):
        client_connect_config(config, env={})


def test_empty_tls_folder_is_an_error(tmp_path: Path) -> None:
    config = ShieldConfig(tls=TemporalTlsConfig(dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"none of ca\.crt"):
        client_connect_config(config, env={})


def test_server_name_alone_is_an_error_not_plaintext(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server_name"):
        TemporalTlsConfig(server_name="temporal-frontend")
    toml = tmp_path / "shield.toml"
    toml.write_text('[tls]\nserver_name = "temporal-frontend"\n')
    with pytest.raises(ConfigError, match="server_name"):
        load_config(toml, env={})


def test_an_empty_variable_cannot_turn_the_files_tls_into_plaintext(
    secret: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "shield.toml"
    toml.write_text(f'[tls]\ndir = "{secret}"\n')
    env = {"TEMPORAL_SHIELD_CONFIG": str(toml)}
    assert isinstance(client_connect_config(env=env)["tls"], TLSConfig)
    # A manifest's `value: ""` once connected in plaintext (no "tls" at all).
    with pytest.raises(ConfigError, match="TEMPORAL_SHIELD_TLS_DIR is empty"):
        client_connect_config(env={**env, "TEMPORAL_SHIELD_TLS_DIR": ""})
    with pytest.raises(ConfigError, match="temporal_shield_tls_dir"):
        client_connect_config(env={"temporal_shield_tls_dir": str(secret)})


@pytest.mark.parametrize(
    ("profile", "unknown"),
    [
        # The address typo once connected to localhost:7233; the [tls] table typo
        # once meant no TLS at all, the key typo a connection without the certificate.
        ('[profile.default]\naddres = "prod:7233"\n', "addres"),
        (
            '[profile.default]\naddress = "prod:7233"\n[profile.default.tsl]\nserver_name = "x"\n',
            "tsl",
        ),
        ('[profile.default.tls]\nclient_cert_pth = "/etc/tls/tls.crt"\n', "client_cert_pth"),
    ],
)
def test_unknown_keys_in_the_sdk_profile_file_are_errors(
    tmp_path: Path, profile: str, unknown: str
) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text(profile)
    with pytest.raises(ConfigError, match=f"unknown field `{unknown}`"):
        client_connect_config(ShieldConfig(), env={"TEMPORAL_CONFIG_FILE": str(toml)})


def test_what_the_temporal_cli_writes_still_loads(tmp_path: Path) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text(  # `temporal config set` output, every table it writes
        '[profile.default]\naddress = "a:1"\napi_key = "k"\nnamespace = "n"\n'
        '[profile.default.codec]\nendpoint = "https://codec"\nauth = "Bearer t"\n'
        '[profile.default.grpc_meta]\nx-team = "v"\n'
        '[profile.default.tls]\nserver_name = "s"\ndisable_host_verification = false\n'
    )
    out = client_connect_config(ShieldConfig(), env={"TEMPORAL_CONFIG_FILE": str(toml)})
    assert (out["target_host"], out["namespace"], out["api_key"]) == ("a:1", "n", "k")


def test_profile_errors_never_quote_a_value(tmp_path: Path) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text('[profile.default]\ntls = "sk-live-SECRET"\napi_key = "sk-live-SECRET2"\n')
    with pytest.raises(ConfigError) as caught:
        client_connect_config(ShieldConfig(), env={"TEMPORAL_CONFIG_FILE": str(toml)})
    assert "SECRET" not in str(caught.value)
    assert "invalid type" in str(caught.value)
