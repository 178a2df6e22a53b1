"""The composition root: settings, API clients and stores, built once per event loop at first use.

Azure Functions runs every async function of a worker process on one event loop, so in Azure this is one set of
clients per process (keep-alive connections, one token cache). Tests run each test on its own loop and get their
own set; ``close_runtime()`` releases it. Nothing is built at import time.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from coupling.intents import CreateIntentStore
from coupling.jobs import JobStore
from coupling.leases import LeaseStore
from coupling.mapping_store import MappingSettingsStore
from coupling.runs import RunStore
from coupling.store import CouplingStore
from coupling.tables import TableNames, TableService
from coupling.watermarks import WatermarkStore

from . import errors, odata
from .adapters.bc import BCClient
from .adapters.dataverse import DataverseClient
from .adapters.transport import aclose_http_client
from .mapping_defaults import effective_mappings
from .mappings import TableMapping
from .settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    bc: BCClient
    dataverse: DataverseClient
    tables: TableService
    names: TableNames
    couplings: CouplingStore
    mapping_settings: MappingSettingsStore
    intents: CreateIntentStore
    jobs: JobStore
    watermarks: WatermarkStore
    leases: LeaseStore
    runs: RunStore
    _lcy: tuple[str, str | None] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> "Runtime":
        tables = TableService.from_settings(settings)
        names = TableNames(settings.table_prefix)
        return cls(
            settings=settings,
            bc=BCClient.from_settings(settings),
            dataverse=DataverseClient.from_settings(settings),
            tables=tables,
            names=names,
            couplings=CouplingStore(tables, names),
            mapping_settings=MappingSettingsStore(tables, names),
            intents=CreateIntentStore(tables, names),
            jobs=JobStore(tables, names),
            watermarks=WatermarkStore(tables, names),
            leases=LeaseStore(tables, names),
            runs=RunStore(tables, names),
        )

    async def mappings(self) -> dict[str, TableMapping]:
        """The effective table mappings: defaults with the stored overrides (read each time, so a PATCH made on
        another instance is effective at once)."""
        stored = await self.mapping_settings.get_all()
        mappings, ignored = effective_mappings(stored)
        for line in ignored:
            log.warning("table mapping settings: %s", line)
        return mappings

    async def mapping(self, name: object, *, member: str = "mapping", in_path: bool = False) -> TableMapping:
        """One effective mapping by name. Unknown: 400 when named in a body, 404 when it is the URL's resource."""
        if not isinstance(name, str) or not name.strip():
            raise errors.RequestError(f"'{member}' is required: the name of a table mapping, e.g. CUSTOMER.",
                                      code="MissingField", details={"field": member})
        mappings = await self.mappings()
        found = mappings.get(name.strip().upper())
        if found is None:
            error = errors.NotFound if in_path else errors.RequestError
            raise error(f"Unknown table mapping '{name}'. Known: {', '.join(sorted(mappings))}.",
                        code="UnknownMapping", details={"field": member})
        return found

    async def lcy(self) -> tuple[str, str | None]:
        """``(LCY code, Dataverse transactioncurrency id of that ISO code or None)``, read once per runtime.

        The code is BC's local currency (``companyInformation.currencyCode``); BC's LCY rule maps blank BC currency
        codes to that Dataverse currency and back.
        """
        if self._lcy is None:
            info = await self.bc.list_all("companyInformation", select=["currencyCode"])
            code = (info[0].get("currencyCode") or "").strip().upper() if info else ""
            if not code:
                raise errors.UpstreamError("bc", "Business Central's companyInformation has no currencyCode "
                                                 "(the local currency code).")
            rows = await self.dataverse.list_all(
                "transactioncurrencies", filter=odata.eq("isocurrencycode", code),
                select=["transactioncurrencyid"])
            self._lcy = (code, str(rows[0]["transactioncurrencyid"]).lower() if rows else None)
        return self._lcy

    async def close(self) -> None:
        await self.tables.close()


_runtimes: dict[asyncio.AbstractEventLoop, Runtime] = {}


def get_runtime() -> Runtime:
    """The running loop's runtime, built from the settings at first use."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is None:
        runtime = _runtimes[loop] = Runtime.build(get_settings())
    return runtime


async def close_runtime() -> None:
    """Release the running loop's runtime and HTTP client (tests, shutdown)."""
    runtime = _runtimes.pop(asyncio.get_running_loop(), None)
    if runtime is not None:
        await runtime.close()
    await aclose_http_client()
