"""DataverseClient against the Dataverse emulator (real HTTP on loopback): CRUD, etags, chosen ids, paging,
get_many, $batch with changesets, faults, filter injection."""
from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from emulators.server import DEFAULT_TOKEN
from sync import odata
from sync.adapters.auth import StaticTokenProvider
from sync.adapters.dataverse import DataverseClient, etag_of
from sync.adapters.transport import BatchOp, RetryPolicy
from sync.errors import (UpstreamConcurrency, UpstreamNotFound, UpstreamOutcomeUnknown, UpstreamThrottled,
                         UpstreamUnauthorized, UpstreamValidation)
from sync.settings import Settings
from tests.conftest import BC_COMPANY_ID

FAST = RetryPolicy(max_attempts=5, max_total_wait=2.0, base_delay=0.01, max_delay=0.05)


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        yield client


def settings_for(emu) -> Settings:
    return Settings(bc_api_base_url="http://127.0.0.1:9/v2.0/t/e/api/v2.0", bc_company_id=BC_COMPANY_ID,
                    dataverse_url=emu.url, storage_connection="unused", local_dev_token=DEFAULT_TOKEN)


@pytest.fixture
def dv(dv_emulator, http) -> DataverseClient:
    return DataverseClient.from_settings(settings_for(dv_emulator), http=http, retry=FAST)


async def test_crud_round_trip_with_etags(dv, dv_emulator):
    created = await dv.create("accounts", {"name": "Client O'Hara", "address1_city": "Seattle"})
    row_id = created["accountid"]
    assert set(created) == {"accountid"} and dv_emulator.get("accounts", row_id)["name"] == "Client O'Hara"

    row = await dv.get("accounts", row_id, select=["name", "address1_city"])
    assert row["name"] == "Client O'Hara" and etag_of(row).startswith('W/"')

    assert await dv.update("accounts", row_id, {"address1_city": "Boston"}, etag=etag_of(row)) is None
    fresh = await dv.update("accounts", row_id, {"telephone1": "555"}, return_representation=True,
                            select=["address1_city", "telephone1"])
    assert fresh["address1_city"] == "Boston" and fresh["telephone1"] == "555"

    requests_before = dv_emulator.stats.requests
    with pytest.raises(UpstreamConcurrency) as ei:  # stale etag: 412, never retried
        await dv.update("accounts", row_id, {"name": "x"}, etag=etag_of(row))
    assert ei.value.status == 412 and ei.value.api_code == "0x80060882"
    assert dv_emulator.stats.requests == requests_before + 1

    assert await dv.delete("accounts", row_id, etag=etag_of(fresh)) is True
    assert dv_emulator.get("accounts", row_id) is None
    with pytest.raises(UpstreamNotFound) as nf:
        await dv.get("accounts", row_id)
    assert nf.value.api_code == "0x80040217" and nf.value.message == f"account With Id = {row_id} Does Not Exist"
    assert await dv.delete("accounts", row_id, missing_ok=True) is False


async def test_update_of_a_missing_row_does_not_create_it(dv, dv_emulator):
    ghost = str(uuid.uuid4())
    with pytest.raises(UpstreamNotFound):
        await dv.update("accounts", ghost, {"name": "Ghost"})
    assert dv_emulator.get("accounts", ghost) is None
    await dv.upsert("accounts", ghost, {"name": "Ghost"})  # the explicit upsert does create it
    assert dv_emulator.get("accounts", ghost)["name"] == "Ghost"


async def test_create_with_chosen_id_and_representation(dv, dv_emulator):
    chosen = uuid.uuid4()
    row = await dv.create("contacts", {"firstname": "Ada", "lastname": "Lovelace"}, id=chosen,
                          return_representation=True, select=["fullname", "lastname"])
    assert row["contactid"] == str(chosen) and row["lastname"] == "Lovelace" and etag_of(row)
    with pytest.raises(UpstreamConcurrency) as ei:  # the same chosen id again: refused, no second row
        await dv.create("contacts", {"lastname": "Again"}, id=chosen)
    assert ei.value.api_code == "0x80040237"  # DuplicateRecord
    assert len(dv_emulator.find("contacts", lastname="Again")) == 0


async def test_validation_error_is_typed_and_not_retried(dv, dv_emulator):
    before = dv_emulator.stats.requests
    with pytest.raises(UpstreamValidation) as ei:
        await dv.create("accounts", {"name": "x", "no_such_column": 1})
    assert ei.value.status == 400 and ei.value.api_code
    assert dv_emulator.stats.requests == before + 1


async def test_wrong_token_is_unauthorized(dv_emulator, http):
    client = DataverseClient.from_settings(settings_for(dv_emulator), http=http,
                                           tokens=StaticTokenProvider("wrong"), retry=FAST)
    with pytest.raises(UpstreamUnauthorized) as ei:
        await client.list_all("accounts", select=["name"])
    assert ei.value.status == 401 and dv_emulator.stats.requests == 1


async def test_paging_across_small_pages(dv, dv_emulator):
    expected = {a["accountid"] for a in dv_emulator.all("accounts")}
    pages = [p async for p in dv.iter_pages("accounts", select=["name"], page_size=7)]
    assert len(pages) == -(-len(expected) // 7) and all(len(p) <= 7 for p in pages)
    got = [r["accountid"] for p in pages for r in p]
    assert len(got) == len(expected) and set(got) == expected


async def test_get_many_over_several_chunks(dv_emulator, http):
    client = DataverseClient.from_settings(settings_for(dv_emulator), http=http, retry=FAST, max_url_length=1200)
    accounts = dv_emulator.all("accounts")
    ids = [a["accountid"] for a in accounts] + [str(uuid.uuid4()) for _ in range(5)]
    got = await client.get_many("accounts", ids, select=["name"])
    assert set(got) == {a["accountid"] for a in accounts}
    assert got[accounts[0]["accountid"]]["name"] == accounts[0]["name"]
    assert client.counters.requests >= 3


async def test_batch_over_1000_operations_is_split(dv, dv_emulator):
    before = len(dv_emulator.all("contacts"))
    ids = [str(uuid.uuid4()) for _ in range(1010)]
    ops = [BatchOp.create("contacts", {"lastname": f"Batch {i}"}, id=ids[i]) for i in range(1010)]
    ops[500] = BatchOp.create("contacts", {"lastname": "x", "no_such_column": 1}, id=ids[500])
    results = await dv.batch(ops)
    assert dv_emulator.stats.by_method["POST"] == 2
    assert [r.id for r in results] == ids
    assert [r.ok for r in results].count(False) == 1 and isinstance(results[500].error, UpstreamValidation)
    assert len(dv_emulator.all("contacts")) == before + 1009
    assert dv_emulator.get("contacts", ids[1009])["lastname"] == "Batch 1009"

    out = await dv.batch([BatchOp.get("contacts", ids[0], select=["lastname"]),
                          BatchOp.update("contacts", ids[1], {"firstname": "B"}, return_representation=True),
                          BatchOp.update("contacts", ids[2], {"firstname": "C"}, etag='W/"1"'),
                          BatchOp.delete("contacts", ids[3]),
                          BatchOp.delete("contacts", str(uuid.uuid4()))])
    assert out[0].ok and out[0].body["lastname"] == "Batch 0"
    assert out[1].ok and out[1].body["firstname"] == "B"
    assert isinstance(out[2].error, UpstreamConcurrency)
    assert out[3].ok and dv_emulator.get("contacts", ids[3]) is None
    assert isinstance(out[4].error, UpstreamNotFound)


async def test_changeset_is_atomic_and_surfaced_per_operation(dv, dv_emulator):
    acc = str(uuid.uuid4())
    results = await dv.batch([
        BatchOp.create("accounts", {"name": "Atomic Parent"}, id=acc, group="a"),
        BatchOp.create("contacts", {"lastname": "Atomic Child",
                                    "parentcustomerid_account@odata.bind": f"/accounts({acc})"}, group="a"),
        BatchOp.create("accounts", {"name": "Doomed"}, group="b"),
        BatchOp.create("accounts", {"name": "Doomed too", "no_such_column": 1}, group="b"),
        BatchOp.create("accounts", {"name": "Independent"}),
    ])
    assert results[0].ok and results[0].id == acc and results[1].ok
    child = dv_emulator.get("contacts", results[1].id)
    assert child["_parentcustomerid_value"] == acc
    assert not results[2].ok and not results[3].ok
    assert results[2].error.details["rolledBack"] is True and results[2].status == 400
    assert dv_emulator.find("accounts", name="Doomed") == []
    assert results[4].ok and dv_emulator.get("accounts", results[4].id)["name"] == "Independent"


# --- faults -------------------------------------------------------------------------------------------------
async def test_429_storm_with_retry_after_is_ridden_out(dv, dv_emulator):
    dv_emulator.inject("status", status=429, retry_after=0.05, times=3)
    assert await dv.list_all("accounts", select=["name"])
    assert dv_emulator.stats.requests == 4
    assert dv.counters.throttled == 3


async def test_spent_budget_ends_in_throttled(dv_emulator, http):
    client = DataverseClient.from_settings(settings_for(dv_emulator), http=http,
                                           retry=RetryPolicy(max_attempts=3, max_total_wait=1.0))
    dv_emulator.inject("status", status=429, retry_after=0.05, times=10)
    with pytest.raises(UpstreamThrottled) as ei:
        await client.list_all("accounts", select=["name"])
    assert ei.value.retry_after == 0.05 and ei.value.api_code == "0x80072322"
    assert dv_emulator.stats.requests == 3


@pytest.mark.parametrize("status, cls", [(400, UpstreamValidation), (404, UpstreamNotFound),
                                         (412, UpstreamConcurrency)])
async def test_client_errors_are_not_retried(dv, dv_emulator, status, cls):
    dv_emulator.inject("status", status=status, times=5)
    with pytest.raises(cls):
        await dv.update("accounts", uuid.uuid4(), {"name": "x"})
    assert dv_emulator.stats.requests == 1


async def test_dropped_connection_on_create_is_not_replayed(dv, dv_emulator):
    chosen = str(uuid.uuid4())
    dv_emulator.inject("drop_after", match=lambda r: r.method == "POST")
    with pytest.raises(UpstreamOutcomeUnknown):
        await dv.create("accounts", {"name": "Exactly Once Inc"}, id=chosen)
    assert len(dv_emulator.find("accounts", name="Exactly Once Inc")) == 1
    assert dv_emulator.stats.by_method["POST"] == 1
    # crash-safe create: the caller chose the id, so it can see the create happened
    assert (await dv.get_or_none("accounts", chosen, select=["name"]))["name"] == "Exactly Once Inc"


async def test_dropped_connection_on_batch_with_creates_is_outcome_unknown(dv, dv_emulator):
    dv_emulator.inject("drop_after", match=lambda r: r.method == "POST")
    results = await dv.batch([BatchOp.create("accounts", {"name": "Batch Once"})])
    assert isinstance(results[0].error, UpstreamOutcomeUnknown)
    assert len(dv_emulator.find("accounts", name="Batch Once")) == 1
    assert dv_emulator.stats.requests == 1


async def test_drop_before_processing_on_get_is_retried(dv, dv_emulator):
    dv_emulator.inject("drop", match=lambda r: r.method == "GET", times=2)
    assert await dv.list_all("accounts", select=["name"])
    assert dv_emulator.stats.requests == 3


# --- injection ----------------------------------------------------------------------------------------------
HOSTILE = ["x' or name ne 'x", "') or (1 eq 1", "a or b", "' or '' eq '", "O'Brien & Sons",
           "%27%20or%201%20eq%201", "x&$top=1000", "100% + more", "x)", "(", "#frag", ""]


@pytest.mark.parametrize("value", HOSTILE + ["<guid>"])
async def test_hostile_filter_values_match_only_exactly(dv, dv_emulator, value):
    """The query returns the one row with exactly this name (case-insensitively, as Dataverse compares), or
    nothing: never a wider set."""
    if value == "<guid>":
        value = dv_emulator.all("accounts")[0]["accountid"]  # a GUID-looking name stays a string
    created = dv_emulator.create("accounts", {"name": value}) if value else None
    found = await dv.find("accounts", odata.eq("name", value), select=["name"])
    assert [f["accountid"] for f in found] == ([created["accountid"]] if created else [])
    both = await dv.find("accounts", odata.and_(odata.eq("name", value), odata.eq("statecode", 0)))
    assert len(both) <= 1


async def test_guid_text_and_guid_literal(dv, dv_emulator):
    acc = dv_emulator.all("accounts")[5]
    found = await dv.find("accounts", odata.eq("accountid", odata.Guid(acc["accountid"])), select=["name"])
    assert [f["accountid"] for f in found] == [acc["accountid"]]
    with pytest.raises(UpstreamValidation):  # quoted GUID vs Edm.Guid: refused, nothing widens
        await dv.find("accounts", odata.eq("accountid", acc["accountid"]))


async def test_client_concurrency_limit_keeps_within_the_service_limit(http):
    """Dataverse refuses requests beyond its concurrency limit at once (429); the client's limit avoids it."""
    from emulators.dataverse import DataverseEmulator
    from emulators.server import RateLimit

    with DataverseEmulator(seed=False, rate_limit=RateLimit(max_concurrent=3), latency=0.02) as emu:
        client = DataverseClient.from_settings(settings_for(emu), http=http, retry=FAST, concurrency=3)
        ids = [str(uuid.uuid4()) for _ in range(12)]
        results = await asyncio.gather(*(client.get_or_none("accounts", i) for i in ids))
        assert results == [None] * 12
        assert emu.stats.requests == 12 and emu.stats.throttled == 0
        assert client.transport.limiter.peak == 3
