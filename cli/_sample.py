"""The sample workflows the demo runs: a patient intake with PII-like data, orders, payments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow


@dataclass
class Intake:
    """A (fictional) patient record: the kind of data that must never be stored in clear."""

    patient: str
    ssn: str
    diagnosis: str
    card_number: str


@activity.defn
async def triage(intake: Intake) -> str:
    """Pretend to triage a patient."""
    return f"{intake.patient} ({intake.ssn}) triaged for {intake.diagnosis}"


@workflow.defn
class IntakeWorkflow:
    """Runs one triage activity and returns its summary."""

    @workflow.run
    async def run(self, intake: Intake) -> str:
        """Triage the patient."""
        return await workflow.execute_activity(
            triage, intake, start_to_close_timeout=timedelta(seconds=30)
        )


@activity.defn
async def summarise(record: dict[str, str]) -> str:
    """Pretend to process a record (an order, a payment)."""
    return "processed " + ", ".join(f"{k}={v}" for k, v in sorted(record.items()))


@workflow.defn
class RecordWorkflow:
    """Runs one activity over a record and returns its summary."""

    @workflow.run
    async def run(self, record: dict[str, str]) -> str:
        """Process the record."""
        return await workflow.execute_activity(
            summarise, record, start_to_close_timeout=timedelta(seconds=30)
        )
