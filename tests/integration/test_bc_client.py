"""BCClient against the BC emulator (real HTTP on loopback): CRUD, etags, paging, get_many, $batch, faults,
filter injection."""
from __future__ import annotations

import uuid

import httpx
import pytest

from emulators.server import DEFAULT_TOKEN
from sync import odata
from sync.adapters.auth import StaticTokenProvider
from sync.adapters.bc import BCClient, etag_of
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
    return Settings(bc_api_base_url=emu.base_url, bc_company_id=BC_COMPANY_ID, dataverse_url="http://127.0.0.1:9",
                    storage_connection="unused", local_dev_token=DEFAULT_TOKEN)


@pytest.fixture
def bc(bc_emulator, http) -> BCClient:
    return BCClient.from_settings(settings_for(bc_emulator), http=http, retry=FAST)


async def test_crud_round_trip_with_etags(bc, bc_emulator):
    rec = await bc.create("customers", {"displayName": "Client O'Hara", "city": "Seattle"})
    assert uuid.UUID(rec["id"]) and rec["number"] and etag_of(rec)
    assert bc_emulator.get("customers", rec["id"])["displayName"] == "Client O'Hara"

    got = await bc.get("customers", rec["id"], select=["id", "displayName"])
    assert got["displayName"] == "Client O'Hara" and etag_of(got) == etag_of(rec)

    updated = await bc.update("customers", rec["id"], {"city": "Boston"}, etag=etag_of(rec))
    assert updated["city"] == "Boston" and etag_of(updated) != etag_of(rec)

    requests_before = bc_emulator.stats.requests
    with pytest.raises(UpstreamConcurrency) as ei:  # stale etag: 409 Request_EntityChanged, never retried
        await bc.update("customers", rec["id"], {"city": "Miami"}, etag=etag_of(rec))
    assert ei.value.api_code == "Request_EntityChanged" and ei.value.status == 409
    assert ei.value.message == "Another user has already changed the record."
    assert "CorrelationId" in ei.value.api_message and ei.value.details["correlationId"]
    assert bc_emulator.stats.requests == requests_before + 1

    assert await bc.delete("customers", rec["id"], etag_of(updated)) is True
    assert bc_emulator.get("customers", rec["id"]) is None
    with pytest.raises(UpstreamNotFound) as nf:
        await bc.get("customers", rec["id"])
    assert nf.value.api_code == "BadRequest_ResourceNotFound"
    assert await bc.get_or_none("customers", rec["id"]) is None
    assert await bc.delete("customers", rec["id"], "*", missing_ok=True) is False


async def test_validation_error_is_typed_and_not_retried(bc, bc_emulator):
    before = bc_emulator.stats.requests
    with pytest.raises(UpstreamValidation) as ei:
        await bc.create("customers", {"city": "Nowhere"})
    assert ei.value.status == 400 and ei.value.message == 'A "displayName" must be provided.'
    assert bc_emulator.stats.requests == before + 1


async def test_wrong_token_is_unauthorized(bc_emulator, http):
    client = BCClient.from_settings(settings_for(bc_emulator), http=http, tokens=StaticTokenProvider("wrong"),
                                    retry=FAST)
    with pytest.raises(UpstreamUnauthorized) as ei:
        await client.list_all("currencies")
    assert ei.value.api_code == "Authentication_InvalidCredentials"
    assert bc_emulator.stats.requests == 1


async def test_paging_across_small_pages(bc, bc_emulator):
    expected = [c["id"] for c in bc_emulator.all("customers")]
    pages = [p async for p in bc.iter_pages("customers", select=["id", "number"], page_size=7)]
    assert len(pages) == -(-len(expected) // 7) and all(len(p) <= 7 for p in pages)
    assert [r["id"] for p in pages for r in p] == expected
    assert bc.counters.requests == len(pages)


async def test_find_by_filter(bc, bc_emulator):
    some = bc_emulator.all("customers")[3]
    found = await bc.find("customers", odata.eq("number", some["number"]), select=["id", "number"])
    assert [f["id"] for f in found] == [some["id"]]


async def test_get_many_over_several_chunks(bc_emulator, http):
    client = BCClient.from_settings(settings_for(bc_emulator), http=http, retry=FAST, max_url_length=1200)
    customers = bc_emulator.all("customers")
    ids = [c["id"] for c in customers] + [str(uuid.uuid4()) for _ in range(5)]
    got = await client.get_many("customers", ids, select=["displayName"])
    assert set(got) == {c["id"] for c in customers}
    assert got[customers[0]["id"]]["displayName"] == customers[0]["displayName"]
    assert client.counters.requests >= 3  # 55 ids cannot fit one 1200-character URL


async def test_batch_over_100_operations_is_split(bc, bc_emulator):
    before = bc_emulator.count("customers")
    names = [f"Batch {i:03d}" for i in range(230)]
    ops = [BatchOp.create("customers", {"displayName": n}) for n in names]
    ops[120] = BatchOp.create("customers", {"displayName": "x", "email": "not an email"})
    results = await bc.batch(ops)
    assert bc_emulator.stats.by_method["POST"] == 3  # 100 + 100 + 30
    assert [r.ok for r in results].count(False) == 1 and not results[120].ok
    assert isinstance(results[120].error, UpstreamValidation)
    assert results[120].error.message == 'The email address "not an email" is not valid.'
    for i in (0, 99, 100, 229):
        assert results[i].status == 201 and results[i].body["displayName"] == names[i]
        assert bc_emulator.get("customers", results[i].id)["displayName"] == names[i]
    assert bc_emulator.count("customers") == before + 229

    upd = await bc.batch([BatchOp.update("customers", results[0].id, {"city": "Dallas"}, etag=results[0].etag),
                          BatchOp.update("customers", results[1].id, {"city": "Dallas"}, etag='W/"stale"'),
                          BatchOp.delete("customers", uuid.uuid4(), etag="*"),
                          BatchOp.get("customers", results[2].id, select=["displayName"])])
    assert upd[0].ok and upd[0].body["city"] == "Dallas" and upd[0].etag != results[0].etag
    assert isinstance(upd[1].error, UpstreamConcurrency)
    assert isinstance(upd[2].error, UpstreamNotFound)
    assert upd[3].ok and upd[3].body["displayName"] == names[2]


async def test_batch_group_is_all_or_nothing(bc, bc_emulator):
    before = bc_emulator.count("customers")
    results = await bc.batch([BatchOp.create("customers", {"displayName": "Kept?"}, group="g"),
                              BatchOp.create("customers", {"displayName": "y", "email": "bad"}, group="g")])
    assert not results[0].ok and not results[1].ok  # BC answered 201 for the first, then rolled it back
    assert isinstance(results[0].error, UpstreamValidation) and results[0].error.details["rolledBack"] is True
    assert results[0].error.message.startswith("rolled back with its group: The email address")
    assert bc_emulator.count("customers") == before


# --- faults -------------------------------------------------------------------------------------------------
async def test_429_storm_with_retry_after_is_ridden_out(bc, bc_emulator):
    bc_emulator.inject("status", status=429, retry_after=0.05, times=3)
    records = await bc.list_all("currencies")
    assert records
    assert bc_emulator.stats.requests == 4
    assert bc.counters.throttled == 3 and bc.counters.retries == 3


async def test_spent_budget_ends_in_throttled(bc_emulator, http):
    client = BCClient.from_settings(settings_for(bc_emulator), http=http,
                                    retry=RetryPolicy(max_attempts=3, max_total_wait=1.0))
    bc_emulator.inject("status", status=429, retry_after=0.05, times=10)
    with pytest.raises(UpstreamThrottled) as ei:
        await client.list_all("currencies")
    assert ei.value.retry_after == 0.05 and ei.value.status == 429
    assert bc_emulator.stats.requests == 3


@pytest.mark.parametrize("status, cls", [(400, UpstreamValidation), (404, UpstreamNotFound),
                                         (409, UpstreamConcurrency), (412, UpstreamConcurrency)])
async def test_client_errors_are_not_retried(bc, bc_emulator, status, cls):
    bc_emulator.inject("status", status=status, times=5)
    with pytest.raises(cls):
        await bc.list_all("currencies")
    assert bc_emulator.stats.requests == 1


async def test_dropped_connection_on_create_is_not_replayed(bc, bc_emulator):
    before = bc_emulator.count("customers")
    bc_emulator.inject("drop_after", match=lambda r: r.method == "POST")
    with pytest.raises(UpstreamOutcomeUnknown):
        await bc.create("customers", {"displayName": "Exactly Once Ltd"})
    matches = [c for c in bc_emulator.all("customers") if c["displayName"] == "Exactly Once Ltd"]
    assert len(matches) == 1 and bc_emulator.count("customers") == before + 1
    assert bc_emulator.stats.by_method["POST"] == 1
    # the caller resolves the unknown outcome by the marker it set, not by posting again
    assert [r["id"] for r in await bc.find("customers", odata.eq("displayName", "Exactly Once Ltd"))] == \
        [matches[0]["id"]]


async def test_dropped_connection_on_batch_with_creates_is_outcome_unknown(bc, bc_emulator):
    bc_emulator.inject("drop_after", match=lambda r: r.method == "POST")
    results = await bc.batch([BatchOp.create("customers", {"displayName": "Batch Once"})])
    assert isinstance(results[0].error, UpstreamOutcomeUnknown)
    assert len([c for c in bc_emulator.all("customers") if c["displayName"] == "Batch Once"]) == 1
    assert bc_emulator.stats.requests == 1


async def test_drop_before_processing_on_get_is_retried(bc, bc_emulator):
    bc_emulator.inject("drop", match=lambda r: r.method == "GET", times=2)
    assert await bc.list_all("currencies")
    assert bc_emulator.stats.requests == 3


async def test_dropped_answer_to_patch_is_retried(bc, bc_emulator):
    cust = bc_emulator.all("customers")[0]
    bc_emulator.inject("drop_after", match=lambda r: r.method == "PATCH")
    out = await bc.update("customers", cust["id"], {"city": "Denver"}, etag="*")
    assert out["city"] == "Denver" and bc_emulator.stats.by_method["PATCH"] == 2


# --- injection ----------------------------------------------------------------------------------------------
HOSTILE = ["x' or displayName ne 'x", "') or (1 eq 1", "a or b", "' or '' eq '", "Margie's Travel",
           "%27%20or%201%20eq%201", "x&$top=1000", "*", "A|B", "A..Z", "@*", "x)", "(", "a+b c", ""]


@pytest.mark.parametrize("value", HOSTILE + ["<guid>"])
async def test_hostile_filter_values_match_only_exactly(bc, bc_emulator, value):
    """The query returns the one record with exactly this name, or nothing: never a wider set."""
    if value == "<guid>":
        value = bc_emulator.all("customers")[0]["id"]  # a GUID-looking name stays a string
    created = None
    if value:
        created = bc_emulator.create("customers", {"displayName": value})
    found = await bc.find("customers", odata.eq("displayName", value), select=["id", "displayName"])
    assert [f["id"] for f in found] == ([created["id"]] if created else [])
    both = await bc.find("customers", odata.and_(odata.eq("displayName", value), odata.eq("blocked", "_x0020_")))
    assert len(both) <= 1


async def test_guid_text_and_guid_literal(bc, bc_emulator):
    cust = bc_emulator.all("customers")[5]
    found = await bc.find("customers", odata.eq("id", odata.Guid(cust["id"])))
    assert [f["id"] for f in found] == [cust["id"]]
    with pytest.raises(UpstreamValidation):  # quoted GUID vs Edm.Guid: the service refuses, nothing widens
        await bc.find("customers", odata.eq("id", cust["id"]))
