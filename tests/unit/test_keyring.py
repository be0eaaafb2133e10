"""The local keyring file and the `temporal-shield keys` commands."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from temporal_shield._main import main
from temporal_shield.codec import (
    ConfigError,
    DataKeyManager,
    DecryptionError,
    Envelope,
    Keyring,
    LocalKeyProvider,
)


def test_keys_cli_init_list_rotate_retire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ring" / "keyring.json"
    assert main(["keys", "init", "--keyring", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["keys", "init", "--keyring", str(path)]) == 2  # refuses to overwrite
    first = Keyring.load(path).primary
    assert main(["keys", "rotate", "--keyring", str(path)]) == 0
    ring = Keyring.load(path)
    assert ring.primary != first
    assert len(ring.keys) == 2
    capsys.readouterr()
    assert main(["keys", "list", "--keyring", str(path)]) == 0
    listing = capsys.readouterr().out
    assert first in listing
    assert "primary" in listing
    for key in ring.keys:  # never prints key material
        assert key.material.hex() not in listing
        assert json.loads(path.read_text())["keys"][0]["material"] not in listing
    assert main(["keys", "retire", first, "--keyring", str(path)]) == 0
    assert Keyring.load(path).get(first).state == "retired"  # type: ignore[union-attr]
    assert main(["keys", "retire", ring.primary, "--keyring", str(path)]) == 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o610, 0o604, 0o602, 0o601, 0o660])
def test_keyring_readable_by_others_is_refused(keyring_path: Path, mode: int) -> None:
    """Any access for group or others, not only reading by everyone."""
    os.chmod(keyring_path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        Keyring.load(keyring_path)
    os.chmod(keyring_path, 0o600)
    Keyring.load(keyring_path)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(primary="missing"),
        lambda d: d["keys"][0].update(material="AAAA"),
        lambda d: d["keys"][0].update(state="weird"),
        lambda d: d["keys"].append(dict(d["keys"][0])),
        lambda d: d.pop("keys"),
    ],
)
def test_malformed_keyring_is_refused(keyring_path: Path, mutate: object) -> None:
    doc = json.loads(keyring_path.read_text())
    mutate(doc)  # type: ignore[operator]
    keyring_path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="malformed"):
        Keyring.load(keyring_path)


async def test_rotation_keeps_old_payloads_readable_and_retire_refuses(keyring_path: Path) -> None:
    old = Envelope(DataKeyManager([LocalKeyProvider(keyring_path)]))
    sealed_old = await old.seal(b"before rotation", namespace="default")
    Keyring.load(keyring_path).rotated().save(keyring_path)
    new = Envelope(DataKeyManager([LocalKeyProvider(keyring_path)]))
    sealed_new = await new.seal(b"after rotation", namespace="default")
    assert sealed_new.key_id != sealed_old.key_id
    opened = await new.open(sealed_old.data, key_id=sealed_old.key_id, namespace="default")
    assert opened.plaintext == b"before rotation"
    ring = Keyring.load(keyring_path)
    ring.retired(sealed_old.key_id.removeprefix("local:")).save(keyring_path)
    after_retire = Envelope(DataKeyManager([LocalKeyProvider(keyring_path)]))
    with pytest.raises(DecryptionError):
        await after_retire.open(sealed_old.data, key_id=sealed_old.key_id, namespace="default")
    opened = await after_retire.open(sealed_new.data, key_id=sealed_new.key_id, namespace="default")
    assert opened.plaintext == b"after rotation"


def test_repr_never_shows_key_material(keyring_path: Path) -> None:
    ring = Keyring.load(keyring_path)
    assert ring.keys[0].material.hex() not in repr(ring)
    assert str(ring.keys[0].material) not in repr(ring)
