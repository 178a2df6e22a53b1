"""Per-mapping setting overrides (``PATCH /api/mappings/{name}``), persisted in Table Storage.

The store keeps each mapping's overrides as an opaque JSON object; ``sync/mappings.py`` layers them onto the
defaults. Every instance reads the table, so a change is effective at once everywhere.
Layout: one partition (``mappings``), ``RowKey`` = the encoded mapping name, columns ``Name`` and ``Overrides``.
"""
from __future__ import annotations

import json
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from sync.errors import RequestError

from .keys import encode_key_part
from .tables import StaleEtag, TableNames, TableService

__all__ = ["MappingSettingsStore", "MappingSettingsChanged", "MAX_OVERRIDES_CHARS"]

PARTITION = "mappings"
MAX_OVERRIDES_CHARS = 32 * 1024
"""A string property holds at most 64 KiB, i.e. 32K UTF-16 code units."""


class MappingSettingsChanged(StaleEtag):
    """The mapping's settings were changed (or removed) since they were read."""

    def __init__(self, name: str):
        super().__init__(f"settings of mapping {name} were changed since they were read; read them again",
                         details={"mapping": name})
        self.name = name


def _row_key(name: str) -> str:
    return encode_key_part(name, what="mapping")


def _dump(overrides: Any) -> str:
    if not isinstance(overrides, dict):
        raise RequestError("mapping settings must be a JSON object")
    try:
        text = json.dumps(overrides, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"mapping settings are not JSON: {exc}") from None
    size = len(text.encode("utf-16-le")) // 2
    if size > MAX_OVERRIDES_CHARS:
        raise RequestError(f"mapping settings are too large ({size} characters, at most {MAX_OVERRIDES_CHARS})",
                           details={"size": size, "max": MAX_OVERRIDES_CHARS})
    return text


class MappingSettingsStore:
    def __init__(self, service: TableService, names: TableNames):
        self._service = service
        self._names = names

    async def _table(self):
        return await self._service.table(self._names.mappings)

    async def get(self, name: str) -> tuple[dict | None, str | None]:
        """``(overrides, etag)``; ``(None, None)`` if the mapping has no stored overrides."""
        table = await self._table()
        try:
            entity = await table.get_entity(PARTITION, _row_key(name))
        except ResourceNotFoundError:
            return None, None
        return json.loads(entity["Overrides"]), entity.metadata.get("etag")

    async def get_all(self) -> dict[str, dict]:
        """Every stored override, by mapping name (one query: a partition read)."""
        table = await self._table()
        out: dict[str, dict] = {}
        async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION},
                                                 select=["Name", "Overrides"]):
            out[entity["Name"]] = json.loads(entity["Overrides"])
        return out

    async def put(self, name: str, overrides: dict, etag: str | None = None) -> str:
        """Store ``overrides`` (replacing the previous ones); returns the new etag.

        With ``etag`` (from ``get``) the write only succeeds if nothing changed since, else
        ``MappingSettingsChanged``; without, it creates or replaces unconditionally.
        """
        entity = {"PartitionKey": PARTITION, "RowKey": _row_key(name), "Name": name, "Overrides": _dump(overrides)}
        table = await self._table()
        if etag is None:
            meta = await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        else:
            try:
                meta = await table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                                 match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                raise MappingSettingsChanged(name) from None
        return meta["etag"]

    async def delete(self, name: str, etag: str | None = None) -> None:
        """Remove the overrides (back to defaults). Absent is fine; with ``etag``, only if unchanged."""
        table = await self._table()
        if etag is None:
            await table.delete_entity(PARTITION, _row_key(name))  # no error if absent
            return
        try:
            await table.delete_entity(PARTITION, _row_key(name), etag=etag,
                                      match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:
            raise MappingSettingsChanged(name) from None
