"""temporal-shield: compression + KMS envelope encryption for Temporal, a codec server, mTLS.

Subpackages:
    codec: the envelope format, AEAD, compression, key providers, data-key cache.
    converter: the Temporal payload codec, DataConverter and plugin.
    server: the remote codec server for the Web UI and CLI.
    certs: local PKI in the cert-manager Secret layout.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
