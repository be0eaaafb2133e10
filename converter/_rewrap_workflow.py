"""``keys rewrap`` as a workflow on the user's own Temporal cluster.

The same fan-out as the distributed scan (:mod:`._scan_workflow`): a list
activity walks ``ListObjectsV2`` a few pages ahead and returns each page as its
key range (after one key, up to and including another), and one page activity
per range runs :func:`rewrap` over exactly that range on any scan worker. A page
activity heartbeats its partial :class:`RewrapReport` (whose ``last_key`` is
where to resume), so a retry after a worker dies continues after the last object
it finished; rewrapping is idempotent, so an object redone after a crash between
its PUT and the heartbeat is counted once more as ``current``, never damaged.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporal_shield.codec import Envelope

    from ._rewrap import RewrapReport, rewrap
    from ._scan_workflow import (
        PROGRESS_QUERY,
        DistributedScanOptions,
        ListPagesResult,
        ScanCheckpoint,
        _FanOut,
        _Page,
    )

REWRAP_WORKFLOW = "TemporalShieldRewrap"
"""The rewrap workflow's type name."""
REWRAP_LIST_ACTIVITY = "TemporalShieldRewrapListPages"
REWRAP_ACTIVITY = "TemporalShieldRewrapPage"


@dataclass
class RewrapInput:
    """The rewrap workflow's argument."""

    bucket: str
    prefix: str
    dry_run: bool
    options: DistributedScanOptions
    """Paging and pacing (``page_size`` objects per page; ``query`` is unused)."""
    checkpoint: ScanCheckpoint | None = None


@dataclass
class RewrapListInput:
    """Argument of the rewrap list activity."""

    bucket: str
    prefix: str
    page_size: int
    cursor: str
    """The key to list after (``""``: from the first)."""
    pages: int


@dataclass
class RewrapPageInput:
    """Argument of the rewrap page activity."""

    bucket: str
    prefix: str
    dry_run: bool
    token: str
    """JSON ``[after, up_to]``: the page's key range."""


class RewrapActivities:
    """The rewrap's activities: an S3 client and the envelope with the keys."""

    def __init__(self, s3: Any, envelope: Envelope) -> None:
        """Rewrap objects through ``s3`` with ``envelope`` (its primary KEK writes)."""
        self._s3 = s3
        self._envelope = envelope

    @activity.defn(name=REWRAP_LIST_ACTIVITY)
    async def list_pages(self, request: RewrapListInput) -> ListPagesResult:
        """Up to ``request.pages`` key ranges of ``page_size`` objects from ``cursor`` on."""
        tokens: list[str] = []
        cursor: str | None = request.cursor
        while cursor is not None and len(tokens) < request.pages:
            page = await asyncio.to_thread(
                self._s3.list_objects_v2,
                Bucket=request.bucket,
                Prefix=request.prefix,
                StartAfter=cursor,
                MaxKeys=request.page_size,
            )
            keys = [item["Key"] for item in page.get("Contents", [])]
            if not keys:
                cursor = None
                break
            tokens.append(json.dumps([cursor, keys[-1]]))
            cursor = keys[-1] if page.get("IsTruncated") else None
            activity.heartbeat()
        return ListPagesResult(tokens=tokens, cursor=cursor)

    @activity.defn(name=REWRAP_ACTIVITY)
    async def rewrap_page(self, request: RewrapPageInput) -> dict[str, Any]:
        """Rewrap one key range; resumes after the last key a previous attempt heartbeated."""
        after, up_to = json.loads(request.token)
        done = RewrapReport()
        details = activity.info().heartbeat_details
        if details:
            done = RewrapReport.from_json(details[0])
            after = done.last_key or after
        last_beat = 0.0

        def beat(partial: RewrapReport) -> None:
            nonlocal last_beat
            if time.monotonic() - last_beat >= 1.0:
                last_beat = time.monotonic()
                so_far = RewrapReport.from_json(done.as_json())
                so_far.merge(partial)
                activity.heartbeat(so_far.as_json())

        rest = await rewrap(
            self._s3,
            request.bucket,
            self._envelope,
            prefix=request.prefix,
            start_after=after,
            until_key=up_to,
            dry_run=request.dry_run,
            progress=beat,
        )
        done.merge(rest)
        return done.as_json()


@workflow.defn(name=REWRAP_WORKFLOW)
class RewrapWorkflow(_FanOut):
    """Fan ``keys rewrap`` out over S3 key ranges; returns the aggregate report as JSON."""

    def __init__(self) -> None:
        """Empty until :meth:`run` starts."""
        super().__init__()
        self._report: RewrapReport | None = None

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> dict[str, Any]:
        """Pages and objects folded so far, pages in flight, whether listing is done."""
        answer = self._progress()
        if self._report is not None:
            answer.update(objects=self._report.scanned, rewrapped=self._report.rewrapped)
        return answer

    @workflow.run
    async def run(self, request: RewrapInput) -> dict[str, Any]:
        """Rewrap every object under the prefix (see the module docstring)."""
        options = request.options
        state = request.checkpoint or ScanCheckpoint(report=RewrapReport().as_json(), until="")
        report = self._report = RewrapReport.from_json(state.report)
        kind = _Page(
            list_activity=REWRAP_LIST_ACTIVITY,
            page_activity=REWRAP_ACTIVITY,
            list_input=lambda cursor, pages: RewrapListInput(
                request.bucket, request.prefix, options.page_size, cursor, pages
            ),
            page_input=lambda token: RewrapPageInput(
                request.bucket, request.prefix, request.dry_run, token
            ),
            fold=lambda page: report.merge(RewrapReport.from_json(page)),
            snapshot=report.as_json,
            next_run=lambda: RewrapInput(
                request.bucket, request.prefix, request.dry_run, options, state
            ),
        )
        return await self._fan_out(options, state, kind)
