"""Per-mapping synchronization watermarks (BC's "Synch. Modified On Filter" / "Synch. Int. Tbl. Mod. On Fltr.").

``bc`` is the BC ``SystemModifiedAt`` up to which the To pass has read, ``dataverse`` the Dataverse ``modifiedon``
up to which the From pass has read. A watermark only moves forward (spec 6.2 step 4: "stored only if greater"),
also when two runs of a mapping finish at the same time: ``advance`` is a read + etag-conditional write retried
on conflict, so the larger value always wins. ``reset`` clears both (full synchronization).

Layout: table ``watermarks``, one partition (``watermarks``), ``RowKey`` = the encoded mapping name, columns
``Bc`` and ``Dataverse`` (Edm.DateTime, microsecond precision; absent = never synchronized).
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from .keys import encode_key_part
from .model import _utc
from .tables import StaleEtag, TableNames, TableService

__all__ = ["Watermarks", "WatermarkStore", "WatermarkContention"]

PARTITION = "watermarks"
MAX_ATTEMPTS = 20


class WatermarkContention(StaleEtag):
    """The watermark kept changing under ``advance`` (many writers at once); nothing was lost, try again."""


@dataclass(frozen=True)
class Watermarks:
    bc: datetime | None = None
    dataverse: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bc", _utc(self.bc, "bc"))
        object.__setattr__(self, "dataverse", _utc(self.dataverse, "dataverse"))


def _later(stored: datetime | None, new: datetime | None) -> datetime | None:
    if new is None:
        return stored
    return new if stored is None or new > stored else stored


class WatermarkStore:
    def __init__(self, service: TableService, names: TableNames):
        self._service = service
        self._names = names

    async def _table(self):
        return await self._service.table(self._names.watermarks)

    async def _read(self, table, mapping: str) -> tuple[Watermarks, str | None]:
        try:
            e = await table.get_entity(PARTITION, encode_key_part(mapping, what="mapping"))
        except ResourceNotFoundError:
            return Watermarks(), None
        return Watermarks(e.get("Bc"), e.get("Dataverse")), e.metadata.get("etag")

    async def get(self, mapping: str) -> Watermarks:
        """The mapping's watermarks; ``Watermarks(None, None)`` if it was never synchronized (or was reset)."""
        return (await self._read(await self._table(), mapping))[0]

    async def advance(self, mapping: str, *, bc: datetime | None = None,
                      dataverse: datetime | None = None) -> Watermarks:
        """Move each given watermark forward to ``max(stored, new)``; returns the stored values afterwards.

        Never moves a value back, whatever other writers do meanwhile (etag-conditional write, retried after a
        conflict with the fresh values). No write when nothing moves.
        """
        new = Watermarks(bc, dataverse)  # validates: tz-aware, normalized to UTC
        key = encode_key_part(mapping, what="mapping")
        table = await self._table()
        for attempt in range(MAX_ATTEMPTS):
            current, etag = await self._read(table, mapping)
            target = Watermarks(_later(current.bc, new.bc), _later(current.dataverse, new.dataverse))
            if target == current:
                return current
            entity = {"PartitionKey": PARTITION, "RowKey": key, "Mapping": mapping}
            if target.bc is not None:
                entity["Bc"] = target.bc
            if target.dataverse is not None:
                entity["Dataverse"] = target.dataverse
            try:
                if etag is None:
                    await table.create_entity(entity)
                else:
                    await table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                              match_condition=MatchConditions.IfNotModified)
                return target
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                # another writer (or a reset) got there first: read again and recompute the max
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise WatermarkContention(f"watermarks of mapping {mapping} changed {MAX_ATTEMPTS} times while advancing",
                                  details={"mapping": mapping})

    async def reset(self, mapping: str) -> None:
        """Clear both watermarks: the next run reads every record (full synchronization)."""
        await (await self._table()).delete_entity(PARTITION, encode_key_part(mapping, what="mapping"))
