"""The scheduled synchronization: BC's job queue entries, spread over instances.

The timer starts a *run*: it stores the run's dependency graph (``coupling.runs``) and enqueues one message per
mapping whose dependencies are satisfied (SALESPEOPLE, CURRENCY, PAYMENT TERMS, ... first). Each message is
handled by a queue-triggered invocation - on whichever instance the Functions host scales out to - which takes
the mapping's lease (no two runs of one mapping ever overlap), runs its To pass then its From pass, releases the
lease and enqueues the mappings that just became ready. A message whose invocation dies is delivered again by the
queue; the run resumes from the stored watermarks and loses nothing.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import cron, errors
from .engine import PassResult, run_mapping
from .mappings import TableMapping

log = logging.getLogger(__name__)

LEASE_DURATION = timedelta(minutes=5)
LEASE_RENEW_EVERY = 60.0  # seconds; well inside the lease duration


def scheduled_mappings(mappings: dict[str, TableMapping]) -> dict[str, TableMapping]:
    """The mappings a scheduled run synchronizes: all of them, option mappings included (``sync.option_sync``);
    the dependency order runs PAYMENT TERMS / SHIPMENT METHOD before CUSTOMER / VENDOR."""
    return dict(mappings)


def dependency_graph(mappings: dict[str, TableMapping]) -> dict[str, list[str]]:
    """mapping -> its dependencies that are part of the run (others count as satisfied)."""
    return {n: [d for d in m.dependencies if d in mappings] for n, m in mappings.items()}


SCHEDULER_MARK = "~scheduler"
"""Watermark row of the timer itself: the last moment it checked the schedule (so no slot fires twice)."""


async def tick(rt: Any, now: datetime) -> tuple[str | None, list[str]]:
    """One timer tick: when ``SYNC_SCHEDULE`` fired since the previous tick, start a run.
    Returns ``(run id or None, queue messages)``."""
    schedule = cron.parse(rt.settings.sync_schedule)
    marks = await rt.watermarks.get(SCHEDULER_MARK)
    last = marks.bc or now - timedelta(minutes=1)
    fired = cron.due(schedule, last, now)
    await rt.watermarks.advance(SCHEDULER_MARK, bc=now)
    if fired is None:
        return None, []
    return await start_run(rt)


def message(run_id: str, mapping: str) -> str:
    import json

    return json.dumps({"kind": "mapping", "runId": run_id, "mapping": mapping})


async def start_run(rt: Any) -> tuple[str, list[str]]:
    """Store a new run and return ``(run id, queue messages)`` for the mappings that can start at once."""
    mappings = scheduled_mappings(await rt.mappings())
    run_id = uuid.uuid4().hex
    ready = await rt.runs.create(run_id, dependency_graph(mappings))
    return run_id, [message(run_id, name) for name in ready]


@dataclass
class MappingRunResult:
    mapping: str
    outcome: str  # "finished" | "failed" | "already running"
    passes: list[PassResult]
    message: str | None = None


async def run_scheduled_mapping(rt: Any, run_id: str, name: str, owner: str) -> tuple[MappingRunResult, list[str]]:
    """Run one mapping of a scheduled run under its lease; returns the result and the messages of the mappings
    that became ready."""
    mappings = await rt.mappings()
    mapping = mappings.get(name)
    lease = await rt.leases.acquire(f"mapping-{name}", owner, LEASE_DURATION)
    if lease is None:
        result = MappingRunResult(name, "already running", [], f"Another run of {name} is in progress; skipped.")
        log.info(result.message)
    else:
        held = [lease]  # the renewer replaces it: the release needs the latest etag
        renewer = asyncio.create_task(_keep_lease(rt, held))
        try:
            if mapping is None:
                result = MappingRunResult(name, "failed", [], f"Unknown table mapping {name}.")
            else:
                passes = await run_mapping(rt, mapping)
                result = MappingRunResult(name, "finished", passes)
        except errors.SyncError as exc:
            log.warning("scheduled run of %s failed: %s", name, exc.message)
            result = MappingRunResult(name, "failed", [], exc.message)
        finally:
            renewer.cancel()
            await rt.leases.release(held[0])
    ready = await rt.runs.complete(run_id, name, outcome=result.outcome)
    return result, [message(run_id, n) for n in ready]


async def _keep_lease(rt: Any, held: list) -> None:
    try:
        while True:
            await asyncio.sleep(LEASE_RENEW_EVERY)
            held[0] = await rt.leases.renew(held[0], LEASE_DURATION)
    except asyncio.CancelledError:
        pass
    except errors.SyncError as exc:  # lost it: the pass goes on; its writes are safe to repeat
        log.warning("lease %s lost: %s", held[0].name, exc.message)


async def run_inline(rt: Any, owner: str = "inline") -> dict[str, dict]:
    """A whole scheduled run in this process, mapping after mapping in dependency order - what the timer and the
    queue workers do across instances (the sandbox and the benchmarks use it). Returns
    ``{"<mapping> <direction>": counters}``."""
    import json

    run_id, pending = await start_run(rt)
    counters: dict[str, dict] = {}
    while pending:
        work = json.loads(pending.pop(0))
        result, ready = await run_scheduled_mapping(rt, run_id, work["mapping"], owner=owner)
        for p in result.passes:
            counters[f"{result.mapping} {p.job.direction}"] = p.counters.to_json()
        pending += ready
    return counters
