"""Workflows for the composition tests: Pydantic models through a workflow and an activity.

Kept free of test imports so the workflow sandbox can load it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel
from temporalio import activity, workflow

from .workflows import mark


class Item(BaseModel):
    """An order line."""

    sku: str
    quantity: int
    price: Decimal


class Order(BaseModel):
    """Workflow input: a datetime and Decimals, which only a Pydantic converter round-trips."""

    order_id: str
    placed_at: datetime
    items: list[Item]
    note: str


class Receipt(BaseModel):
    """Activity and workflow result."""

    order_id: str
    placed_at: datetime
    total: Decimal
    note: str


@activity.defn
async def price_order(order: Order) -> Receipt:
    """Prices an order; fails unless it really received an :class:`Order`."""
    assert isinstance(order, Order), type(order)
    total = sum((i.price * i.quantity for i in order.items), Decimal(0))
    return Receipt(
        order_id=order.order_id,
        placed_at=order.placed_at,
        total=total,
        note=f"{order.note}|{mark('receipt')}",
    )


@workflow.defn
class OrderWorkflow:
    """Passes the order to the activity and returns its receipt."""

    @workflow.run
    async def run(self, order: Order) -> Receipt:
        """Price the order."""
        assert isinstance(order, Order), type(order)
        receipt = await workflow.execute_activity(
            price_order, order, start_to_close_timeout=timedelta(seconds=30)
        )
        assert isinstance(receipt, Receipt), type(receipt)
        return receipt


@activity.defn
async def shout(text: str) -> str:
    """Upper-cases its input (a plain-string activity round trip)."""
    return text.upper()


@workflow.defn
class ShoutWorkflow:
    """Sends its input through the :func:`shout` activity."""

    @workflow.run
    async def run(self, text: str) -> str:
        """Shout."""
        return await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=30)
        )
