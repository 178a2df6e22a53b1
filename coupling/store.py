"""The coupling store: BC's "CRM Integration Record" (table 5331) on Azure Table Storage.

One coupling pairs one BC record (SystemId) with one Dataverse row per mapping, unique in both directions.

Layout (intra-partition secondary index, design-anchors C7): partition = the encoded mapping name; each coupling
is two rows with the same data, ``RowKey = bc_<guid>`` and ``RowKey = dv_<guid>``, so either id is a point read.
The two rows are only ever written together, in one entity-group transaction (EGT):

* create = two ``create`` operations: if either id is already coupled, the whole transaction fails (409) and
  nothing is written. This, not a read before the write, is what keeps couplings unique under concurrency.
* update = two conditional ``update`` (replace) operations; delete = two ``delete`` operations.

Because the pair only changes as a whole, the ETag of *one* row is a version of the whole pair: if the row read
is unchanged, its partner row is unchanged too. A coupling read by one id therefore carries one ETag, and writes
send ``If-Match: <etag>`` for that row and ``If-Match: *`` (must exist) for the other.

Optimistic concurrency guarantee: Azure Table Storage enforces ``If-Match`` inside EGTs, so a stale ``update``
raises ``CouplingChanged``. Azurite is documented not to (Azure/Azurite#1233; design-anchors C9), so tests must
not rely on Azurite for it.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterable

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode

from sync.errors import Conflict, RequestError

from .keys import decode_continuation, encode_continuation, normalize_guid
from .tables import StaleEtag, TableNames, TableService

__all__ = [
    "Coupling", "CouplingStore", "CouplingExists", "CouplingChanged",
    "RESULT_SUCCESS", "RESULT_FAILURE", "partition_key", "bc_row_key", "dataverse_row_key",
]

from .model import (  # noqa: F401 - re-exported: the store's callers import them from here
    MAX_ERROR_CHARS, RESULT_FAILURE, RESULT_SUCCESS, Coupling, _BC, _DV, _truncate, _utc, bc_row_key,
    dataverse_row_key, mapping_from_partition_key, partition_key,
)

MAX_PAGE_SIZE = 1000  # the service returns at most 1000 entities per page
EGT_MAX_OPS = 100
READ_CONCURRENCY = 16

# --- errors -----------------------------------------------------------------------------------------------------------
class CouplingExists(Conflict):
    """The BC record or the Dataverse row is already coupled (in this mapping); nothing was written.

    ``existing`` is the coupling in the way, ``side`` the id that collided (``"bc"`` or ``"dataverse"``). If
    ``existing`` pairs exactly the requested ids, the requested coupling is already in place (possibly written by
    an earlier attempt of the same request whose answer was lost).
    """

    code = "AlreadyCoupled"

    def __init__(self, existing: Coupling, side: str):
        other = existing.dataverse_id if side == "bc" else existing.bc_id
        record = existing.bc_id if side == "bc" else existing.dataverse_id
        what = "BC record" if side == "bc" else "Dataverse row"
        super().__init__(
            f"{what} {record} is already coupled to {other} in mapping {existing.mapping}",
            details={"mapping": existing.mapping, "side": side,
                     "bcId": existing.bc_id, "dataverseId": existing.dataverse_id})
        self.existing = existing
        self.side = side


class CouplingChanged(StaleEtag):
    """The coupling was changed (``gone=False``) or uncoupled (``gone=True``) since it was read."""

    def __init__(self, coupling: Coupling, *, gone: bool):
        state = "was uncoupled" if gone else "was changed"
        super().__init__(
            f"coupling {coupling.bc_id} <-> {coupling.dataverse_id} in mapping {coupling.mapping} {state} "
            "since it was read",
            details={"mapping": coupling.mapping, "bcId": coupling.bc_id, "dataverseId": coupling.dataverse_id,
                     "gone": gone})
        self.coupling = coupling
        self.gone = gone


# --- entity <-> record ------------------------------------------------------------------------------------------------
_FIELDS = (  # (attribute, column)
    ("bc_id", "BcId"), ("dataverse_id", "DataverseId"),
    ("bc_modified_on", "BcModifiedOn"), ("dataverse_modified_on", "DataverseModifiedOn"),
    ("dataverse_version", "DataverseVersion"),
    ("to_result", "ToResult"), ("to_job_id", "ToJobId"),
    ("from_result", "FromResult"), ("from_job_id", "FromJobId"),
    ("skipped", "Skipped"), ("last_error", "LastError"), ("coupled_at", "CoupledAt"),
    ("to_error", "ToError"), ("from_error", "FromError"),
)


def _entity(c: Coupling, row_key: str) -> dict[str, Any]:
    # validated again here: a dataclass can be changed after __post_init__
    entity: dict[str, Any] = {"PartitionKey": partition_key(c.mapping), "RowKey": row_key}
    values = {
        "bc_id": normalize_guid(c.bc_id, what="bc_id"),
        "dataverse_id": normalize_guid(c.dataverse_id, what="dataverse_id"),
        "bc_modified_on": _utc(c.bc_modified_on, "bc_modified_on"),
        "dataverse_modified_on": _utc(c.dataverse_modified_on, "dataverse_modified_on"),
        "dataverse_version": EntityProperty(int(c.dataverse_version), EdmType.INT64)
        if c.dataverse_version is not None else None,
        "to_result": c.to_result, "to_job_id": c.to_job_id,
        "from_result": c.from_result, "from_job_id": c.from_job_id,
        "skipped": bool(c.skipped), "last_error": _truncate(c.last_error),
        "to_error": _truncate(c.to_error), "from_error": _truncate(c.from_error),
        "coupled_at": _utc(c.coupled_at, "coupled_at"),
    }
    for attr, column in _FIELDS:
        if values[attr] is not None:  # absent columns read back as None; REPLACE clears them
            entity[column] = values[attr]
    return entity


def _from_entity(mapping: str, entity: Any) -> Coupling:
    values = {attr: entity.get(column) for attr, column in _FIELDS}
    version = values["dataverse_version"]
    values["dataverse_version"] = int(getattr(version, "value", version)) if version is not None else None
    etag = entity.metadata.get("etag")
    row_etags = (etag, None) if entity["RowKey"].startswith(_BC) else (None, etag)
    return Coupling(mapping=mapping, **{**values, "skipped": bool(values["skipped"])}, etag=row_etags)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- the store --------------------------------------------------------------------------------------------------------
class CouplingStore:
    def __init__(self, service: TableService, names: TableNames, *, read_concurrency: int = READ_CONCURRENCY):
        self._service = service
        self._names = names
        self._read_concurrency = max(1, read_concurrency)

    async def _table(self):
        return await self._service.table(self._names.couplings)

    # --- create -------------------------------------------------------------------------------------------------------
    async def create(self, coupling: Coupling) -> Coupling:
        """Couple ``coupling.bc_id`` with ``coupling.dataverse_id``; ``CouplingExists`` if either is coupled."""
        c = replace(coupling, coupled_at=coupling.coupled_at or _now(), etag=None)
        table = await self._table()
        ops = [("create", _entity(c, bc_row_key(c.bc_id))), ("create", _entity(c, dataverse_row_key(c.dataverse_id)))]
        for _ in range(3):
            try:
                meta = await table.submit_transaction(ops)
                return replace(c, etag=(meta[0].get("etag"), meta[1].get("etag")))
            except TableTransactionError as exc:
                if _error_code(exc) != "EntityAlreadyExists":
                    raise
                first = "dataverse" if exc.index == 1 else "bc"
                for side in (first, "dataverse" if first == "bc" else "bc"):
                    existing = await (self.get_by_bc(c.mapping, c.bc_id) if side == "bc"
                                      else self.get_by_dataverse(c.mapping, c.dataverse_id))
                    if existing is not None:
                        raise CouplingExists(existing, side) from None
                # the coupling in the way was removed meanwhile: try again
        raise CouplingChanged(c, gone=False)

    async def create_many(self, mapping: str, couplings: Iterable[Coupling]) -> list[Coupling | CouplingExists]:
        """Create many couplings of one mapping: up to 50 per transaction (2 rows each, <= 100 operations).

        A transaction is all-or-nothing, so when one pair collides the whole chunk falls back to ``create`` one by
        one: uniqueness stays exactly as strong as ``create``'s, and the common case (nothing in the way) costs
        one storage operation per 50 couplings. Returns, in input order, the created coupling or the
        ``CouplingExists`` error of each.
        """
        items = [replace(c, coupled_at=c.coupled_at or _now(), etag=None) for c in couplings]
        if any(c.mapping != mapping for c in items):
            raise ValueError("create_many takes couplings of one mapping")
        table = await self._table()
        out: list[Coupling | CouplingExists] = []
        per_tx = EGT_MAX_OPS // 2
        for start in range(0, len(items), per_tx):
            chunk = items[start:start + per_tx]
            keys = [k for c in chunk for k in (c.bc_id, c.dataverse_id)]
            if len(set(keys)) == len(keys):  # a repeated id inside the chunk must collide like separate creates do
                ops = [op for c in chunk for op in (("create", _entity(c, bc_row_key(c.bc_id))),
                                                    ("create", _entity(c, dataverse_row_key(c.dataverse_id))))]
                try:
                    meta = await table.submit_transaction(ops)
                except TableTransactionError as exc:
                    if _error_code(exc) != "EntityAlreadyExists":
                        raise
                else:
                    out.extend(replace(c, etag=(meta[2 * i].get("etag"), meta[2 * i + 1].get("etag")))
                               for i, c in enumerate(chunk))
                    continue
            for c in chunk:
                try:
                    out.append(await self.create(c))
                except CouplingExists as exc:
                    out.append(exc)
        return out

    # --- reads --------------------------------------------------------------------------------------------------------
    async def _get(self, mapping: str, row_key: str) -> Coupling | None:
        pk = partition_key(mapping)
        table = await self._table()
        try:
            entity = await table.get_entity(pk, row_key)
        except ResourceNotFoundError:
            return None
        return _from_entity(mapping, entity)

    async def get_by_bc(self, mapping: str, bc_id: str) -> Coupling | None:
        return await self._get(mapping, bc_row_key(bc_id))

    async def get_by_dataverse(self, mapping: str, dataverse_id: str) -> Coupling | None:
        return await self._get(mapping, dataverse_row_key(dataverse_id))

    async def _get_many(self, mapping: str, ids: Iterable[str], row_key, id_attr: str) -> dict[str, Coupling]:
        """Point reads, ``read_concurrency`` at a time.

        Chosen over a query ``PartitionKey eq @pk and (RowKey eq @a or RowKey eq @b ...)`` because on Azure
        (a) a filter may hold at most 15 comparisons, so a query resolves at most 14 ids, and (b) an ``or`` of
        RowKeys is served as a *partition scan*, not as point lookups: its cost grows with the partition (a
        mapping's couplings), and the service may answer a long scan with several (even empty) pages. Point
        reads are the cheapest request the service has, cost O(1) whatever the partition size, and run
        concurrently, so latency is about ceil(n / read_concurrency) round trips.
        Measured on Azurite 3.37 (loopback, 200 ids looked up, 16 reads in flight): with 2,000 couplings in the
        partition, point reads 200 requests ~0.23 s, ``or``-queries of 14 ids 15 requests ~0.09 s; with 10,000
        couplings, point reads still ~0.23 s, ``or``-queries ~0.25 s: the query scans the partition even on
        Azurite. The query saves requests on small mappings, but its cost grows with the mapping and, on Azure,
        a scan past 5 s or 1000 entities comes back in several pages; point reads stay flat.
        """
        keys = {row_key(i): normalize_guid(i, what=id_attr) for i in ids}  # validate every id before any I/O
        partition_key(mapping)
        table = await self._table()
        sem = asyncio.Semaphore(self._read_concurrency)
        found: dict[str, Coupling] = {}

        async def read(rk: str, normalized: str) -> None:
            async with sem:
                try:
                    entity = await table.get_entity(partition_key(mapping), rk)
                except ResourceNotFoundError:
                    return
            found[normalized] = _from_entity(mapping, entity)

        await asyncio.gather(*(read(rk, n) for rk, n in keys.items()))
        return found

    async def get_many_by_bc(self, mapping: str, bc_ids: Iterable[str]) -> dict[str, Coupling]:
        """Couplings of these BC ids that exist, keyed by the normalized (lower-case) BC id."""
        return await self._get_many(mapping, bc_ids, bc_row_key, "bc_id")

    async def get_many_by_dataverse(self, mapping: str, dataverse_ids: Iterable[str]) -> dict[str, Coupling]:
        """Couplings of these Dataverse ids that exist, keyed by the normalized (lower-case) Dataverse id."""
        return await self._get_many(mapping, dataverse_ids, dataverse_row_key, "dataverse_id")

    # --- update -------------------------------------------------------------------------------------------------------
    async def update(self, coupling: Coupling) -> Coupling:
        """Replace both rows of the coupling (ids unchanged: changing an id is uncouple + couple).

        With an ``etag`` (from a read), a row changed since raises ``CouplingChanged``; without, last writer wins.
        A coupling removed meanwhile raises ``CouplingChanged(gone=True)``; an update never re-creates one.
        """
        c = coupling
        bc_etag, dv_etag = c.etag or (None, None)
        table = await self._table()
        ops = []
        for rk, etag in ((bc_row_key(c.bc_id), bc_etag), (dataverse_row_key(c.dataverse_id), dv_etag)):
            options: dict[str, Any] = {"mode": UpdateMode.REPLACE}
            if etag:
                options.update(etag=etag, match_condition=MatchConditions.IfNotModified)
            ops.append(("update", _entity(c, rk), options))
        try:
            meta = await table.submit_transaction(ops)
        except TableTransactionError as exc:
            if exc.status_code == 404 or _error_code(exc) in ("ResourceNotFound", "EntityNotFound"):
                raise CouplingChanged(c, gone=True) from None
            if exc.status_code == 412 or _error_code(exc) in ("UpdateConditionNotSatisfied", "ConditionNotMet"):
                raise CouplingChanged(c, gone=False) from None
            raise
        return replace(c, etag=(meta[0].get("etag"), meta[1].get("etag")))

    # --- delete -------------------------------------------------------------------------------------------------------
    @staticmethod
    def _delete_ops(c: Coupling) -> list:
        bc_etag, dv_etag = c.etag or (None, None)
        ops = []
        for rk, etag in ((bc_row_key(c.bc_id), bc_etag), (dataverse_row_key(c.dataverse_id), dv_etag)):
            options = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
            ops.append(("delete", {"PartitionKey": partition_key(c.mapping), "RowKey": rk}, options))
        return ops

    async def _current(self, c: Coupling) -> Coupling | None:
        """The stored coupling pairing exactly ``c``'s ids (with a fresh etag), or None."""
        fresh = await self.get_by_bc(c.mapping, c.bc_id)
        return fresh if fresh is not None and fresh.dataverse_id == c.dataverse_id else None

    async def delete(self, coupling: Coupling) -> bool:
        """Uncouple: remove both rows at once. False if the coupling was already gone.

        Only the pair ``bc_id <-> dataverse_id`` is removed, never a row that now belongs to another coupling of
        one of the ids: without an etag the BC row is read first to check it still pairs the two ids.
        """
        c = coupling if coupling.etag and any(coupling.etag) else await self._current(coupling)
        table = await self._table()
        for _ in range(3):
            if c is None:
                return False
            try:
                await table.submit_transaction(self._delete_ops(c))
                return True
            except TableTransactionError as exc:
                if exc.status_code == 404:  # a row is gone, hence the pair (rows only change together)
                    return False
                if exc.status_code != 412:
                    raise
            c = await self._current(c)  # changed meanwhile (e.g. synced): delete it if it still pairs the ids
        raise CouplingChanged(coupling, gone=False)

    async def delete_many(self, mapping: str, couplings: Iterable[Coupling]) -> int:
        """Uncouple many couplings of one mapping, up to 50 per transaction; returns how many were removed.

        Couplings already gone are fine. A transaction fails as a whole when one coupling in it is gone or
        changed: that one is taken out and handled by ``delete`` (one more request), and the rest resent.
        """
        pk = partition_key(mapping)
        todo: list[Coupling] = []
        later: list[Coupling] = []
        seen: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        unversioned: list[Coupling] = []
        for c in couplings:
            if partition_key(c.mapping) != pk:
                raise RequestError("every coupling must belong to the mapping", details={"mapping": mapping})
            if (c.bc_id, c.dataverse_id) in pairs:
                continue  # the same pair again
            pairs.add((c.bc_id, c.dataverse_id))
            keys = {bc_row_key(c.bc_id), dataverse_row_key(c.dataverse_id)}
            if keys & seen:  # an id already in this call: a transaction can't touch a row twice
                later.append(c)
                continue
            seen |= keys
            (todo if c.etag and any(c.etag) else unversioned).append(c)
        if unversioned:  # check each still pairs its ids (and get an etag) before deleting anything
            current = await self.get_many_by_bc(mapping, [c.bc_id for c in unversioned])
            todo += [current[c.bc_id] for c in unversioned
                     if c.bc_id in current and current[c.bc_id].dataverse_id == c.dataverse_id]
        table = await self._table()
        deleted = 0
        per_egt = EGT_MAX_OPS // 2
        for start in range(0, len(todo), per_egt):
            chunk = todo[start:start + per_egt]
            while chunk:
                try:
                    await table.submit_transaction([op for c in chunk for op in self._delete_ops(c)])
                    deleted += len(chunk)
                    break
                except TableTransactionError as exc:
                    if exc.status_code not in (404, 412):
                        raise
                    later.append(chunk.pop(min(max(exc.index, 0), 2 * len(chunk) - 1) // 2))
        for c in later:
            deleted += await self.delete(c)
        return deleted

    # --- listing ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _scope(pk: str, skipped: bool | None) -> str:
        return f"couplings|{pk}|{'' if skipped is None else int(skipped)}"

    async def list(self, mapping: str, page_size: int = 100, continuation: str | None = None, *,
                   skipped: bool | None = None) -> tuple[list[Coupling], str | None]:
        """One page of a mapping's couplings (each once, in BC-id order) and the token of the next page.

        ``continuation`` is the token a previous call returned (opaque, URL-safe); a token that was not issued
        for this mapping and filter raises ``RequestError``. ``skipped`` filters on the skipped flag. A page can
        hold fewer than ``page_size`` couplings (even none) while a token is still returned.
        """
        if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise RequestError(f"page size must be 1..{MAX_PAGE_SIZE}", details={"pageSize": page_size})
        pk = partition_key(mapping)
        scope = self._scope(pk, skipped)
        token = decode_continuation(scope, continuation)
        query = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params: dict[str, Any] = {"pk": pk, "lo": _BC, "hi": _BC[:-1] + chr(ord(_BC[-1]) + 1)}
        if skipped is not None:
            query += " and Skipped eq @skipped"
            params["skipped"] = bool(skipped)
        table = await self._table()
        pages = table.query_entities(query, parameters=params, results_per_page=page_size).by_page(
            continuation_token=token)
        items: list[Coupling] = []
        for _ in range(5):  # the service may answer empty pages with a token: follow a few
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                break
            items = [_from_entity(mapping, e) async for e in page]
            if items or not pages.continuation_token:
                break
        return items, encode_continuation(scope, pages.continuation_token)

    async def iter_all(self, mapping: str, *, page_size: int = MAX_PAGE_SIZE,
                       skipped: bool | None = None) -> AsyncIterator[list[Coupling]]:
        """Every coupling of the mapping, a page at a time (memory bounded by ``page_size``)."""
        token = None
        while True:
            items, token = await self.list(mapping, page_size, token, skipped=skipped)
            if items:
                yield items
            if token is None:
                return

    async def list_skipped(self, mapping: str) -> list[Coupling]:
        """The mapping's skipped couplings (excluded from automatic sync until retried)."""
        out: list[Coupling] = []
        async for page in self.iter_all(mapping, skipped=True):
            out.extend(page)
        return out

    # --- batch update and filtered listing ----------------------------------------------------------------------------
    @staticmethod
    def _update_ops(c: Coupling) -> list:
        """The two operations of ``update``: replace both rows, If-Match the known etag (else ``*``: must exist)."""
        bc_etag, dv_etag = c.etag or (None, None)
        ops = []
        for rk, etag in ((bc_row_key(c.bc_id), bc_etag), (dataverse_row_key(c.dataverse_id), dv_etag)):
            options: dict[str, Any] = {"mode": UpdateMode.REPLACE}
            if etag:
                options.update(etag=etag, match_condition=MatchConditions.IfNotModified)
            ops.append(("update", _entity(c, rk), options))
        return ops

    async def update_many(self, mapping: str, couplings: Iterable[Coupling]) -> list[Coupling | Exception]:
        """Update many couplings of one mapping: up to 50 per transaction (2 rows each), conditional as ``update``.

        A transaction is all-or-nothing, so when one coupling in it was changed or uncoupled meanwhile the whole
        chunk falls back to ``update`` one by one, and each coupling gets its own result. Returns, in input
        order, the updated coupling (new etag) or its error (``CouplingChanged``, or the ``TableTransactionError``
        of a row the service refused).
        """
        items = list(couplings)
        pk = partition_key(mapping)
        if any(partition_key(c.mapping) != pk for c in items):
            raise RequestError("every coupling must belong to the mapping", details={"mapping": mapping})
        table = await self._table()
        out: list[Coupling | Exception] = []
        per_tx = EGT_MAX_OPS // 2
        for start in range(0, len(items), per_tx):
            chunk = items[start:start + per_tx]
            keys = [k for c in chunk for k in (bc_row_key(c.bc_id), dataverse_row_key(c.dataverse_id))]
            if len(set(keys)) == len(keys):  # a transaction can't touch a row twice
                try:
                    meta = await table.submit_transaction([op for c in chunk for op in self._update_ops(c)])
                except TableTransactionError:
                    pass  # one by one below
                else:
                    out.extend(replace(c, etag=(meta[2 * i].get("etag"), meta[2 * i + 1].get("etag")))
                               for i, c in enumerate(chunk))
                    continue
            for c in chunk:
                try:
                    out.append(await self.update(c))
                except (CouplingChanged, TableTransactionError) as exc:
                    out.append(exc)
        return out

    async def iter_filtered(self, mapping: str, *, skipped: bool | None = None, to_result: str | None = None,
                            from_result: str | None = None,
                            page_size: int = MAX_PAGE_SIZE) -> AsyncIterator[list[Coupling]]:
        """The mapping's couplings matching every given filter, a page at a time (filtered by the service).

        E.g. ``skipped=False, to_result=RESULT_FAILURE``: failed-not-skipped couplings the To pass retries every
        run; ``skipped=True``: the errors page. ``None`` means "any". Empty pages are not yielded.
        """
        if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise RequestError(f"page size must be 1..{MAX_PAGE_SIZE}", details={"pageSize": page_size})
        pk = partition_key(mapping)
        # every @name stays a space-delimited token: the SDK substitutes parameters by splitting on " " (C5)
        query = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params: dict[str, Any] = {"pk": pk, "lo": _BC, "hi": _BC[:-1] + chr(ord(_BC[-1]) + 1)}
        for column, name, value in (("Skipped", "skipped", skipped), ("ToResult", "to_result", to_result),
                                    ("FromResult", "from_result", from_result)):
            if value is None:
                continue
            if column == "Skipped":
                value = bool(value)
            elif not isinstance(value, str):
                raise RequestError(f"{name} must be a string", details={name: repr(value)})
            query += f" and {column} eq @{name}"
            params[name] = value
        table = await self._table()
        async for page in table.query_entities(query, parameters=params, results_per_page=page_size).by_page():
            items = [_from_entity(mapping, e) async for e in page]
            if items:
                yield items
