"""Dependency-ordered fan-out of one scheduled run across instances (spec 6.6: a mapping starts only after the
mappings it depends on finished, e.g. CUSTOMER after SALESPEOPLE and CURRENCY, CONTACT after CUSTOMER and VENDOR).

The run's state is one entity (a run has about ten mappings): ``create`` stores it and hands out the mappings
that can start; each ``complete`` marks one mapping done and hands out the mappings that became ready. Every
change is an etag-conditional replace retried on conflict, so when two instances complete mappings at the same
moment each newly ready mapping is handed out exactly once (to the instance whose write succeeded).

A mapping completes whatever its outcome: its dependents still run (as BC starts a line once its dependency
lines *finished*); records that needed a failed dependency fail on their own and are retried next run.

Layout: table ``jobs`` (the run log lives with the job log), partition ``~runs`` (never an encoded mapping name),
``RowKey`` = the encoded run id, columns ``State`` (JSON), ``StartedAt``, ``FinishedAt`` (once all are done).
"""
from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from sync.errors import Conflict, NotFound, RequestError

from .keys import encode_key_part
from .model import _utc
from .tables import StaleEtag, TableNames, TableService

__all__ = ["RunStore", "RunExists", "PENDING", "ENQUEUED", "DONE"]

PARTITION = "~runs"
PENDING, ENQUEUED, DONE = "pending", "enqueued", "done"
MAX_STATE_UNITS = 30_000  # UTF-16 units; a string property holds 32,768
MAX_ATTEMPTS = 30
EGT_MAX_OPS = 100


class RunExists(Conflict):
    """A run with this id was already created: its ready mappings were handed out then, not again."""

    code = "RunExists"

    def __init__(self, run_id: str):
        super().__init__(f"run {run_id} already exists", details={"runId": run_id})
        self.run_id = run_id


# --- pure state transitions -------------------------------------------------------------------------------------------
def _initial_state(graph: Any) -> dict[str, dict]:
    """The state of a new run (every mapping pending), dependencies outside the run dropped (= satisfied)."""
    if not isinstance(graph, dict) or not graph:
        raise RequestError("a run needs a non-empty graph: mapping -> its dependencies")
    state: dict[str, dict] = {}
    for mapping, deps in graph.items():
        encode_key_part(mapping, what="mapping")
        if not isinstance(deps, (list, tuple, set, frozenset)) or not all(isinstance(d, str) for d in deps):
            raise RequestError("dependencies must be a list of mapping names", details={"mapping": mapping})
        inside = [d for d in dict.fromkeys(deps) if d in graph]
        state[mapping] = {"state": PENDING, "dependsOn": inside, "outcome": None, "completedAt": None}
    # a cycle would leave its mappings pending forever: refuse it (Kahn's algorithm)
    remaining = {m: set(s["dependsOn"]) for m, s in state.items()}
    while True:
        free = [m for m, deps in remaining.items() if not deps]
        if not free:
            break
        for m in free:
            del remaining[m]
        for deps in remaining.values():
            deps.difference_update(free)
    if remaining:
        raise RequestError("the run's dependencies form a cycle", details={"mappings": sorted(remaining)})
    return state


def _release_ready(state: dict[str, dict]) -> list[str]:
    """Mark the pending mappings whose dependencies are all done as enqueued; returns them (graph order)."""
    ready = [m for m, s in state.items()
             if s["state"] == PENDING and all(state[d]["state"] == DONE for d in s["dependsOn"])]
    for m in ready:
        state[m]["state"] = ENQUEUED
    return ready


def _dump(state: dict[str, dict]) -> str:
    text = json.dumps({"mappings": state}, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode("utf-16-le")) // 2 > MAX_STATE_UNITS:
        raise RequestError("the run has too many mappings to store", details={"mappings": len(state)})
    return text


# --- the store --------------------------------------------------------------------------------------------------------
class RunStore:
    def __init__(self, service: TableService, names: TableNames):
        self._service = service
        self._names = names

    async def _table(self):
        return await self._service.table(self._names.jobs)

    async def create(self, run_id: str, graph: dict[str, list[str]]) -> list[str]:
        """Store a new run of the mappings in ``graph`` (mapping -> the mappings it depends on) and return the
        mappings that can start now (marked enqueued). ``RunExists`` if ``run_id`` was created before."""
        key = encode_key_part(run_id, what="run id")
        state = _initial_state(graph)
        ready = _release_ready(state)
        table = await self._table()
        try:
            await table.create_entity({"PartitionKey": PARTITION, "RowKey": key, "RunId": run_id,
                                       "State": _dump(state), "StartedAt": datetime.now(timezone.utc)})
        except ResourceExistsError:
            raise RunExists(run_id) from None
        return ready

    async def complete(self, run_id: str, mapping: str, *, outcome: str) -> list[str]:
        """Mark ``mapping`` done with ``outcome``; returns the mappings that just became ready (each is returned
        by exactly one call). Completing a mapping twice (e.g. a redelivered message) returns nothing."""
        key = encode_key_part(run_id, what="run id")
        table = await self._table()
        for attempt in range(MAX_ATTEMPTS):
            try:
                entity = await table.get_entity(PARTITION, key)
            except ResourceNotFoundError:
                raise NotFound(f"run {run_id} not found", details={"runId": run_id}) from None
            state = json.loads(entity["State"])["mappings"]
            current = state.get(mapping)
            if current is None:
                raise RequestError(f"mapping {mapping} is not part of run {run_id}",
                                   details={"runId": run_id, "mapping": mapping})
            if current["state"] == DONE:
                return []
            if current["state"] != ENQUEUED:
                raise RequestError(f"mapping {mapping} of run {run_id} was not started: its dependencies are "
                                   "not done", details={"runId": run_id, "mapping": mapping})
            now = datetime.now(timezone.utc)
            current.update(state=DONE, outcome=str(outcome), completedAt=now.isoformat())
            ready = _release_ready(state)
            update = {"PartitionKey": PARTITION, "RowKey": key, "RunId": entity["RunId"], "State": _dump(state),
                      "StartedAt": entity["StartedAt"]}
            if all(s["state"] == DONE for s in state.values()):
                update["FinishedAt"] = now
            try:
                await table.update_entity(update, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                                          match_condition=MatchConditions.IfNotModified)
                return ready
            except ResourceModifiedError:  # another mapping completed meanwhile: start over from its state
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise StaleEtag(f"run {run_id} kept changing while completing {mapping}",
                        details={"runId": run_id, "mapping": mapping})

    async def get(self, run_id: str) -> dict | None:
        """``{"runId", "startedAt", "finishedAt", "finished", "mappings": {name: {"state", "dependsOn",
        "outcome", "completedAt"}}}`` (datetimes in UTC), or None if there is no such run."""
        table = await self._table()
        try:
            entity = await table.get_entity(PARTITION, encode_key_part(run_id, what="run id"))
        except ResourceNotFoundError:
            return None
        mappings = json.loads(entity["State"])["mappings"]
        for s in mappings.values():
            if s.get("completedAt"):
                s["completedAt"] = datetime.fromisoformat(s["completedAt"])
        finished_at = _utc(entity.get("FinishedAt"), "FinishedAt")
        return {"runId": entity["RunId"], "startedAt": _utc(entity["StartedAt"], "StartedAt"),
                "finishedAt": finished_at, "finished": all(s["state"] == DONE for s in mappings.values()),
                "mappings": mappings}

    async def cleanup(self, older_than: datetime) -> int:
        """Delete the runs started before ``older_than``; returns how many."""
        cutoff = _utc(older_than, "older_than")
        table = await self._table()
        deleted = 0
        query = table.query_entities("PartitionKey eq @pk and StartedAt lt @cutoff",
                                     parameters={"pk": PARTITION, "cutoff": cutoff}, select=["RowKey"],
                                     results_per_page=1000)
        async for page in query.by_page():
            keys = [e["RowKey"] async for e in page]
            for start in range(0, len(keys), EGT_MAX_OPS):
                chunk = keys[start:start + EGT_MAX_OPS]
                try:
                    await table.submit_transaction(
                        [("delete", {"PartitionKey": PARTITION, "RowKey": rk}) for rk in chunk])
                except TableTransactionError as exc:
                    if exc.status_code != 404:
                        raise
                    for rk in chunk:  # deleted meanwhile by another cleanup: the rest one by one (404 ignored)
                        await table.delete_entity(PARTITION, rk)
                deleted += len(chunk)
        return deleted
