"""A wrapped key KMS would reject as malformed is refused before any KMS call."""

from __future__ import annotations

from typing import Any

import pytest

from temporal_shield.codec import DecryptionError
from temporal_shield.codec._aws import MAX_CIPHERTEXT_BLOB, AwsKmsKeyProvider


class _Client:
    """Records calls; KMS's own answer to these inputs (ValidationException) is
    what this check exists to avoid, and no emulator models that limit."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def describe_key(self, **_: Any) -> dict[str, Any]:
        return {"KeyMetadata": {"Arn": "arn:aws:kms:eu-west-1:1:key/k"}}

    def decrypt(self, **_: Any) -> dict[str, Any]:
        self.calls.append("decrypt")
        return {"Plaintext": b"\0" * 32}


@pytest.mark.parametrize("size", [0, MAX_CIPHERTEXT_BLOB + 1, 65535])
async def test_oversize_or_empty_wrapped_key_never_reaches_kms(size: int) -> None:
    client = _Client()
    provider = AwsKmsKeyProvider("alias/k", client=client)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        await provider.decrypt_data_key("arn:aws:kms:eu-west-1:1:key/k", b"x" * size, "ns")
    assert client.calls == []
    # The bound itself is accepted.
    await provider.decrypt_data_key(
        "arn:aws:kms:eu-west-1:1:key/k", b"x" * MAX_CIPHERTEXT_BLOB, "ns"
    )
    assert client.calls == ["decrypt"]
