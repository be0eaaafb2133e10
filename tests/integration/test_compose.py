"""ShieldPlugin composes with the client's own converter, on a real dev server.

Pydantic models keep working, a user's codec is refused or chained under ours, a
user's external storage is kept (and receives ciphertext), applying the plugin
twice encrypts once, and a custom key provider is reached through the plugin.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Self

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    ExternalStorage,
    PayloadCodec,
    SerializationContext,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.worker import Replayer, Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import (
    KEY_ID_METADATA,
    ConfigError,
    register_key_provider,
    unregister_key_provider,
)
from temporal_shield.converter import (
    ChainedCodec,
    KeysConfig,
    ShieldCodec,
    ShieldConfig,
    ShieldPlugin,
    iter_payloads,
    shield_codec,
)

from ..helpers import VaultFactory
from .compose_workflows import (
    Item,
    Order,
    OrderWorkflow,
    Receipt,
    ShoutWorkflow,
    price_order,
    shout,
)
from .workflows import MARK, mark

ENCRYPTED = b"binary/encrypted"


def _config(keyring_path: Path) -> ShieldConfig:
    return ShieldConfig(keys=KeysConfig(uri=f"local://{keyring_path}"))


async def _raw_payloads(dev_server: DevServer, workflow_id: str) -> tuple[bytes, list[Payload]]:
    """The history as stored (no converter): its bytes and every codec-encoded payload."""
    raw = await Client.connect(dev_server.address)
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    payloads = [
        payload
        for event in history.events
        for path, payload in iter_payloads(event)
        if "search_attributes" not in path
    ]
    assert payloads, "the history holds no payloads"
    return b"".join(e.SerializeToString() for e in history.events), payloads


async def _shout(
    client: Client, text: str, *, plugins: Sequence[ShieldPlugin] = ()
) -> tuple[str, str]:
    queue = f"compose-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[ShoutWorkflow], activities=[shout], plugins=plugins
    ):
        result = await client.execute_workflow(ShoutWorkflow.run, text, id=queue, task_queue=queue)
    return queue, result


# -- Pydantic ----------------------------------------------------------------------


async def test_pydantic_models_round_trip_with_only_ciphertext_in_history(
    dev_server: DevServer, keyring_path: Path
) -> None:
    client = await Client.connect(
        dev_server.address,
        data_converter=pydantic_data_converter,
        plugins=[ShieldPlugin(_config(keyring_path))],
    )
    assert client.data_converter.payload_converter_class is PydanticPayloadConverter
    codec = shield_codec(client.data_converter)
    assert isinstance(codec, ShieldCodec)
    placed = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)
    order = Order(
        order_id="o-1",
        placed_at=placed,
        items=[
            Item(sku="a", quantity=3, price=Decimal("1.10")),
            Item(sku="b", quantity=1, price=Decimal("0.05")),
        ],
        note=mark("order"),
    )
    queue = f"pydantic-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[OrderWorkflow], activities=[price_order]
    ):
        receipt = await client.execute_workflow(
            OrderWorkflow.run, order, id=queue, task_queue=queue
        )
    assert isinstance(receipt, Receipt)
    assert receipt.total == Decimal("3.35")
    assert receipt.placed_at == placed
    assert receipt.note == f"{mark('order')}|{mark('receipt')}"

    raw, payloads = await _raw_payloads(dev_server, queue)
    assert MARK.encode() not in raw
    inner = []
    for payload in payloads:
        assert payload.metadata["encoding"] == ENCRYPTED
        (decoded,) = await codec.decode([payload])
        inner.append(decoded)
    # Under our layer: the Pydantic converter's JSON (ISO datetime, Decimal as string).
    documents = [json.loads(p.data) for p in inner if p.metadata["encoding"] == b"json/plain"]
    assert any(d.get("placed_at") == "2024-05-17T09:30:00Z" for d in documents), documents
    assert any(d.get("total") == "3.35" for d in documents), documents


# -- a user's payload codec ---------------------------------------------------------

USER_ENCODING = b"binary/user-xor"


@dataclass
class CodecStats:
    encoded: int = 0
    decoded: int = 0
    contexts: list[type] = field(default_factory=list)


class UserCodec(PayloadCodec, WithSerializationContext):
    """A user's own codec: XOR-masks the serialized payload under its own encoding."""

    def __init__(self, stats: CodecStats) -> None:
        self.stats = stats

    @staticmethod
    def _mask(data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.stats.encoded += len(payloads)
        return [
            Payload(metadata={"encoding": USER_ENCODING}, data=self._mask(p.SerializeToString()))
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding") == USER_ENCODING:
                self.stats.decoded += 1
                p = Payload.FromString(self._mask(p.data))
            out.append(p)
        return out

    def with_context(self, context: SerializationContext) -> Self:
        self.stats.contexts.append(type(context))
        return self


async def test_a_users_codec_is_refused_by_default(
    dev_server: DevServer, keyring_path: Path
) -> None:
    user = DataConverter(payload_codec=UserCodec(CodecStats()))
    with pytest.raises(ConfigError, match=r"payload codec \(UserCodec\).*chain_codec=True"):
        await Client.connect(
            dev_server.address, data_converter=user, plugins=[ShieldPlugin(_config(keyring_path))]
        )


async def test_a_users_codec_is_chained_under_ours(
    dev_server: DevServer, keyring_path: Path
) -> None:
    stats = CodecStats()
    client = await Client.connect(
        dev_server.address,
        data_converter=DataConverter(payload_codec=UserCodec(stats)),
        plugins=[ShieldPlugin(_config(keyring_path), chain_codec=True)],
    )
    chained = client.data_converter.payload_codec
    assert isinstance(chained, ChainedCodec)
    queue, result = await _shout(client, mark("chained"))
    assert result == mark("chained").upper()
    assert stats.encoded > 0
    assert stats.decoded > 0
    # The user's codec gets the SDK's serialization context through the chain.
    assert WorkflowSerializationContext in stats.contexts
    assert ActivitySerializationContext in stats.contexts

    raw, payloads = await _raw_payloads(dev_server, queue)
    assert MARK.encode() not in raw
    assert MARK.upper().encode() not in raw
    texts = []
    for payload in payloads:
        # History holds our envelope; under it, the user's payload; under that, JSON.
        assert payload.metadata["encoding"] == ENCRYPTED
        (under,) = await chained.shield.decode([payload])
        assert under.metadata["encoding"] == USER_ENCODING
        (plain,) = await chained.user_codec.decode([under])
        texts.append(plain.data)
    assert json.dumps(mark("chained")).encode() in texts
    assert json.dumps(mark("chained").upper()).encode() in texts


# -- a user's external storage ------------------------------------------------------


class MemoryDriver(StorageDriver):
    """A user's storage driver keeping payloads in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def name(self) -> str:
        return "memory"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        claims = []
        for payload in payloads:
            key = uuid.uuid4().hex
            self.objects[key] = payload.SerializeToString()
            claims.append(StorageDriverClaim(claim_data={"key": key}))
        return claims

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return [Payload.FromString(self.objects[c.claim_data["key"]]) for c in claims]


async def test_a_users_external_storage_is_kept_and_stores_ciphertext(
    dev_server: DevServer, keyring_path: Path
) -> None:
    driver = MemoryDriver()
    storage = ExternalStorage(drivers=[driver], payload_size_threshold=2048)
    client = await Client.connect(
        dev_server.address,
        data_converter=DataConverter(external_storage=storage),
        plugins=[ShieldPlugin(_config(keyring_path))],
    )
    assert client.data_converter.external_storage is storage
    # Random hex compresses to about half: still well over the threshold once sealed.
    big = mark("stored") + os.urandom(8 * 1024).hex()
    queue, result = await _shout(client, big)
    assert result == big.upper()
    assert driver.objects, "nothing reached the user's storage"
    for body in driver.objects.values():
        assert MARK.encode() not in body
        assert MARK.upper().encode() not in body
        assert Payload.FromString(body).metadata["encoding"] == ENCRYPTED
    raw, _ = await _raw_payloads(dev_server, queue)
    assert MARK.encode() not in raw
    assert len(raw) < 8 * 1024  # the large payloads are references, not inline


# -- applying the plugin twice --------------------------------------------------------


async def test_applying_the_plugin_twice_encrypts_once(
    dev_server: DevServer, keyring_path: Path
) -> None:
    plugin = ShieldPlugin(_config(keyring_path))
    first = await Client.connect(dev_server.address, plugins=[plugin])
    # Client(**config) re-runs every plugin on a converter that already has ours.
    again = Client(**first.config())
    assert isinstance(again.data_converter.payload_codec, ShieldCodec)
    # So does passing the first client's converter to a new connection.
    third = await Client.connect(
        dev_server.address,
        data_converter=again.data_converter,
        plugins=[ShieldPlugin(_config(keyring_path))],
    )
    assert isinstance(third.data_converter.payload_codec, ShieldCodec)
    # A worker given the plugin again as well (the SDK warns) changes nothing either.
    with pytest.warns(UserWarning, match="same plugin type"):
        queue, result = await _shout(third, mark("twice"), plugins=[plugin])
    assert result == mark("twice").upper()

    raw, payloads = await _raw_payloads(dev_server, queue)
    assert MARK.encode() not in raw
    codec = shield_codec(third.data_converter)
    assert codec is not None
    for payload in payloads:
        assert payload.metadata["encoding"] == ENCRYPTED
        (under,) = await codec.decode([payload])
        assert under.metadata["encoding"] == b"json/plain"  # one layer, not two

    # A replayer given the client's converter and the plugin replays that history.
    history = await again.get_workflow_handle(queue).fetch_history()
    # Payloads are bound to their namespace: the replayer must name the history's.
    replayer = Replayer(
        workflows=[ShoutWorkflow],
        namespace="default",
        data_converter=again.data_converter,
        plugins=[plugin],
    )
    replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None
    # Under the SDK's default replay namespace the payloads do not authenticate.
    elsewhere = Replayer(
        workflows=[ShoutWorkflow], data_converter=again.data_converter, plugins=[plugin]
    )
    failed = await elsewhere.replay_workflow(history, raise_on_replay_failure=False)
    assert failed.replay_failure is not None


# -- the workflow sandbox ------------------------------------------------------------


async def test_a_workflow_file_that_imports_temporal_shield_runs_under_the_plugin(
    dev_server: DevServer, keyring_path: Path
) -> None:
    from .shielded_workflows import ConfiguredWorkflow

    plugin = ShieldPlugin(_config(keyring_path))
    client = await Client.connect(dev_server.address, plugins=[plugin])
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[ConfiguredWorkflow]):
        result = await client.execute_workflow(
            ConfiguredWorkflow.run, "ok", id=queue, task_queue=queue
        )
    assert result == "ok:True"
    history = await client.get_workflow_handle(queue).fetch_history()
    replayer = Replayer(workflows=[ConfiguredWorkflow], namespace="default", plugins=[plugin])
    replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None
    # What the plugin saves its users from: the same file under the SDK's default sandbox.
    plain = await Client.connect(dev_server.address)
    with pytest.raises(RuntimeError, match="Failed validating workflow"):
        Worker(plain, task_queue=queue, workflows=[ConfiguredWorkflow])


# -- a custom key provider -----------------------------------------------------------


async def _key_ids(dev_server: DevServer, workflow_id: str) -> set[str]:
    _, payloads = await _raw_payloads(dev_server, workflow_id)
    assert all(p.metadata["encoding"] == ENCRYPTED for p in payloads)
    return {p.metadata[KEY_ID_METADATA].decode() for p in payloads}


async def test_a_custom_key_provider_given_to_the_plugin(dev_server: DevServer) -> None:
    vault = VaultFactory()
    config = ShieldConfig(keys=KeysConfig(uri="vault://orders"))
    client = await Client.connect(
        dev_server.address, plugins=[ShieldPlugin(config, key_providers=[vault])]
    )
    queue, result = await _shout(client, mark("vault"))
    assert result == mark("vault").upper()
    assert await _key_ids(dev_server, queue) == {"vault:orders"}
    assert vault.kms["orders"].generate_calls >= 1
    # A second process (a new plugin over the same vault) reads it back.
    reader = shield_codec(ShieldPlugin(config, key_providers=[vault]).converter)
    assert reader is not None
    _, payloads = await _raw_payloads(dev_server, queue)
    decoded = await reader.with_namespace("default").decode(payloads)
    assert json.dumps(mark("vault")).encode() in [p.data for p in decoded]
    assert vault.kms["orders"].decrypt_calls >= 1


async def test_a_registered_key_provider_reached_from_the_config_file(
    dev_server: DevServer, tmp_path: Path
) -> None:
    vault = VaultFactory()
    toml = tmp_path / "shield.toml"
    toml.write_text('[keys]\nuri = "vault://payments"\n')
    register_key_provider(vault)
    try:
        client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(toml)])
        queue, result = await _shout(client, mark("registered"))
    finally:
        unregister_key_provider(vault)
    assert result == mark("registered").upper()
    assert await _key_ids(dev_server, queue) == {"vault:payments"}
    with pytest.raises(ConfigError, match=r"vault://payments.*available: local://, aws-kms://"):
        ShieldPlugin(toml)
