"""The lifecycle of one just-in-time grant, as a Temporal workflow (see ``docs/grants.md``).

One workflow per request: pending -> approved -> (expired | revoked), or
pending -> denied | expired (nobody decided within ``PENDING_TIMEOUT``). The
grant record is kept in the workflow's memo, so that every codec-server replica
reads all running grants with one visibility call. Approval carries a tag the
approving codec server computed with its secret (``ServerSecret.vouch``): a
replica honours only records whose tag it can verify, so an update sent to the
namespace by anyone else opens nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

PENDING_TIMEOUT = 24 * 3600.0
"""Seconds a request waits for a decision before it expires."""
MEMO_KEY = "grant"
"""The memo key holding the grant record."""

PENDING, APPROVED, DENIED, REVOKED, EXPIRED = "pending", "approved", "denied", "revoked", "expired"


def vouch_bytes(record: dict[str, Any]) -> bytes:
    """The canonical bytes an approving codec server vouches for."""
    fields = (
        record["id"],
        # The run the approval was given to: a reset (or any new run) of the
        # workflow replays the approved record, but under another run id, so a
        # revoked grant cannot be brought back that way.
        record["run_id"],
        record["subject"],
        record["namespace"],
        record["classification"],
        repr(float(record["expires_at"])),
        record["approver"],
        # Decode records name it: a worker someone else runs on the task
        # queue must not be able to rewrite it under a genuine approval.
        record["justification"],
    )
    return _canonical(fields)


def request_bytes(record: dict[str, Any], run_id: str) -> bytes:
    """The canonical bytes of a request, as the requesting codec server checked it.

    An approval is given only to a request carrying this tag: a "request"
    someone started straight in Temporal (any namespace, any duration, anyone's
    name) is never approved, however it reads. ``run_id`` is the run the codec
    server started: a request re-presented as another run (restarted after a
    denial, even with the old run deleted) does not carry a tag for its own run.
    """
    fields = (
        record["id"],
        run_id,
        record["subject"],
        record["namespace"],
        record["classification"],
        repr(float(record["duration"])),
        repr(float(record["requested_at"])),
        record["justification"],
    )
    return _canonical(fields)


def _canonical(fields: tuple[Any, ...]) -> bytes:
    return "\x00".join(str(f) for f in fields).encode("utf-8", "surrogatepass")


@dataclass(frozen=True, kw_only=True)
class GrantRequest:
    """A request as the codec server verified it."""

    id: str
    subject: str
    email: str
    groups: list[str]
    namespace: str
    classification: str
    duration: float
    justification: str
    requested_at: float = 0.0
    """When the codec server accepted the request (its clock). Its tag arrives
    with :meth:`GrantWorkflow.vouch_request` once the run, which it covers, exists."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    """An approver's (or requester's) act, with the identity the codec server verified."""

    actor: str
    actor_email: str = ""
    reason: str = ""
    expires_at: float = 0.0
    """For approval: when the grant ends (chosen and vouched for by the codec server)."""
    tag: str = ""
    """For approval: the codec server's tag over :func:`vouch_bytes`."""
    run_id: str = ""
    """For approval: the run approved (covered by the tag)."""


@workflow.defn(name="TemporalShieldGrant")
class GrantWorkflow:
    """One grant's lifecycle; its record is the memo ``grant``."""

    @workflow.init
    def __init__(self, request: GrantRequest) -> None:
        """Hold the record before any update is validated (an update can come first)."""
        self._record: dict[str, Any] = {
            "id": request.id,
            "subject": request.subject,
            "email": request.email,
            "namespace": request.namespace,
            "classification": request.classification,
            "duration": request.duration,
            "justification": request.justification,
            "requested_at": request.requested_at or workflow.now().timestamp(),
            "request_tag": "",
            "state": PENDING,
            "run_id": "",
            "approver": "",
            "expires_at": 0.0,
            "tag": "",
            "reason": "",
        }

    @workflow.run
    async def run(self, request: GrantRequest) -> dict[str, Any]:
        """Wait for a decision, then for the end of the grant."""
        self._publish()
        try:
            await workflow.wait_condition(
                lambda: self._record["state"] != PENDING,
                timeout=timedelta(seconds=PENDING_TIMEOUT),
            )
        except TimeoutError:
            self._end(EXPIRED, "no decision")
            return self._record
        if self._record["state"] == APPROVED:
            left = self._record["expires_at"] - workflow.now().timestamp()
            if left > 0:
                try:
                    await workflow.wait_condition(
                        lambda: self._record["state"] != APPROVED,
                        timeout=timedelta(seconds=left),
                    )
                except TimeoutError:
                    self._end(EXPIRED, "expired")
            else:
                self._end(EXPIRED, "expired")
        return self._record

    @workflow.query
    def record(self) -> dict[str, Any]:
        """The grant record now."""
        return self._record

    @workflow.update
    def vouch_request(self, tag: str) -> dict[str, Any]:
        """The requesting codec server's tag over :func:`request_bytes` for this run."""
        self._record["request_tag"] = tag
        self._publish()
        return self._record

    @vouch_request.validator
    def _check_vouch_request(self, tag: str) -> None:
        self._must_be(PENDING)
        if self._record.get("request_tag") or not tag:
            raise ApplicationError("the request is vouched for once", type="BadDecision")

    @workflow.update
    def approve(self, decision: Decision) -> dict[str, Any]:
        """Approve (four eyes: never by the requester)."""
        self._record.update(
            state=APPROVED,
            approver=decision.actor,
            expires_at=decision.expires_at,
            tag=decision.tag,
            run_id=decision.run_id,
            reason=decision.reason,
        )
        self._publish()
        return self._record

    @approve.validator
    def _check_approve(self, decision: Decision) -> None:
        self._must_be(PENDING)
        if decision.actor == self._record.get("subject"):
            raise ApplicationError("self-approval refused", type="SelfApproval")
        if not decision.tag or decision.expires_at <= 0:
            raise ApplicationError("approval without a vouching tag", type="BadDecision")
        if decision.run_id != workflow.info().run_id:
            raise ApplicationError("approval given to another run", type="BadDecision")

    @workflow.update
    def deny(self, decision: Decision) -> dict[str, Any]:
        """Deny a pending request."""
        self._end(DENIED, decision.reason, approver=decision.actor)
        return self._record

    @deny.validator
    def _check_deny(self, decision: Decision) -> None:
        self._must_be(PENDING)

    @workflow.update
    def revoke(self, decision: Decision) -> dict[str, Any]:
        """End a pending or approved grant now (withdrawal when pending)."""
        self._end(REVOKED, decision.reason, revoked_by=decision.actor)
        return self._record

    @revoke.validator
    def _check_revoke(self, decision: Decision) -> None:
        self._must_be(PENDING, APPROVED)

    def _must_be(self, *states: str) -> None:
        if self._record.get("state") not in states:
            raise ApplicationError(
                f"grant is {self._record.get('state', 'not started')}", type="GrantFinished"
            )

    def _end(self, state: str, reason: str, **more: str) -> None:
        self._record.update(state=state, reason=reason, tag="", **more)
        self._publish()

    def _publish(self) -> None:
        workflow.upsert_memo({MEMO_KEY: dict(self._record)})
