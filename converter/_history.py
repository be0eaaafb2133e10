"""Walk Temporal API messages (histories, events) for the payloads and failures they carry."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload


@cache
def _may_hold(descriptor: Descriptor, targets: frozenset[str]) -> bool:
    """Whether a message of ``descriptor`` can contain one of ``targets`` (full names).

    A fresh depth-first search per (descriptor, targets), cached: skipping fields
    that cannot hold a payload (timestamps, task queues, workflow types...) halves
    the walk, and not caching intermediate nodes of a cycle keeps it exact.
    """
    seen: set[str] = set()
    stack = [descriptor]
    while stack:
        current = stack.pop()
        if current.full_name in targets:
            return True
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        stack.extend(f.message_type for f in current.fields if f.message_type is not None)
    return False


def iter_messages(
    message: Message, types: tuple[type[Message], ...], path: str = ""
) -> Iterator[tuple[str, Message]]:
    """Yield ``(field path, message)`` for every message of ``types`` inside ``message``.

    The walk is generic (any proto message, any depth), so new event types and
    fields are covered without a list to maintain. It does not descend into a
    message it yields, nor into fields whose type cannot hold one.
    """
    targets = frozenset(t.DESCRIPTOR.full_name for t in types)
    return _walk(message, types, targets, path)


def _walk(
    message: Message, types: tuple[type[Message], ...], targets: frozenset[str], path: str
) -> Iterator[tuple[str, Message]]:
    if isinstance(message, types):
        yield path, message
        return
    for field, value in message.ListFields():
        if field.message_type is None or not _may_hold(field.message_type, targets):
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                yield from _walk(item, types, targets, f"{name}[{key_text(key)}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from _walk(item, types, targets, f"{name}[{i}]")
        else:
            yield from _walk(value, types, targets, name)


MAX_KEY_TEXT = 64
"""Characters of a map key kept in a path (keys are application text, any length)."""


def key_text(key: object) -> str:
    """A map key as it appears in a path: printable, unambiguous and bounded.

    Memo and header keys are chosen by applications: a key with brackets,
    control characters or a megabyte of text must not forge or bloat a path.
    """
    text = str(key)
    cut = len(text) > MAX_KEY_TEXT
    out = "".join(
        ch if ch.isprintable() and ch not in "[]\\" else _escape(ch) for ch in text[:MAX_KEY_TEXT]
    )
    return out + "…" if cut else out


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def iter_payloads(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Yield ``(field path, payload)`` for every :class:`Payload` inside ``message``.

    Search attributes are yielded too, under their ``search_attributes`` path:
    callers decide how to treat them.
    """
    for found_path, found in iter_messages(message, (Payload,), path):
        assert isinstance(found, Payload)
        yield found_path, found
