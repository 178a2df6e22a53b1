"""Create intents: the marker that makes "create new in Business Central" safe to repeat after a crash.

BC assigns a new record's SystemId itself, so a replayed create can't reuse a client-chosen id (as the Dataverse
side does). Before creating, the service records an intent (mapping, Dataverse id, start time, the values it is
about to send); after the create it records the new SystemId. A repeated request that finds an intent without a
SystemId looks for the record the crashed attempt may have made (created since the intent, same values, not
coupled) before creating anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from .keys import encode_key_part, normalize_guid
from .tables import TableNames, TableService


@dataclass
class CreateIntent:
    mapping: str
    dataverse_id: str
    started_at: datetime
    body: dict
    bc_id: str | None = None


class CreateIntentStore:
    def __init__(self, service: TableService, names: TableNames):
        self.service = service
        self.names = names

    async def _table(self):
        return await self.service.table(self.names.intents)

    @staticmethod
    def _keys(mapping: str, dataverse_id: str) -> tuple[str, str]:
        return encode_key_part(mapping, what="mapping"), normalize_guid(dataverse_id, what="dataverse_id")

    async def get(self, mapping: str, dataverse_id: str) -> CreateIntent | None:
        pk, rk = self._keys(mapping, dataverse_id)
        try:
            e = await (await self._table()).get_entity(pk, rk)
        except ResourceNotFoundError:
            return None
        started = e["StartedAt"]
        return CreateIntent(mapping, rk, datetime.fromisoformat(started) if isinstance(started, str)
                            else started.astimezone(timezone.utc), json.loads(e["Body"]), e.get("BcId") or None)

    async def put(self, intent: CreateIntent) -> None:
        pk, rk = self._keys(intent.mapping, intent.dataverse_id)
        await (await self._table()).upsert_entity({
            "PartitionKey": pk, "RowKey": rk, "StartedAt": intent.started_at.astimezone(timezone.utc).isoformat(),
            "Body": json.dumps(intent.body, default=str), "BcId": intent.bc_id or ""}, mode=UpdateMode.REPLACE)

    async def delete(self, mapping: str, dataverse_id: str) -> None:
        pk, rk = self._keys(mapping, dataverse_id)
        try:
            await (await self._table()).delete_entity(pk, rk)
        except ResourceNotFoundError:
            pass
