"""Walk Temporal API messages (histories, events) for the payloads and failures they carry."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload


def iter_messages(
    message: Message, types: tuple[type[Message], ...], path: str = ""
) -> Iterator[tuple[str, Message]]:
    """Yield ``(field path, message)`` for every message of ``types`` inside ``message``.

    The walk is generic (any proto message, any depth), so new event types and
    fields are covered without a list to maintain. It does not descend into a
    message it yields.
    """
    if isinstance(message, types):
        yield path, message
        return
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key, item in value.items():
                    yield from iter_messages(item, types, f"{name}[{key}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from iter_messages(item, types, f"{name}[{i}]")
        else:
            yield from iter_messages(value, types, name)


def iter_payloads(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Yield ``(field path, payload)`` for every :class:`Payload` inside ``message``.

    Search attributes are yielded too, under their ``search_attributes`` path:
    callers decide how to treat them.
    """
    for found_path, found in iter_messages(message, (Payload,), path):
        assert isinstance(found, Payload)
        yield found_path, found
