"""Local PKI in the cert-manager Secret layout (``tls.crt``, ``tls.key``, ``ca.crt``).

Produces the same certificate names and usages as the cert-manager manifests in
``deploy/``, for development, the demo and the tests. Private keys are generated
at run time with mode 0600 and are never committed.
"""

from ._pki import (
    CA_NAME,
    CLIENT_AUTH,
    LEAVES,
    SERVER_AUTH,
    IssuedPair,
    LeafSpec,
    dev_pki,
    issue,
    make_ca,
    write_secret,
)

__all__ = [
    "CA_NAME",
    "CLIENT_AUTH",
    "LEAVES",
    "SERVER_AUTH",
    "IssuedPair",
    "LeafSpec",
    "dev_pki",
    "issue",
    "make_ca",
    "write_secret",
]
