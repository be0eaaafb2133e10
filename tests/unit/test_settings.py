"""One schema for workers and the codec server: shared file, derived env names, unknown names."""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from temporal_shield.codec import ConfigError
from temporal_shield.converter import DEFAULT_KEY_URI, ShieldConfig, load_config
from temporal_shield.converter._settings import (
    DEPRECATED_ENV,
    ENV_VARS,
    schema_fields,
)
from temporal_shield.server import ServerConfig, load_server_config
from temporal_shield.server._config import SERVER_ENV

SHARED = """
namespace = "orders"

[keys]
uri = "local:///etc/temporal-shield/keyring.json"

[tls]
server_name = "temporal-frontend"
ca_file = "/etc/temporal-tls/ca.crt"

[server]
insecure_dev = true
port = 9000

[server.audit]
stdout = true
"""


def test_worker_loads_the_shared_file_with_a_server_table(tmp_path: Path) -> None:
    path = tmp_path / "shield.toml"
    path.write_text(SHARED)
    worker = load_config(path, env={})
    assert worker.namespace == "orders"
    assert worker.tls.server_name == "temporal-frontend"
    server, shield = load_server_config(path, env={})
    assert (server.port, server.audit.stdout) == (9000, True)
    assert shield == worker  # the server reads the converter sections the same way


def test_server_table_typos_are_still_caught_by_the_server(tmp_path: Path) -> None:
    path = tmp_path / "shield.toml"
    path.write_text("[server]\ninsecure_dev = true\nprot = 1\n")
    load_config(path, env={})  # the worker leaves [server] to the server
    with pytest.raises(ConfigError, match=r"unknown setting.*server: prot"):
        load_server_config(path, env={})


def test_env_names_are_derived_from_the_schema() -> None:
    assert ENV_VARS["TEMPORAL_SHIELD_KEYS_AWS_ENDPOINT_URL"] == ("keys", "aws_endpoint_url")
    assert ENV_VARS["TEMPORAL_SHIELD_DATA_KEYS_MAX_AGE"] == ("data_keys", "max_age")
    assert ENV_VARS["TEMPORAL_SHIELD_TLS_CA_FILE"] == ("tls", "ca_file")
    assert ENV_VARS["TEMPORAL_SHIELD_NAMESPACE"] == ("namespace",)
    assert SERVER_ENV["TEMPORAL_SHIELD_SERVER_AUTH_JWKS_URL"] == ("server", "auth", "jwks_url")
    assert SERVER_ENV["TEMPORAL_SHIELD_SERVER_PORT"] == ("server", "port")


def _leaves(cls: type[Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, tp, _ in schema_fields(cls):
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _leaves(tp, (*path, name))
        else:
            out.append((*path, name))
    return out


def test_every_setting_has_exactly_one_env_name() -> None:
    converter = _leaves(ShieldConfig)
    server = _leaves(ServerConfig, ("server",))
    assert sorted(ENV_VARS.values()) == sorted(converter)
    assert sorted(SERVER_ENV.values()) == sorted(server)
    # Names must not collide across the two schemas (SECTION_FIELD joins are ambiguous).
    assert not set(ENV_VARS) & set(SERVER_ENV)
    assert len({*ENV_VARS.values(), *SERVER_ENV.values()}) == len(ENV_VARS) + len(SERVER_ENV)


# Values that pass validation for settings with constraints; others are derived by type.
SPECIAL = {
    ("server", "auth", "jwks_url"): "https://idp.example/jwks",
    ("server", "auth", "algorithms"): "ES256",
    ("server", "audit", "replica_id"): "pod-7",
    ("server", "audit", "signing_key"): "ed25519:///keys/audit.key",
    ("server", "tls", "client_auth"): "require",
    ("compression", "level"): "3",
    ("classification", "default"): "phi",
    ("classification", "workflow_ids"): "claim-*=phi,invoice-*=pci",
    ("classification", "namespaces"): "clinic-*=phi",
    ("data_keys", "max_messages"): "77",
    ("server", "workers"): "3",
    ("server", "metrics_port"): "9100",
    ("server", "port"): "9001",
    ("keys", "aws_endpoint_url"): "http://127.0.0.1:4566",
    ("storage", "s3_endpoint_url"): "http://127.0.0.1:4567",
    ("server", "audit", "s3_endpoint_url"): "http://127.0.0.1:4568",
    ("server", "audit", "kms_endpoint_url"): "http://127.0.0.1:4569",
    ("server", "oidc", "issuer"): "https://idp.example",
    ("server", "oidc", "scopes"): "openid,email",
    ("server", "public_url"): "https://codec.example",
}


def _sample(path: tuple[str, ...], tp: Any, default: Any) -> tuple[str, Any]:
    """A non-default environment string for a setting and the value it must produce."""
    if path in SPECIAL:
        raw = SPECIAL[path]
    elif tp is bool:
        return ("false" if default else "true"), not default
    elif tp in (int, float):
        raw = str(int(default) + 7)
    elif typing.get_origin(tp) in (types.UnionType, typing.Union) or tp is str:
        raw = "value-" + path[-1]
    else:
        raw = "a,b"
    value: Any = raw
    if tp in (int, float):
        value = tp(raw)
    elif typing.get_origin(tp) is tuple:
        items = [x for x in raw.split(",")]
        value = tuple(tuple(i.split("=")) if "=" in i else i for i in items)
    return raw, value


def _walk(cls: type[Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    out = []
    for name, tp, f in schema_fields(cls):
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _walk(tp, (*path, name))
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append(((*path, name), tp, default))
    return out


def test_every_setting_is_reachable_from_the_environment() -> None:
    env: dict[str, str] = {}
    expected: dict[tuple[str, ...], Any] = {}
    by_path = {path: name for name, path in {**ENV_VARS, **SERVER_ENV}.items()}
    for cls, root in ((ShieldConfig, ()), (ServerConfig, ("server",))):
        for path, tp, default in _walk(cls, root):
            raw, value = _sample(path, tp, default)
            env[by_path[path]] = raw
            expected[path] = value
    env["TEMPORAL_SHIELD_SERVER_INSECURE_DEV"] = "true"
    expected[("server", "insecure_dev")] = True
    # Neither can be combined with require_encryption (refused, tested apart).
    env["TEMPORAL_SHIELD_READ_ONLY"] = "false"
    expected[("read_only",)] = False
    env["TEMPORAL_SHIELD_ENCRYPT_HEADERS"] = "true"
    expected[("encrypt_headers",)] = True
    env["TEMPORAL_SHIELD_SERVER_AUDIT_FILE"] = "/var/log/audit.jsonl"
    expected[("server", "audit", "file")] = "/var/log/audit.jsonl"
    # Settings with a fixed vocabulary or an order between them.
    env["TEMPORAL_SHIELD_SERVER_PLACEHOLDERS"] = "always"
    expected[("server", "placeholders")] = "always"
    env["TEMPORAL_SHIELD_SERVER_GRANTS_STALE_AFTER"] = "60"
    expected[("server", "grants", "stale_after")] = 60.0
    # insecure_dev listens on loopback only; bearer tokens and sign-in share an issuer.
    env["TEMPORAL_SHIELD_SERVER_HOST"] = "127.0.0.2"
    expected[("server", "host")] = "127.0.0.2"
    env["TEMPORAL_SHIELD_SERVER_AUTH_ISSUER"] = env["TEMPORAL_SHIELD_SERVER_OIDC_ISSUER"]
    expected[("server", "auth", "issuer")] = expected[("server", "oidc", "issuer")]
    # Static keys cannot be used with sign-in: reached in a load of their own.
    key_files = env.pop("TEMPORAL_SHIELD_SERVER_AUTH_PUBLIC_KEY_FILES")
    alone, _ = load_server_config(
        env={
            "TEMPORAL_SHIELD_SERVER_AUTH_PUBLIC_KEY_FILES": key_files,
            "TEMPORAL_SHIELD_SERVER_INSECURE_DEV": "true",
        }
    )
    assert alone.auth.public_key_files == expected.pop(("server", "auth", "public_key_files"))
    server, shield = load_server_config(env=env)
    for path, value in expected.items():
        obj: Any = server if path[0] == "server" else shield
        for part in path[1:] if path[0] == "server" else path:
            obj = getattr(obj, part)
        assert obj == value, path


def test_the_grants_commands_variables_are_not_unknown_settings() -> None:
    """An approver's shell exports them; a worker or serve started there must not fail."""
    env = {"TEMPORAL_SHIELD_SERVER_URL": "https://codec.example", "TEMPORAL_SHIELD_TOKEN": "t"}
    assert load_config(env=env).keys.uri == ShieldConfig().keys.uri
    assert load_server_config(env={**env, "TEMPORAL_SHIELD_SERVER_INSECURE_DEV": "true"})
    with pytest.raises(ConfigError, match="TEMPORAL_SHIELD_TOKENS"):
        load_config(env={"TEMPORAL_SHIELD_TOKENS": "t"})


# Variables that are not settings: the config file's path, and the grants CLI's.
_OTHER_VARIABLES = {"TEMPORAL_SHIELD_CONFIG", "TEMPORAL_SHIELD_TOKEN", "TEMPORAL_SHIELD_SERVER_URL"}


def test_the_docs_name_only_current_variables() -> None:
    """Old names appear only in the renamed-variables table (following a doc must not warn)."""
    root = DOCS.parents[1]
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    files += [p for p in sorted((root / "deploy").rglob("*")) if p.is_file()]
    current = {*ENV_VARS, *SERVER_ENV, *_OTHER_VARIABLES}
    stale = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.match(r"\| `TEMPORAL_SHIELD_\w+` \| `TEMPORAL_SHIELD_\w+` \|", line):
                continue  # configuration.md's table of renamed variables
            for name in re.findall(r"TEMPORAL_SHIELD_[A-Z0-9_]*[A-Z0-9]\b", line):
                if name not in current and name not in ("TEMPORAL_SHIELD_SERVER",):
                    stale.append(f"{path.relative_to(root)}:{number}: {name}")
    # server.md lists the server's variables by suffix.
    server_md = (root / "docs" / "server.md").read_text()
    overrides = server_md.split("Environment overrides:")[1].split("(all prefixed")[0]
    for suffix in re.findall(r"`(_[A-Z0-9_]+)`", overrides):
        if f"TEMPORAL_SHIELD_SERVER{suffix}" not in SERVER_ENV:
            stale.append(f"docs/server.md: TEMPORAL_SHIELD_SERVER{suffix}")
    assert stale == []


def test_unknown_shield_variables_are_errors_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"TEMPORAL_SHIELD_KEYS_URL \(did you mean .*KEYS_URI"):
        load_config(env={"TEMPORAL_SHIELD_KEYS_URL": "aws-kms://alias/x"})
    with pytest.raises(ConfigError, match="TEMPORAL_SHIELD_STRICT_BINDING"):
        load_config(env={"TEMPORAL_SHIELD_STRICT_BINDING": "true"})
    with pytest.raises(ConfigError, match="TEMPORAL_SHIELD_SERVER_PROT"):
        load_server_config(env={"TEMPORAL_SHIELD_SERVER_PROT": "1"})
    # Not ours: ignored. Non-setting names of ours: allowed.
    load_config(env={"TEMPORAL_ADDRESS": "x", "SHIELD_ANYTHING": "y"})


def test_workers_leave_server_variables_to_the_server() -> None:
    cfg = load_config(env={"TEMPORAL_SHIELD_SERVER_PORT": "9000"})
    assert cfg == load_config(env={})


def test_deprecated_names_still_work_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "temporal_shield.config"):
        cfg = load_config(env={"TEMPORAL_SHIELD_KMS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert cfg.keys.aws_endpoint_url == "http://127.0.0.1:1"
    assert "TEMPORAL_SHIELD_KEYS_AWS_ENDPOINT_URL" in caplog.text
    with pytest.raises(ConfigError, match="both"):
        load_config(
            env={"TEMPORAL_SHIELD_S3_BUCKET": "a", "TEMPORAL_SHIELD_STORAGE_S3_BUCKET": "b"}
        )
    server, _ = load_server_config(
        env={
            "TEMPORAL_SHIELD_SERVER_INSECURE_DEV": "1",
            "TEMPORAL_SHIELD_SERVER_JWT_ISSUER": "https://idp",
        }
    )
    assert server.auth.issuer == "https://idp"
    assert set(DEPRECATED_ENV.values()) <= {*ENV_VARS, *SERVER_ENV}


def test_classification_rules_from_env_keep_order() -> None:
    cfg = load_config(env={"TEMPORAL_SHIELD_CLASSIFICATION_WORKFLOW_IDS": "a-*=phi, *=pci"})
    assert cfg.classification.workflow_ids == (("a-*", "phi"), ("*", "pci"))
    assert cfg.classification.label_for("ns", "a-1") == "phi"
    with pytest.raises(ConfigError, match="pattern=label"):
        load_config(env={"TEMPORAL_SHIELD_CLASSIFICATION_NAMESPACES": "clinic-*"})


def test_xdg_config_home_sets_keyring_and_default_file(tmp_path: Path) -> None:
    assert load_config(env={}).keys.uri == DEFAULT_KEY_URI
    xdg = tmp_path / "xdg"
    cfg = load_config(env={"XDG_CONFIG_HOME": str(xdg)})
    assert cfg.keys.uri == f"local://{xdg}/temporal-shield/keyring.json"
    # A relative XDG_CONFIG_HOME is ignored (XDG spec).
    assert load_config(env={"XDG_CONFIG_HOME": "rel"}).keys.uri == DEFAULT_KEY_URI
    (xdg / "temporal-shield").mkdir(parents=True)
    (xdg / "temporal-shield" / "shield.toml").write_text('namespace = "from-xdg"\n')
    assert load_config(env={"XDG_CONFIG_HOME": str(xdg)}).namespace == "from-xdg"
    home = tmp_path / "home"
    (home / ".config" / "temporal-shield").mkdir(parents=True)
    (home / ".config" / "temporal-shield" / "shield.toml").write_text('namespace = "from-home"\n')
    assert load_config(env={"HOME": str(home)}).namespace == "from-home"
    # TEMPORAL_SHIELD_CONFIG, then an explicit path, win over the default file.
    other = tmp_path / "other.toml"
    other.write_text('namespace = "from-env"\n')
    env = {"XDG_CONFIG_HOME": str(xdg), "TEMPORAL_SHIELD_CONFIG": str(other)}
    assert load_config(env=env).namespace == "from-env"
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('namespace = "explicit"\n')
    assert load_config(explicit, env=env).namespace == "explicit"
    # The server follows the same rules.
    (xdg / "temporal-shield" / "shield.toml").write_text("[server]\ninsecure_dev = true\n")
    server, _ = load_server_config(env={"XDG_CONFIG_HOME": str(xdg)})
    assert server.insecure_dev is True


DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_configuration_doc_lists_every_setting_as_generated() -> None:
    from temporal_shield.server._config import REFERENCE_BEGIN, REFERENCE_END, settings_reference

    text = DOCS.read_text()
    block = text.split(REFERENCE_BEGIN)[1].split(REFERENCE_END)[0]
    assert block.strip() == settings_reference().strip(), (
        "docs/configuration.md is stale: run update_reference (see the doc)"
    )
    for name in {*ENV_VARS, *SERVER_ENV}:
        assert f"`{name}`" in block, name
    for old, new in DEPRECATED_ENV.items():
        assert f"| `{old}` | `{new}` |" in block


def test_every_field_has_a_docstring_for_the_reference() -> None:
    from temporal_shield.converter._settings import field_docs

    def walk(cls: type[Any]) -> None:
        docs = field_docs(cls)
        for name, tp, _ in schema_fields(cls):
            assert docs.get(name), f"{cls.__name__}.{name} has no docstring"
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp)

    walk(ShieldConfig)
    walk(ServerConfig)


def test_the_documented_example_file_loads_on_both_sides(tmp_path: Path) -> None:
    text = DOCS.read_text().split("## Example\n\n```toml\n")[1].split("```")[0]
    path = tmp_path / "shield.toml"
    path.write_text(text)
    worker = load_config(path, env={})
    assert worker.tls.server_name == "temporal-frontend"
    server, shield = load_server_config(path, env={})
    assert server.auth.issuer == "https://idp.example.com/"
    assert shield == worker


# Hostile inputs: a security setting must never silently degrade.


def test_empty_env_value_cannot_clear_a_file_setting(tmp_path: Path) -> None:
    path = tmp_path / "shield.toml"
    path.write_text('require_encryption = ["prod-*"]\n[tls]\ndir = "/etc/temporal-tls"\n')
    # An empty value (a template's unset value) once replaced the file's TLS folder with
    # "" (plaintext to Temporal) and the enforced namespaces with none.
    for name in (
        "TEMPORAL_SHIELD_TLS_DIR",
        "TEMPORAL_SHIELD_REQUIRE_ENCRYPTION",
        "TEMPORAL_SHIELD_KEYS_ALLOWED_KEY_IDS",
        "TEMPORAL_SHIELD_TLS_CA",  # a deprecated name too
    ):
        for value in ("", "  ", " , "):
            with pytest.raises(ConfigError, match=rf"{name} is empty"):
                load_config(path, env={name: value})
    with pytest.raises(ConfigError, match="TEMPORAL_SHIELD_SERVER_AUDIT_SIGNING_KEY is empty"):
        load_server_config(
            env={
                "TEMPORAL_SHIELD_SERVER_INSECURE_DEV": "1",
                "TEMPORAL_SHIELD_SERVER_AUDIT_SIGNING_KEY": "",
            }
        )
    # Optional settings: empty still means unset (documented).
    assert load_config(env={"TEMPORAL_SHIELD_KEYS_AWS_REGION": " "}).keys.aws_region is None


def test_env_strings_are_stripped_like_every_other_env_value() -> None:
    cfg = load_config(env={"TEMPORAL_SHIELD_KEYS_URI": " local:///k.json\n"})
    assert cfg.keys.uri == "local:///k.json"


def test_env_names_in_another_case_are_errors_not_ignored() -> None:
    for name in ("temporal_shield_tls_dir", "Temporal_Shield_TLS_DIR", "TEMPORAL_SHIELD_tls_dir"):
        with pytest.raises(ConfigError, match=rf"{name} \(did you mean TEMPORAL_SHIELD_TLS_DIR"):
            load_config(env={name: "/etc/temporal-tls"})
    with pytest.raises(ConfigError, match="temporal_shield_server_insecure_dev"):
        load_config(env={"temporal_shield_server_insecure_dev": "1"})
    with pytest.raises(ConfigError, match="temporal_shield_server_insecure_dev"):
        load_server_config(env={"temporal_shield_server_insecure_dev": "1"})


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_numbers_are_refused_from_env(raw: str) -> None:
    with pytest.raises(ConfigError, match="max_age must be a finite number"):
        load_config(env={"TEMPORAL_SHIELD_DATA_KEYS_MAX_AGE": raw})
    # leeway = nan once made PyJWT accept tokens that expired long ago.
    with pytest.raises(ConfigError, match="leeway must be a finite number"):
        load_server_config(
            env={
                "TEMPORAL_SHIELD_SERVER_INSECURE_DEV": "1",
                "TEMPORAL_SHIELD_SERVER_AUTH_LEEWAY": raw,
            }
        )


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "+nan"])
def test_non_finite_numbers_are_refused_from_toml(tmp_path: Path, literal: str) -> None:
    path = tmp_path / "shield.toml"
    path.write_text(f"[server]\ninsecure_dev = true\nbody_read_timeout = {literal}\n")
    with pytest.raises(ConfigError, match="body_read_timeout must be a finite number"):
        load_server_config(path, env={})


def test_auth_leeway_must_be_finite_and_not_negative_in_code_too() -> None:
    from temporal_shield.server import AuthConfig

    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ConfigError, match="leeway"):
            AuthConfig(leeway=bad)


def test_empty_optional_string_in_toml_is_unset(tmp_path: Path) -> None:
    # docs/configuration.md's example writes aws_endpoint_url = "": botocore then
    # failed with "Invalid endpoint:" at the first KMS call.
    path = tmp_path / "shield.toml"
    path.write_text('[keys]\naws_endpoint_url = ""\n[storage]\ns3_endpoint_url = ""\n')
    cfg = load_config(path, env={})
    assert cfg.keys.aws_endpoint_url is None
    assert cfg.storage.s3_endpoint_url is None


def test_documented_example_gives_usable_aws_settings(tmp_path: Path) -> None:
    text = DOCS.read_text().split("## Example\n\n```toml\n")[1].split("```")[0]
    path = tmp_path / "shield.toml"
    path.write_text(text)
    cfg = load_config(path, env={})
    for aws in (cfg.keys.aws, cfg.storage.aws):
        assert aws.endpoint_url is None or aws.endpoint_url.startswith("https://")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("port = 99999", "server.port"),
        ("port = -1", "server.port"),
        ('host = ""', "server.host"),
        ('host = " "', "server.host"),
    ],
)
def test_server_listen_address_is_checked(tmp_path: Path, setting: str, message: str) -> None:
    # An empty host listened on every interface; a bad port was an OverflowError at bind.
    path = tmp_path / "shield.toml"
    path.write_text(f"[server]\ninsecure_dev = true\n{setting}\n")
    with pytest.raises(ConfigError, match=message):
        load_server_config(path, env={})


def test_a_misspelt_section_is_reported_before_server_completeness(tmp_path: Path) -> None:
    path = tmp_path / "shield.toml"
    path.write_text("[sever]\ninsecure_dev = true\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*sever"):
        load_server_config(path, env={})


@pytest.mark.parametrize("mode", ["optional", "require"])
def test_client_certificates_without_tls_are_an_error_not_plain_http(
    tmp_path: Path, mode: str
) -> None:
    # Once served plain HTTP, checking no certificate at all.
    with pytest.raises(ConfigError, match="client_auth"):
        load_server_config(
            env={
                "TEMPORAL_SHIELD_SERVER_INSECURE_DEV": "1",
                "TEMPORAL_SHIELD_SERVER_TLS_CLIENT_AUTH": mode,
            }
        )
    path = tmp_path / "shield.toml"
    path.write_text(f'[server]\ninsecure_dev = true\n[server.tls]\nclient_auth = "{mode}"\n')
    with pytest.raises(ConfigError, match="client_auth"):
        load_server_config(path, env={})


def test_a_converter_setting_written_under_server_is_an_error_for_workers(tmp_path: Path) -> None:
    # TOML puts every key after [server] into it: this require_encryption was meant
    # for the workers, which skipped [server] and enforced nothing.
    path = tmp_path / "shield.toml"
    path.write_text('[server]\nport = 8081\n\nrequire_encryption = ["prod-*"]\n')
    with pytest.raises(ConfigError, match=r"server\.require_encryption .*above \[server\]"):
        load_config(path, env={})
    path.write_text('[server]\nport = 8081\n[server.keys]\nuri = "aws-kms://alias/x"\n')
    with pytest.raises(ConfigError, match=r"server\.keys"):
        load_config(path, env={})
    # Names both schemas have are the server's own there.
    path.write_text("[server]\nmax_payload_bytes = 1024\n[server.tls]\nclient_auth = 'none'\n")
    load_config(path, env={})


def test_the_names_both_schemas_share_are_listed() -> None:
    from temporal_shield.converter._settings import SERVER_SHARED_NAMES

    converter = {name for name, _, _ in schema_fields(ShieldConfig)}
    server = {name for name, _, _ in schema_fields(ServerConfig)}
    assert converter & server == SERVER_SHARED_NAMES
