"""Key URIs: ``local://PATH`` and ``aws-kms://KEY`` select a key provider."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ._aws import AwsSettings, aws_client_config
from ._errors import ConfigError
from ._provider import KeyProvider

LOCAL_SCHEME = "local://"
AWS_KMS_SCHEME = "aws-kms://"


def provider_from_uri(
    uri: str,
    *,
    decrypt_only: bool = False,
    allowed_key_ids: Iterable[str] = (),
    aws: AwsSettings | None = None,
) -> KeyProvider:
    """Build the key provider a key URI names.

    Args:
        uri: ``local://PATH`` (``local:///abs/keyring.json``, ``~`` expanded) or
            ``aws-kms://KEY`` (key id, ARN or ``alias/NAME``).
        decrypt_only: For AWS, do not encrypt with this key (an old KMS key kept
            readable after switching keys). Local keyrings always encrypt with
            their primary.
        allowed_key_ids: Restrict decryption to these KEKs (local key names, or
            AWS key ids/ARNs/aliases added to the primary).
        aws: AWS connection settings (endpoint, region, timeouts, retries).

    Raises:
        ConfigError: unknown scheme, or the provider cannot be set up.
    """
    allowed = tuple(allowed_key_ids)
    if uri.startswith(LOCAL_SCHEME):
        from ._local import LocalKeyProvider

        path = Path(uri[len(LOCAL_SCHEME) :]).expanduser()
        return LocalKeyProvider(path, allowed_key_ids=frozenset(allowed) if allowed else None)
    if uri.startswith(AWS_KMS_SCHEME):
        import boto3

        from ._aws import AwsKmsKeyProvider

        key = uri[len(AWS_KMS_SCHEME) :]
        if not key:
            raise ConfigError("aws-kms:// URI needs a key id, ARN or alias")
        settings = aws or AwsSettings()
        client = boto3.client(
            "kms",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            config=aws_client_config(settings),
        )
        return AwsKmsKeyProvider(
            None if decrypt_only else key,
            client=client,
            decrypt_keys=(key, *allowed) if decrypt_only else allowed,
        )
    raise ConfigError(f"unsupported key URI {uri!r}: use local://PATH or aws-kms://KEY")
