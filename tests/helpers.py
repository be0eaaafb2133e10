"""Shared test helpers: keyrings, fake key providers, tool discovery."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from temporal_shield.codec import (
    AwsSettings,
    ConfigError,
    DecryptionError,
    GeneratedDataKey,
    KeyProvider,
    KeyProviderError,
    KeyProviderFactory,
    Keyring,
    LocalKeyProvider,
)


def require(found: bool, reason: str) -> None:
    """Skip with ``reason`` when a tool is missing, but fail under CI=true."""
    if found:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required tool missing in CI: {reason}")
    pytest.skip(reason)


def make_keyring(path: Path) -> LocalKeyProvider:
    """A fresh keyring at ``path`` and a provider over it."""
    Keyring.new().save(path)
    return LocalKeyProvider(path)


class FakeKms(KeyProvider):
    """An in-memory KMS for behaviour no real endpoint can show on demand:
    outages at an exact moment, disabled keys, call counting, slow calls."""

    def __init__(self, key_id: str = "fake:kek-1", *, delay: float = 0.0) -> None:
        self.key_id = key_id
        self.kek = secrets.token_bytes(32)
        self.delay = delay
        self.generate_calls = 0
        self.decrypt_calls = 0
        self.down = False
        self.disabled: set[str] = set()

    @property
    def primary_key_id(self) -> str:
        return self.key_id

    def can_decrypt(self, key_id: str) -> bool:
        return key_id == self.key_id

    def _wrap(self, dek: bytes, namespace: str) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self.kek).encrypt(nonce, dek, namespace.encode())

    async def _io(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise KeyProviderError("KMS generate failed: ServiceUnavailable")

    async def generate_data_key(self, namespace: str) -> GeneratedDataKey:
        self.generate_calls += 1
        await self._io()
        if self.key_id in self.disabled:
            raise KeyProviderError("KMS generate failed: DisabledException")
        dek = secrets.token_bytes(32)
        return GeneratedDataKey(
            key_id=self.key_id, wrapped=self._wrap(dek, namespace), plaintext=dek
        )

    async def decrypt_data_key(self, key_id: str, wrapped: bytes, namespace: str) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.decrypt_calls += 1
        await self._io()
        if key_id in self.disabled:
            raise KeyProviderError("KMS decrypt failed: DisabledException")
        try:
            return AESGCM(self.kek).decrypt(wrapped[:12], wrapped[12:], namespace.encode())
        except InvalidTag:
            raise DecryptionError() from None


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class VaultFactory(KeyProviderFactory):
    """A third-party key provider factory: ``vault://NAME`` -> a :class:`FakeKms` per name."""

    scheme = "vault://"

    def __init__(self) -> None:
        self.created: list[dict[str, object]] = []
        self.kms: dict[str, FakeKms] = {}

    def create(
        self,
        uri: str,
        *,
        decrypt_only: bool,
        allowed_key_ids: tuple[str, ...],
        aws: AwsSettings | None,
    ) -> KeyProvider:
        name = uri[len(self.scheme) :]
        if not name:
            raise ConfigError("vault:// URI needs a key name")
        self.created.append(
            {"uri": uri, "decrypt_only": decrypt_only, "allowed": allowed_key_ids, "aws": aws}
        )
        return self.kms.setdefault(name, FakeKms(f"vault:{name}"))


__all__ = ["ConfigError", "FakeClock", "FakeKms", "VaultFactory", "make_keyring", "require"]


# --- Installs in fresh virtual environments (packaging test, bench_install) ----------

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    """Build this project's wheel into ``out`` (no isolation: setuptools is a dev dep)."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("temporal_shield-*.whl")
    return wheel


def make_venv(path: Path, *requirements: str) -> Path:
    """A fresh virtual environment at ``path`` with ``requirements`` pip-installed.

    Nothing of this interpreter's site-packages is visible in it: what imports
    there is what the requirements' own dependency metadata brings.

    Returns:
        The environment's ``bin`` folder.
    """
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    bin_dir = path / "bin"
    if requirements:
        subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "install", "-q", *requirements],
            check=True,
            capture_output=True,
        )
    return bin_dir


def site_packages_bytes(venv: Path, *, exclude: tuple[str, ...] = ("pip", "setuptools")) -> int:
    """Bytes of every file under the environment's site-packages, less ``exclude``d
    distributions' folders (the venv's own installer is not part of an install)."""
    (site,) = venv.glob("lib/python*/site-packages")
    total = 0
    for item in site.iterdir():
        name = item.name.split("-")[0].lower()
        if name in exclude or name == "_distutils_hack" or item.name == "distutils-precedence.pth":
            continue
        files = [item] if item.is_file() else [f for f in item.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Stop ``proc`` as Ctrl-C would, so it stops what it started; kill it if it hangs.

    A SIGKILL alone would leave the children it started (a dev server) running.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
