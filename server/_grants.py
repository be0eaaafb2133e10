"""Just-in-time grants kept as Temporal workflows: see ``docs/grants.md``.

:func:`install` (called by ``create_app``) connects to Temporal, runs the grant
workflows' worker, keeps a :class:`Registry` of approved grants fresh (one
visibility call per ``refresh_interval``) and adds the JSON grant API:

- ``GET /grants`` (``?all`` for approvers), ``POST /grants`` (request),
- ``POST /grants/{id}/approve``, ``/deny``, ``/revoke``.

Every step is authenticated by :func:`identify`, authorised by the policy's
``grants`` section and audited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from temporal_shield.codec import ConfigError, ShieldError
from temporal_shield.converter import client_connect_config, data_converter, pass_through_sandbox

from ._auth import AuthError
from ._authn import identify
from ._grant import Grant, GrantLookup
from ._grant_workflow import (
    APPROVED,
    MEMO_KEY,
    PENDING,
    PENDING_TIMEOUT,
    Decision,
    GrantRequest,
    GrantWorkflow,
    request_bytes,
    vouch_bytes,
)
from ._identity import Identity
from ._limits import TokenBuckets
from ._secrets import ServerSecret

if TYPE_CHECKING:
    from ._app import State
    from ._policy import GrantRules

log = logging.getLogger(__name__)

VOUCH_PURPOSE = "grant"
REQUEST_PURPOSE = "grant-request"
WORKFLOW_TYPE = "TemporalShieldGrant"
MAX_BODY = 8192
MAX_RECORDS = 10_000
"""Most running grant workflows a refresh reads; more, and the refresh fails
(every grant stops being honoured after ``stale_after``) rather than drop some."""
VISIBILITY_LAG = 60.0
"""Seconds a request this process started counts as open until a listing shows it
(Temporal's visibility store lists a new workflow only after a delay)."""
CONNECT_WAIT = 5.0
"""Seconds a grant call waits for the first connection to Temporal before 503."""
MAX_JUSTIFICATION = 1024
MAX_NAME = 256
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ID = re.compile(r"^grant-[0-9a-f]{32}$")


class GrantError(ShieldError):
    """A grant request or decision refused (HTTP ``status``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def parse_duration(value: object) -> float:
    """Seconds from a number or text like ``90``, ``30m``, ``1h``.

    Raises:
        GrantError: not a positive duration.
    """
    if isinstance(value, bool):
        raise GrantError(400, "bad_request", "duration must be seconds or like 1h")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION.match(value[:32])):
            seconds = float(match[1]) * _UNITS[match[2]]
        else:
            raise GrantError(400, "bad_request", "duration must be seconds or like 1h")
    except OverflowError:  # an integer too large for a float
        raise GrantError(400, "bad_request", "duration must be positive") from None
    if not (0 < seconds < 10**9):
        raise GrantError(400, "bad_request", "duration must be positive")
    return seconds


class Registry:
    """The approved grants every replica honours, refreshed from Temporal's visibility store."""

    def __init__(self, secret: ServerSecret, stale_after: float) -> None:
        """Create an empty registry (honours nothing until its first refresh)."""
        self._secret = secret
        self._stale_after = stale_after
        self._by_subject: dict[str, tuple[Grant, ...]] = {}
        self._fresh_at = -float("inf")
        self._stale_logged = False

    def find(
        self, identity: Identity, namespace: str, classification: str, now: float
    ) -> Grant | None:
        """A grant that lets ``identity`` decode ``classification`` in ``namespace``, if any."""
        if time.monotonic() - self._fresh_at > self._stale_after:
            if not self._stale_logged:
                self._stale_logged = True
                log.error("grant registry stale: honouring no grant until Temporal answers")
            return None
        for grant in self._by_subject.get(identity.subject, ()):
            if grant.covers(identity, namespace, classification, now):
                return grant
        return None

    def honoured(self, record: dict[str, Any], run_id: str, now: float) -> Grant | None:
        """The grant a memo record stands for, if approved, unexpired and vouched for.

        ``run_id`` is the run whose memo holds the record: the approval must
        have been given to that very run.
        """
        try:
            if record.get("state") != APPROVED or not float(record["expires_at"]) > now:
                return None
            if not run_id or record["run_id"] != run_id:
                return None
            if not self._secret.vouched(VOUCH_PURPOSE, vouch_bytes(record), str(record["tag"])):
                return None
            return Grant(
                id=str(record["id"]),
                subject=str(record["subject"]),
                namespace=str(record["namespace"]),
                classification=str(record["classification"]),
                expires_at=float(record["expires_at"]),
                justification=str(record["justification"]),
                approver=str(record["approver"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def replace(self, grants: list[Grant]) -> dict[str, Grant]:
        """Hold ``grants`` from now on; return the ones no longer held."""
        before = {g.id: g for gs in self._by_subject.values() for g in gs}
        by_subject: dict[str, list[Grant]] = {}
        for grant in grants:
            by_subject.setdefault(grant.subject, []).append(grant)
        self._by_subject = {s: tuple(gs) for s, gs in by_subject.items()}
        self._fresh_at = time.monotonic()
        self._stale_logged = False
        kept = {g.id for g in grants}
        return {i: g for i, g in before.items() if i not in kept}


class Grants:
    """The grant service of one codec server: Temporal client, worker, registry and API."""

    def __init__(self, state: State, rules: GrantRules, secret: ServerSecret) -> None:
        """Create it; connecting happens in the application's lifecycle."""
        self.state = state
        self.rules = rules
        self.secret = secret
        self.config = state.config.grants
        self.registry = Registry(secret, self.config.stale_after)
        # A request is a workflow that lives up to a day and that every replica
        # reads at each refresh: each person files only so many.
        self._requests = TokenBuckets(
            self.config.requests_per_hour / 60.0, max(1, int(self.config.requests_per_hour))
        )
        # Pending or approved grants per requester, as the last refresh read them.
        self.open_requests: collections.Counter[str] = collections.Counter()
        # Requests started here that a listing may not show yet: id -> (subject,
        # when started). A refresh counts them on top of what it lists.
        self._started: dict[str, tuple[str, float]] = {}
        self.client: Client | None = None
        self._connected = asyncio.Event()
        # Read now, so that bad connection settings fail the start (ConfigError).
        self.connect_kwargs = client_connect_config(
            state.shield, namespace=self.config.namespace, env=state.temporal_env
        )
        self.connect_kwargs["data_converter"] = data_converter(state.shield, codec=state.codec)

    # Lifecycle ------------------------------------------------------------

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """Connect, run the worker and the refresh loop for the application's life.

        Connecting happens in the background and is retried: the codec server
        starts (and serves role-based access) while Temporal is unreachable,
        honouring no grant until a refresh succeeds.
        """
        tasks = [asyncio.create_task(self._work()), asyncio.create_task(self._refresh_loop())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self) -> None:
        """Connect (retrying) and run the grant workflows' worker; restart it if it stops."""
        while True:
            try:
                if self.client is None:
                    self.client = await Client.connect(**self.connect_kwargs)
                    self._connected.set()
                worker = Worker(
                    self.client,
                    task_queue=self.config.task_queue,
                    workflows=[GrantWorkflow],
                    # The workflow module needs only temporalio; our package is
                    # passed through rather than re-imported in the sandbox.
                    workflow_runner=pass_through_sandbox(),
                )
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried; meanwhile grants fail closed
                log.error("grants: Temporal worker stopped (%s); retrying", type(exc).__name__)
            await asyncio.sleep(max(self.config.refresh_interval, 1.0))

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # stays stale; find() fails closed
                log.warning("grants: refresh failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.config.refresh_interval)

    async def records(self, query: str) -> list[tuple[dict[str, Any], str]]:
        """Grant records (and their run ids) of the workflows matching a visibility ``query``.

        Raises:
            GrantError: more than ``MAX_RECORDS`` matching workflows (503): a
                partial list would silently drop grants (visibility lists the
                newest first), so the caller fails instead.
        """
        client = await self._client()
        found: list[tuple[dict[str, Any], str]] = []
        seen = 0
        async for execution in client.list_workflows(
            f"WorkflowType='{WORKFLOW_TYPE}' AND TaskQueue='{self.config.task_queue}' AND {query}"
        ):
            seen += 1
            if seen > MAX_RECORDS:
                log.error(
                    "grants: more than %d running grant workflows; honouring none until "
                    "they are fewer (a flood of requests?)",
                    MAX_RECORDS,
                )
                raise GrantError(503, "grants_unavailable", "too many grant workflows to read")
            # One record we cannot read (another key, or garbage written by
            # someone else) must not hide every other grant: skip it alone.
            try:
                record = (await execution.memo()).get(MEMO_KEY)
            except Exception:
                log.warning("grants: unreadable grant record %s skipped", execution.id[:80])
                continue
            if isinstance(record, dict):
                found.append((record, execution.run_id))
        return found

    async def refresh(self) -> None:
        """Read every running grant once and hold the ones to honour."""
        if self.client is None:
            return
        now = time.time()
        records = await self.records("ExecutionStatus='Running'")
        open_requests = collections.Counter(
            str(r.get("subject")) for r, _ in records if r.get("state") in (PENDING, APPROVED)
        )
        listed = {r.get("id") for r, _ in records}
        horizon = time.monotonic() - VISIBILITY_LAG
        for grant_id, (subject, started) in list(self._started.items()):
            if grant_id in listed or started < horizon:
                del self._started[grant_id]
            else:
                # Started while the listing ran, or not visible yet: still open.
                open_requests[subject] += 1
        self.open_requests = open_requests
        grants = [
            g for r, run_id in records if (g := self.registry.honoured(r, run_id, now)) is not None
        ]
        for ended in self.registry.replace(grants).values():
            await self._audit_ended(ended)

    async def _audit_ended(self, grant: Grant) -> None:
        from ._app import _text, _utc_second

        if self.state.audit is None:
            return
        await self.state.audit.commit(
            {
                "time": _utc_second(int(time.time())),
                "operation": "grant.ended",
                "grant": grant.id,
                "namespace": _text(grant.namespace),
                "classification": _text(grant.classification),
                "requester": _text(grant.subject),
                "approver": _text(grant.approver),
                "justification": _text(grant.justification[:256]),
                "decision": "expired" if grant.expires_at <= time.time() else "ended",
                "status": 0,
            }
        )

    # API ------------------------------------------------------------------

    async def _audit(
        self,
        request: web.Request,
        operation: str,
        identity: Identity | None,
        record: dict[str, Any],
        decision: str,
        status: int,
        reason: str = "",
    ) -> None:
        from ._app import REQUEST_ID, _text, _utc_second

        if self.state.audit is None:
            return
        await self.state.audit.commit(
            {
                "time": _utc_second(int(time.time())),
                "request_id": request.get(REQUEST_ID, ""),
                "operation": operation,
                "subject": _text(identity.subject) if identity else "",
                "email": _text(identity.email) if identity else "",
                "auth": identity.auth_method if identity else "",
                "client": request.remote or "",
                "grant": _text(str(record.get("id", ""))),
                "namespace": _text(str(record.get("namespace", ""))),
                "classification": _text(str(record.get("classification", ""))),
                "requester": _text(str(record.get("subject", ""))),
                "approver": _text(str(record.get("approver", ""))),
                "justification": _text(str(record.get("justification", ""))[:256]),
                "decision": decision,
                "reason": _text(reason),
                "status": status,
            }
        )

    async def handle(self, request: web.Request, operation: str) -> web.StreamResponse:
        """Run one API call: authenticate, act, audit, answer JSON.

        Every outcome is audited: a refusal (4xx) as ``deny``, an unexpected
        failure as ``error`` (then mapped to a JSON 500 by the caller).
        """
        from ._app import _error

        identity: Identity | None = None
        record: dict[str, Any] = {"id": request.match_info.get("id", "")[:MAX_NAME]}
        try:
            identity = await identify(request, self.state)
            body = await self._body(request) if request.method == "POST" else {}
            status, answer, record = await self._act(operation, identity, body, record, request)
        except GrantError as exc:
            await self._audit(request, operation, identity, record, "deny", exc.status, str(exc))
            response = _error(exc.status, exc.code, str(exc), request)
            if exc.status == 429:
                response.headers["Retry-After"] = str(self._requests.retry_after())
            return response
        except AuthError as exc:
            reason = f"unauthenticated: {exc}"
            await self._audit(request, operation, None, record, "deny", 401, reason)
            return _error(401, "unauthorized", str(exc), request)  # as on every route
        except Exception as exc:
            await self._audit(
                request, operation, identity, record, "error", 500, type(exc).__name__
            )
            raise
        if operation != "grant.list":
            await self._audit(request, operation, identity, record, "allow", status)
        return web.json_response(answer, status=status)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise GrantError(413, "too_large", f"body over {MAX_BODY} bytes")
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise GrantError(413, "too_large", f"body over {MAX_BODY} bytes")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise GrantError(400, "bad_request", "body must be a JSON object") from None
        if not isinstance(body, dict):
            raise GrantError(400, "bad_request", "body must be a JSON object")
        return body

    async def _act(
        self,
        operation: str,
        identity: Identity,
        body: dict[str, Any],
        record: dict[str, Any],
        request: web.Request,
    ) -> tuple[int, Any, dict[str, Any]]:
        if operation == "grant.list":
            return 200, {"grants": await self._list(identity, "all" in request.query)}, record
        if operation == "grant.request":
            record = self._validate_request(identity, body)
            if self.open_requests[identity.subject] >= self.config.max_open_requests:
                raise GrantError(
                    429,
                    "rate_limited",
                    f"at most {self.config.max_open_requests} pending or approved grants at once",
                )
            if not self._requests.take(identity.subject):
                raise GrantError(
                    429,
                    "rate_limited",
                    f"at most {self.config.requests_per_hour:g} grant requests per hour",
                )
            # Counted from now on: by this counter until the next refresh, and
            # by _started until a listing shows it (or VISIBILITY_LAG passes).
            self.open_requests[identity.subject] += 1
            self._started[record["id"]] = (identity.subject, time.monotonic())
            try:
                await self._start(identity, record)
            except BaseException:
                # Nothing was filed: neither open, nor one of the hour's requests.
                self._started.pop(record["id"], None)
                self.open_requests[identity.subject] -= 1
                self._requests.give_back(identity.subject)
                raise
            return 201, {"id": record["id"], "state": PENDING}, record
        grant_id = record["id"]
        if not _ID.match(grant_id):
            raise GrantError(404, "not_found", "no such grant")
        record, run_id = await self._current(grant_id)
        reason = _field(body, "reason", required=operation == "grant.deny")
        if operation in ("grant.approve", "grant.deny"):
            if not self.rules.may_approve(identity):
                raise GrantError(403, "forbidden", "you may not approve grants")
            if identity.subject == record.get("subject"):
                raise GrantError(
                    409, "self_approval", "four eyes: you may not decide your own request"
                )
        elif not (identity.subject == record.get("subject") or self.rules.may_approve(identity)):
            raise GrantError(403, "forbidden", "only the requester or an approver may revoke")
        decision = Decision(actor=identity.subject, actor_email=identity.email, reason=reason)
        if operation == "grant.approve":
            self._check_approvable(grant_id, run_id, record)
            expires_at = round(time.time() + float(record["duration"]), 3)
            signed = {
                **record,
                "run_id": run_id,
                "approver": identity.subject,
                "expires_at": expires_at,
            }
            tag = self.secret.vouch(VOUCH_PURPOSE, vouch_bytes(signed))
            decision = Decision(
                actor=identity.subject,
                actor_email=identity.email,
                reason=reason,
                expires_at=expires_at,
                tag=tag,
                run_id=run_id,
            )
        update = operation.removeprefix("grant.")
        record = await self._update(grant_id, run_id, update, decision)
        if update in ("deny", "revoke"):
            # Ended here: no longer open, whatever a listing shows (one that ends
            # elsewhere before any listing shows it counts until VISIBILITY_LAG).
            self._started.pop(grant_id, None)
        return 200, _public(record), record

    def _check_approvable(self, grant_id: str, run_id: str, record: dict[str, Any]) -> None:
        """Approve only what a codec server accepted as a request, and the policy still allows.

        Raises:
            GrantError: 409 for a request no codec server vouched for in this
                run (started straight in Temporal, or re-presented as another
                run) or one older than the pending timeout;
                403 when the policy no longer allows it.
        """
        try:
            genuine = record["id"] == grant_id and self.secret.vouched(
                REQUEST_PURPOSE, request_bytes(record, run_id), str(record["request_tag"])
            )
            age = time.time() - float(record["requested_at"])
            duration = float(record["duration"])
            namespace, classification = str(record["namespace"]), str(record["classification"])
        except (KeyError, TypeError, ValueError):
            genuine = False
        if not genuine:
            raise GrantError(409, "not_vouched", "this request was not made through a codec server")
        if age > PENDING_TIMEOUT:
            raise GrantError(409, "conflict", "the request is older than the pending timeout")
        if not self.rules.requestable(namespace, classification) or not (
            0 < duration <= self.rules.max_duration
        ):
            raise GrantError(403, "forbidden", "the policy no longer allows this request")

    def _validate_request(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        namespace = _field(body, "namespace", required=True, limit=MAX_NAME)
        classification = _field(body, "classification", required=True, limit=MAX_NAME)
        justification = _field(body, "justification", required=True, limit=MAX_JUSTIFICATION)
        if "duration" not in body:
            raise GrantError(400, "bad_request", "duration is required")
        duration = parse_duration(body["duration"])
        # Names, not patterns: a grant covers what it names, and a pattern
        # that the policy's patterns happen to match could cover much more.
        if any(c in namespace for c in "*?[") or (
            classification != "*" and any(c in classification for c in "*?[")
        ):
            raise GrantError(
                400,
                "bad_request",
                "namespace and classification are names, not patterns (classification may be *)",
            )
        if not self.rules.may_request(identity):
            raise GrantError(403, "forbidden", "you may not request grants")
        if not self.rules.requestable(namespace, classification):
            raise GrantError(
                403, "forbidden", "no grant may be requested for this namespace and classification"
            )
        if duration > self.rules.max_duration:
            raise GrantError(
                400, "bad_request", f"duration over the cap of {self.rules.max_duration:g} s"
            )
        record: dict[str, Any] = {
            "id": "grant-" + secrets.token_hex(16),
            "subject": identity.subject,
            "email": identity.email,
            "groups": sorted(identity.groups),
            "namespace": namespace,
            "classification": classification,
            "duration": duration,
            "justification": justification,
            "requested_at": round(time.time(), 3),
        }
        return record

    async def _client(self) -> Client:
        """The Temporal client; a call just after start waits a moment for it."""
        if self.client is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT)
        if self.client is None:
            raise GrantError(503, "grants_unavailable", "Temporal is not reachable")
        return self.client

    async def _start(self, identity: Identity, record: dict[str, Any]) -> None:
        """Start the request's workflow, then vouch for it, bound to the run just started."""
        client = await self._client()
        try:
            handle = await client.start_workflow(
                GrantWorkflow.run,
                GrantRequest(**record),
                id=record["id"],
                task_queue=self.config.task_queue,
            )
            run_id = handle.result_run_id or ""
            tag = self.secret.vouch(REQUEST_PURPOSE, request_bytes(record, run_id))
            await client.get_workflow_handle(record["id"], run_id=run_id).execute_update(
                GrantWorkflow.vouch_request, tag
            )
        except (
            RPCError,
            WorkflowUpdateFailedError,
            WorkflowUpdateRPCTimeoutOrCancelledError,
        ) as exc:
            raise GrantError(503, "grants_unavailable", "Temporal refused the request") from exc

    async def _current(self, grant_id: str) -> tuple[dict[str, Any], str]:
        """The grant's record and the run it is read from (the latest run).

        Raises:
            GrantError: 404 for an unknown id, 409 for a finished grant, 503
                when Temporal or the grant worker does not answer (never a
                "no such grant" for a grant that may well exist).
        """
        client = await self._client()
        try:
            description = await client.get_workflow_handle(grant_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise GrantError(404, "not_found", "no such grant") from exc
            raise GrantError(503, "grants_unavailable", "Temporal did not answer") from exc
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise GrantError(409, "conflict", "grant is finished")
        run_id = description.run_id
        try:
            handle = client.get_workflow_handle(grant_id, run_id=run_id)
            record = await handle.query(GrantWorkflow.record)
        except Exception as exc:  # a busy or absent worker, a timeout
            raise GrantError(
                503, "grants_unavailable", "the grant could not be read now; try again"
            ) from exc
        if not isinstance(record, dict) or not run_id:
            raise GrantError(503, "grants_unavailable", "the grant could not be read now")
        return record, run_id

    async def _update(
        self, grant_id: str, run_id: str, update: str, decision: Decision
    ) -> dict[str, Any]:
        # To the run that was read: never a newer one started in between.
        handle = (await self._client()).get_workflow_handle(grant_id, run_id=run_id)
        try:
            record: dict[str, Any] = await handle.execute_update(update, decision, result_type=dict)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            raise GrantError(409, "conflict", str(getattr(cause, "message", cause))) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise GrantError(503, "grants_unavailable", "the grant did not answer in time") from exc
        except RPCError as exc:
            raise GrantError(409, "conflict", "grant is finished or unknown") from exc
        return record

    async def _list(self, identity: Identity, everything: bool) -> list[dict[str, Any]]:
        approver = self.rules.may_approve(identity)
        if everything and not approver:
            raise GrantError(403, "forbidden", "only approvers may list every grant")
        try:
            records = await self.records("ExecutionStatus='Running'")
        except RPCError as exc:
            raise GrantError(503, "grants_unavailable", "Temporal is not reachable") from exc
        now = time.time()
        mine = [
            # Whether replicas honour it: an "approved" record someone wrote
            # straight into Temporal shows as approved but not honoured.
            {**_public(r), "honoured": self.registry.honoured(r, run_id, now) is not None}
            for r, run_id in records
            if r.get("subject") == identity.subject
            or everything
            or (approver and r.get("state") == PENDING)
        ]
        return sorted(mine, key=_requested_at)


def _requested_at(record: dict[str, Any]) -> float:
    """A sort key that a record someone else wrote cannot break."""
    value = record.get("requested_at")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its tags (they are the codec servers' business)."""
    return {k: v for k, v in record.items() if k not in ("tag", "request_tag")}


def _field(
    body: dict[str, Any], name: str, *, required: bool, limit: int = MAX_JUSTIFICATION
) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise GrantError(400, "bad_request", f"{name} must be text")
    value = value.strip()
    if required and not value:
        raise GrantError(400, "bad_request", f"{name} is required")
    if len(value) > limit:
        raise GrantError(400, "bad_request", f"{name} is longer than {limit} characters")
    if not value.isprintable():
        raise GrantError(400, "bad_request", f"{name} must be printable text")
    return value


def install(app: web.Application, state: State) -> GrantLookup | None:
    """Add the grant API routes and the grant registry when grants are enabled.

    Raises:
        ConfigError: grants enabled without a server secret or a policy ``grants`` section.
    """
    config = state.config.grants
    if not config.enabled:
        return None
    policy = state.service.policy
    if policy is None or policy.grants is None:
        raise ConfigError("server.grants needs a policy with a grants: section")
    if not state.config.secret_file:
        raise ConfigError("server.grants needs server.secret_file")
    grants = Grants(state, policy.grants, ServerSecret.load(state.config.secret_file))
    app.cleanup_ctx.append(grants.lifecycle)

    from ._app import _edge  # the request id, CORS and JSON errors of every other route

    def route(operation: str) -> Any:
        async def handler(request: web.Request, state: State) -> web.StreamResponse:
            return await grants.handle(request, operation)

        return _edge(handler, state)

    app.router.add_get("/grants", route("grant.list"))
    app.router.add_post("/grants", route("grant.request"))
    for step in ("approve", "deny", "revoke"):
        app.router.add_post(f"/grants/{{id}}/{step}", route(f"grant.{step}"))
    app[GRANTS] = grants
    return grants.registry


GRANTS: web.AppKey[Grants] = web.AppKey("temporal_shield_grants", Grants)
