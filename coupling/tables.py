"""Azure Table Storage plumbing shared by the stores: table names, one async service per process, safe keys.

Adapter layer: this module does I/O (``azure.data.tables.aio``); the key and token helpers at the bottom are pure
and usable on their own. Nothing is created at import time: build a ``TableService`` from the connection string
when the app (or a test) starts and ``await service.close()`` when it stops.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableClient, TableServiceClient

from sync.errors import ConfigurationError, Conflict

__all__ = ["TableNames", "TableService", "StaleEtag"]


class StaleEtag(Conflict):
    """The row changed (or disappeared) since it was read: read it again, then retry."""

    code = "EtagMismatch"


# --- table names ------------------------------------------------------------------------------------------------------
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,30}")


@dataclass(frozen=True)
class TableNames:
    """Every table of the app, named ``{prefix}{Purpose}`` (table names allow letters and digits only)."""

    prefix: str
    couplings: str = field(init=False)
    mappings: str = field(init=False)
    jobs: str = field(init=False)
    errors: str = field(init=False)
    watermarks: str = field(init=False)
    leases: str = field(init=False)
    intents: str = field(init=False)
    subscriptions: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigurationError("SYNC_TABLE_PREFIX", "must be 1-31 letters or digits, starting with a letter")
        for purpose in ("couplings", "mappings", "jobs", "errors", "watermarks", "leases", "intents",
                        "subscriptions"):
            object.__setattr__(self, purpose, f"{self.prefix}{purpose.capitalize()}")

    def all(self) -> tuple[str, ...]:
        return (self.couplings, self.mappings, self.jobs, self.errors, self.watermarks, self.leases, self.intents,
                self.subscriptions)


# --- the service ------------------------------------------------------------------------------------------------------
# Tables known to exist, per account endpoint: a process creates each table at most once (create is a request).
_created: set[tuple[str, str]] = set()

# Functions-friendly defaults: the SDK's 10 retries with up to 2 minutes of back-off outlive an invocation.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 8,
    "connection_timeout": 10,
    "read_timeout": 30,
}


def _table_endpoint(connection_string: str) -> str:
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    lowered = {k.strip().lower(): v.strip() for k, v in parts.items()}
    return lowered.get("tableendpoint", "")


class TableService:
    """One async ``TableServiceClient`` with cached ``TableClient``s and a request counter.

    ``ops`` counts every HTTP request sent to Table Storage through this service (point reads, each page of a
    query, each transaction, table creation, and each retry attempt), i.e. what the storage account bills.
    """

    def __init__(self, connection_string: str, **client_options: Any):
        if not connection_string or not connection_string.strip():
            raise ConfigurationError("SYNC_STORAGE_CONNECTION", "is empty")
        endpoint = _table_endpoint(connection_string)
        host = urlsplit(endpoint).hostname if endpoint else None
        port = urlsplit(endpoint).port if endpoint else None
        if host == "localhost" and port not in (None, 10002):
            # azure-data-tables takes localhost on another port for a Cosmos endpoint (design-anchors C1).
            raise ConfigurationError(
                "SYNC_STORAGE_CONNECTION", "use 127.0.0.1, not localhost, for an emulator on a non-default port")
        options = {**DEFAULT_CLIENT_OPTIONS, **client_options}
        self.ops = 0
        self._client = TableServiceClient.from_connection_string(
            connection_string, raw_request_hook=self._count, **options)
        self._account = self._client.url.split("?", 1)[0].rstrip("/").lower()
        self._tables: dict[str, TableClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Any, **client_options: Any) -> "TableService":
        """From ``sync.settings.Settings`` (its ``storage_connection``)."""
        return cls(settings.storage_connection, **client_options)

    def _count(self, request: Any) -> None:
        self.ops += 1

    async def table(self, name: str) -> TableClient:
        """The client of table ``name``, created in storage the first time this process asks for it."""
        if self._closed:
            raise RuntimeError("TableService is closed")
        key = (self._account, name.lower())
        client = self._tables.get(name)
        if client is None:
            client = self._tables[name] = self._client.get_table_client(name)
        if key not in _created:
            lock = self._locks.setdefault(name, asyncio.Lock())
            async with lock:  # racing coroutines wait for the one creating the table
                if key not in _created:
                    try:
                        await client.create_table()
                    except ResourceExistsError:  # another instance (or process) created it first
                        pass
                    _created.add(key)
        return client

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in self._tables.values():
            await client.close()
        self._tables.clear()
        await self._client.close()

    async def __aenter__(self) -> "TableService":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


