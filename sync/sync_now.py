"""BC's "Synchronize Now" for one or many records (spec section 5), as a service.

Records are synchronized in the chosen direction as BC's one-off jobs do (ForceModify: no unchanged short-cut, no
conflict check - the caller chose). One record may also be merged (``Bidirectional``: a To pass then a From pass
with normal change detection). Several records follow BC's list rule: uncoupled and skipped records are skipped,
and so is a record whose destination side changed since the last synchronization (bulk sync never overwrites
newer data) - each with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import rules
from .engine import PassRequest, PassResult, run_pass
from .mappings import Direction, TableMapping
from .rules import Outcome, OutcomeKind, Reason

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE
MAX_IDS = 1000
"""Ids per sync-now request (one queue message must hold them for the asynchronous case)."""


@dataclass
class SyncNowResult:
    mapping: str
    direction: Direction
    passes: list[PassResult] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = rules.JobCounters()
        for o in self.outcomes:
            counts.add(o)
        return counts.to_json()

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "direction": self.direction.value, "counts": self.counts(),
                "jobs": [p.job.id for p in self.passes], "records": [o.to_json() for o in self.outcomes]}


def resolve_direction(mapping: TableMapping, requested: Any, single: bool) -> Direction:
    return rules.resolve_sync_now_direction(mapping, requested, allow_merge=single)


async def sync_now(rt: Any, mapping: TableMapping, *, bc_ids: list[str] | None = None,
                   dataverse_ids: list[str] | None = None, direction: Direction,
                   job: Any = None, clear_skipped: bool = False) -> SyncNowResult:
    """Synchronize the selected records now. ``job``: a job created beforehand (the asynchronous case).
    ``clear_skipped``: the errors page's Synchronize (skipped couplings are taken up, no destination check)."""
    selected_side_bc = bc_ids is not None
    selected = bc_ids if selected_side_bc else (dataverse_ids or [])
    single = len(selected) == 1 and not clear_skipped
    merge = direction is Direction.BIDIRECTIONAL
    result = SyncNowResult(mapping.name, direction)
    for d in ((TO, FROM) if merge else (direction,)):
        source_is_bc = d is TO
        if source_is_bc == selected_side_bc:
            source_ids = list(selected)
        else:  # the selected records are the destinations: their coupled counterparts are the sources
            get = rt.couplings.get_many_by_bc if selected_side_bc else rt.couplings.get_many_by_dataverse
            found = await get(mapping.name, selected)
            source_ids = []
            for sel in selected:
                c = found.get(sel)
                if c is None:
                    ids = {"bc_id": sel} if selected_side_bc else {"dataverse_id": sel}
                    result.outcomes.append(Outcome(OutcomeKind.SKIPPED, Reason.NOT_COUPLED,
                                                   "The record is not coupled.", **ids))
                else:
                    source_ids.append(c.dataverse_id if selected_side_bc else c.bc_id)
        if not source_ids:
            continue
        req = PassRequest(mapping, d, kind="SyncNow", ids=source_ids, forced=not merge,
                          skip_destination_modified=not single and not clear_skipped,
                          clear_skipped=clear_skipped, keep_outcomes=True,
                          details={"direction": direction.value, "selected": len(selected)})
        passed = await run_pass(rt, req, job=None if merge else job)
        result.passes.append(passed)
        result.outcomes.extend(passed.outcomes)
    return result
