"""``scan`` as a workflow on the user's own Temporal cluster.

One workflow run walks the namespace's visibility pages: a *list* activity
collects page tokens a few pages ahead of the work, and one *scan* activity per
page (on any number of scan workers) lists that page again from its token and
reads each run's raw history with bounded concurrency. Each page's result is a
:class:`ScanReport` in JSON form (counts only, never payload contents); the
workflow folds them **in page order**, so the aggregate — example workflow ids
included — is the one a sequential :func:`scan` of the same runs produces.

Failure and resume:

* A scan activity heartbeats how many of its page's runs it has folded and the
  partial report; a retry (after a worker dies, once the heartbeat timeout
  passes) resumes after that prefix instead of rescanning the page.
* The workflow's state (aggregate, listing cursor, listed page tokens) is the
  checkpoint: a workflow task lost with a worker is replayed elsewhere.
* Every ``pages_per_run`` pages (or when the server suggests it), the workflow
  stops launching pages, waits for those in flight, and continues as new with
  the aggregate and the cursor, so its own history stays bounded.

The runs scanned are bounded by the first run's start time (``StartTime <``), so
runs started after the scan — the scan workflow itself included — are not part
of it, and the first page does not shift while the scan works.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client, WorkflowExecution
    from temporalio.service import RPCError, RPCStatusCode
    from temporalio.worker import Worker

    from ._install import pass_through_sandbox
    from ._scan import ScanReport, scan_in_order

if TYPE_CHECKING:
    from ._rewrap_workflow import RewrapActivities

SCAN_WORKFLOW = "TemporalShieldScan"
"""The scan workflow's type name."""
LIST_ACTIVITY = "TemporalShieldScanListPages"
SCAN_ACTIVITY = "TemporalShieldScanPage"
PROGRESS_QUERY = "progress"
"""The query answering :meth:`ScanWorkflow.progress`."""

# Visibility errors a retry cannot fix: a malformed query, an unknown namespace.
_PERMANENT = (
    RPCStatusCode.INVALID_ARGUMENT,
    RPCStatusCode.NOT_FOUND,
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.UNIMPLEMENTED,
)


@dataclass(frozen=True, kw_only=True)
class DistributedScanOptions:
    """How a distributed scan divides and paces its work."""

    query: str = ""
    """Visibility query selecting workflow runs (empty: every run)."""
    page_size: int = 100
    """Runs per visibility page, and so per scan activity."""
    pages_in_flight: int = 4
    """Scan activities running at once (across all scan workers)."""
    run_concurrency: int = 8
    """Histories one scan activity reads at once."""
    pages_per_run: int = 200
    """Pages folded before the workflow continues as new (bounds its history)."""
    heartbeat_timeout_seconds: float = 30.0
    """A scan activity not heard from for this long is retried elsewhere."""
    maximum_attempts: int = 0
    """Attempts per activity before the scan fails (0: unlimited)."""

    def __post_init__(self) -> None:
        for name in ("page_size", "pages_in_flight", "run_concurrency", "pages_per_run"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.heartbeat_timeout_seconds <= 0:
            raise ValueError("heartbeat_timeout_seconds must be positive")
        if self.maximum_attempts < 0:
            raise ValueError("maximum_attempts must be 0 (unlimited) or more")


@dataclass
class ScanCheckpoint:
    """What one workflow run hands to the next (continue-as-new)."""

    report: dict[str, Any]
    """The aggregate so far (:meth:`ScanReport.as_json` form)."""
    until: str
    """Runs started before this RFC 3339 time are scanned."""
    cursor: str | None = ""
    """Base64 visibility token to list next; ``""`` the first page, ``None`` done."""
    pending: list[str] = field(default_factory=list)
    """Listed page tokens not scanned yet, in listing order."""
    pages: int = 0
    """Pages folded into ``report``."""
    continued: int = 0
    """Times the workflow continued as new."""


@dataclass
class ScanInput:
    """The scan workflow's argument."""

    options: DistributedScanOptions
    checkpoint: ScanCheckpoint | None = None


@dataclass
class ListPagesInput:
    """Argument of the list activity."""

    query: str
    page_size: int
    cursor: str
    pages: int


@dataclass
class ListPagesResult:
    """Result of the list activity."""

    tokens: list[str]
    """Tokens of non-empty pages, in order."""
    cursor: str | None
    """Where to list next (``None``: nothing left)."""


@dataclass
class ScanPageInput:
    """Argument of the scan activity."""

    query: str
    page_size: int
    token: str
    concurrency: int


@contextlib.contextmanager
def _permanent_errors(what: str) -> Iterator[None]:
    """Errors a retry cannot fix end the scan (non-retryable); others are retried."""
    try:
        yield
    except RPCError as exc:
        if exc.status in _PERMANENT:
            raise ApplicationError(
                f"{what}: {exc.message}", type="ScanError", non_retryable=True
            ) from None
        raise


def _bounded_query(query: str, until: str) -> str:
    bound = f'StartTime < "{until}"'
    return f"({query}) AND {bound}" if query else bound


def _token(text: str) -> bytes | None:
    return base64.b64decode(text) or None


class ScanActivities:
    """The scan's activities, reading histories through a client without codec.

    The history API hands back events as stored, whatever the client's
    converter; a client with no codec makes that a guarantee rather than an
    SDK detail: the scan workers judge the bytes at rest and never need (or
    use) a key to do it.
    """

    def __init__(self, raw_client: Client) -> None:
        """Use ``raw_client`` (no payload codec) to list runs and read histories.

        Raises:
            ValueError: the client has a payload codec.
        """
        if raw_client.data_converter.payload_codec is not None:
            raise ValueError("the scan reads raw histories: use a client without a payload codec")
        self._client = raw_client

    async def _page(self, query: str, page_size: int, token: bytes | None) -> Any:
        pages = self._client.list_workflows(query, page_size=page_size, next_page_token=token)
        with _permanent_errors("visibility refused the scan"):
            await pages.fetch_next_page()
        return pages

    @activity.defn(name=LIST_ACTIVITY)
    async def list_pages(self, request: ListPagesInput) -> ListPagesResult:
        """Collect up to ``request.pages`` page tokens from ``request.cursor`` on."""
        tokens: list[str] = []
        cursor: str | None = request.cursor
        while cursor is not None and len(tokens) < request.pages:
            pages = await self._page(request.query, request.page_size, _token(cursor))
            if pages.current_page:
                tokens.append(cursor)
            following = pages.next_page_token
            cursor = base64.b64encode(following).decode() if following else None
            activity.heartbeat()
        return ListPagesResult(tokens=tokens, cursor=cursor)

    @activity.defn(name=SCAN_ACTIVITY)
    async def scan_page(self, request: ScanPageInput) -> dict[str, Any]:
        """Scan one page's runs; resumes after the prefix a previous attempt heartbeated."""
        done = 0
        report = ScanReport(namespace=self._client.namespace)
        details = activity.info().heartbeat_details
        if details:
            done = int(details[0]["done"])
            report = ScanReport.from_json(details[0]["report"])
        pages = await self._page(request.query, request.page_size, _token(request.token))
        runs: list[WorkflowExecution] = list(pages.current_page or [])[done:]
        last_beat = 0.0

        def fold(one: ScanReport) -> None:
            nonlocal done, last_beat
            report.merge(one)
            done += 1
            # Only a folded prefix is ever heartbeated, so a retry that skips
            # `done` runs folds the rest in the same order.
            if time.monotonic() - last_beat >= 1.0:
                last_beat = time.monotonic()
                activity.heartbeat({"done": done, "report": report.as_json()})

        # A run listed but gone when read (retention, a reset) fails the scan, as it
        # fails the local scan: retrying would only repeat it.
        with _permanent_errors("reading a history failed"):
            await scan_in_order(self._client, runs, request.concurrency, fold)
        return report.as_json()


@dataclass(frozen=True, kw_only=True)
class _Page:
    """What the fan-out loop needs from one kind of paged work (scan, rewrap)."""

    list_activity: str
    page_activity: str
    list_input: Callable[[str, int], Any]
    """``(cursor, pages)`` -> the list activity's argument."""
    page_input: Callable[[str], Any]
    """``token`` -> the page activity's argument."""
    fold: Callable[[dict[str, Any]], None]
    """Adds one page's JSON report to the aggregate (called in page order)."""
    snapshot: Callable[[], dict[str, Any]]
    """The aggregate as JSON."""
    next_run: Callable[[], Any]
    """The argument of the run that continues this one (the checkpoint in it)."""


class _FanOut:
    """The paged fan-out loop shared by the scan and rewrap workflows.

    A list activity fetches page tokens ahead of the work, up to
    ``pages_in_flight`` page activities run at once, page results are folded in
    page order, and after ``pages_per_run`` pages (or when the server suggests
    it) the run drains and continues as new with the checkpoint.
    """

    def __init__(self) -> None:
        """Nothing in flight."""
        self._checkpoint: ScanCheckpoint | None = None
        self._in_flight = 0
        self._finished: dict[int, dict[str, Any]] = {}
        self._completed = 0
        self._failure: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _progress(self) -> dict[str, Any]:
        state = self._checkpoint
        if state is None:
            return {"started": False}
        return {
            "started": True,
            "pages": state.pages,
            "pages_in_flight": self._in_flight,
            "pages_listed_ahead": len(state.pending),
            "listing_done": state.cursor is None,
            "continued": state.continued,
        }

    async def _fan_out(
        self, options: DistributedScanOptions, state: ScanCheckpoint, kind: _Page
    ) -> dict[str, Any]:
        self._checkpoint = state
        retry = RetryPolicy(
            maximum_interval=timedelta(seconds=30), maximum_attempts=options.maximum_attempts
        )
        heartbeat = timedelta(seconds=options.heartbeat_timeout_seconds)
        launched = folded = 0
        while True:
            if self._failure is not None:
                raise self._failure  # a page that exhausted its retries fails the run
            while folded in self._finished:
                kind.fold(self._finished.pop(folded))
                folded += 1
                state.pages += 1
            stop = (
                launched >= options.pages_per_run or workflow.info().is_continue_as_new_suggested()
            )
            if (
                not stop
                and state.cursor is not None
                and len(state.pending) < options.pages_in_flight
            ):
                listed = await workflow.execute_activity(
                    kind.list_activity,
                    kind.list_input(state.cursor, 2 * options.pages_in_flight),
                    result_type=ListPagesResult,
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=heartbeat,
                    retry_policy=retry,
                )
                state.pending += listed.tokens
                state.cursor = listed.cursor
                continue
            while not stop and state.pending and self._in_flight < options.pages_in_flight:
                page = kind.page_input(state.pending.pop(0))
                self._in_flight += 1  # now: the task first runs at the next await
                task = asyncio.create_task(
                    self._page(kind.page_activity, launched, page, heartbeat, retry)
                )
                self._tasks.add(task)  # held until done: the loop keeps weak references
                task.add_done_callback(self._tasks.discard)
                launched += 1
                stop = launched >= options.pages_per_run
            if self._in_flight == 0:
                if not state.pending and state.cursor is None:
                    state.report = kind.snapshot()
                    return state.report
                if stop:
                    state.report = kind.snapshot()
                    state.continued += 1
                    workflow.continue_as_new(kind.next_run())
            await workflow.wait_condition(functools.partial(self._completed_since, self._completed))

    def _completed_since(self, seen: int) -> bool:
        return self._completed != seen

    async def _page(
        self, name: str, index: int, page: Any, heartbeat: timedelta, retry: RetryPolicy
    ) -> None:
        try:
            self._finished[index] = await workflow.execute_activity(
                name,
                page,
                result_type=dict,
                # A page of slow items may take long; liveness comes from heartbeats.
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=heartbeat,
                retry_policy=retry,
            )
        except ActivityError as exc:
            self._failure = exc
        finally:
            self._in_flight -= 1
            self._completed += 1


@workflow.defn(name=SCAN_WORKFLOW)
class ScanWorkflow(_FanOut):
    """Fan a scan out over visibility pages; returns the aggregate report as JSON."""

    def __init__(self) -> None:
        """Empty until :meth:`run` starts."""
        super().__init__()
        self._report: ScanReport | None = None

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> dict[str, Any]:
        """Pages and runs folded so far, pages in flight, whether listing is done."""
        answer = self._progress()
        if self._report is not None:
            answer.update(workflows=self._report.workflows, payloads=self._report.payloads)
        return answer

    @workflow.run
    async def run(self, request: ScanInput) -> dict[str, Any]:
        """Scan every run the options' query selects (see the module docstring)."""
        options = request.options
        state = request.checkpoint or ScanCheckpoint(
            report=ScanReport(namespace=workflow.info().namespace).as_json(),
            until=workflow.info().start_time.isoformat(),
        )
        report = self._report = ScanReport.from_json(state.report)
        query = _bounded_query(options.query, state.until)
        kind = _Page(
            list_activity=LIST_ACTIVITY,
            page_activity=SCAN_ACTIVITY,
            list_input=lambda cursor, pages: ListPagesInput(
                query, options.page_size, cursor, pages
            ),
            page_input=lambda token: ScanPageInput(
                query, options.page_size, token, options.run_concurrency
            ),
            fold=lambda page: report.merge(ScanReport.from_json(page)),
            snapshot=report.as_json,
            next_run=lambda: ScanInput(options, state),
        )
        return await self._fan_out(options, state, kind)


def scan_worker(
    client: Client,
    *,
    task_queue: str,
    max_concurrent_activities: int = 4,
    rewrap: RewrapActivities | None = None,
) -> Worker:
    """A worker running the scan workflow and its activities on ``task_queue``.

    Args:
        client: The user's normal client (its converter carries the workflow's
            own payloads: options, checkpoints, reports). The activities read
            histories through a codec-less client on the same connection.
        task_queue: The queue ``scan --distributed`` starts the workflow on.
        max_concurrent_activities: Page activities this worker runs at once.
        rewrap: Also run the rewrap workflow and these activities (S3 and keys).
    """
    from ._rewrap_workflow import RewrapWorkflow

    raw = Client(client.service_client, namespace=client.namespace)
    scan = ScanActivities(raw)
    workflows: list[type] = [ScanWorkflow]
    activities: list[Callable[..., Any]] = [scan.list_pages, scan.scan_page]
    if rewrap is not None:
        workflows.append(RewrapWorkflow)
        activities += [rewrap.list_pages, rewrap.rewrap_page]
    # The workflow's module lives in a package the sandbox would re-import
    # (with the codec and boto3 behind it): pass the package through instead.
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=activities,
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=pass_through_sandbox(),
    )
