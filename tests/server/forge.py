"""Forged envelopes: a valid-looking header around a wrapped key no KMS ever made."""

from __future__ import annotations

import os

from temporalio.api.common.v1 import Payload

from temporal_shield.codec import parse
from temporal_shield.codec._format import header_middle, key_field, namespace_field, pack_fixed


def forged_payload(template: Payload) -> Payload:
    """A payload with a valid-looking header, the template's key id and a random wrapped key.

    Namespace and label are the template's, so the forgery passes every check
    that needs no key and costs an unwrap attempt (the KMS-flood vector); its
    claimed length is small, so no size budget stops it first.
    """
    header, _ = parse(template.data)
    data = (
        pack_fixed(0, 64)
        + header_middle(
            namespace_field(header.namespace),
            "",
            header.classification,
            key_field(os.urandom(184), os.urandom(32)),
        )
        + os.urandom(12)
        + os.urandom(80)
    )
    return Payload(metadata=dict(template.metadata), data=data)
