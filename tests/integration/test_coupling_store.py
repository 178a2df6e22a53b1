"""The coupling store against a real Azurite (one per test process; tables unique per test)."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from azure.data.tables import TableTransactionError

from coupling.store import (
    MAX_ERROR_CHARS, RESULT_FAILURE, RESULT_SUCCESS, Coupling, CouplingChanged, CouplingExists, CouplingStore,
)
from coupling.tables import TableNames, TableService
from sync.errors import Conflict, RequestError

CUSTOMER = "CUSTOMER"


def gid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def store(service, names):
    return CouplingStore(service, names)


async def rows(service, names) -> list[dict]:
    table = await service.table(names.couplings)
    return [e async for e in table.list_entities()]


async def create_many(store, mapping, n) -> list[Coupling]:
    return list(await asyncio.gather(*(store.create(Coupling(mapping, gid(), gid())) for _ in range(n))))


# --- create and look up -----------------------------------------------------------------------------------------------
async def test_create_then_look_up_by_either_id(store, service, names):
    bc, dv = gid(), gid()
    created = await store.create(Coupling(CUSTOMER, bc.upper(), "{" + dv + "}"))
    assert (created.bc_id, created.dataverse_id) == (bc, dv)
    assert created.coupled_at is not None and created.coupled_at.tzinfo is not None
    assert created.etag and all(created.etag)

    by_bc = await store.get_by_bc(CUSTOMER, bc.upper())
    by_dv = await store.get_by_dataverse(CUSTOMER, dv)
    assert by_bc == created and by_dv == created
    assert by_bc.etag[0] and by_dv.etag[1]

    assert await store.get_by_bc(CUSTOMER, gid()) is None
    assert await store.get_by_dataverse(CUSTOMER, bc) is None  # a BC id is not a Dataverse id
    assert await store.get_by_bc("VENDOR", bc) is None  # couplings are per mapping
    stored = await rows(service, names)
    assert sorted(r["RowKey"] for r in stored) == [f"bc_{bc}", f"dv_{dv}"]


async def test_same_record_may_be_coupled_once_per_mapping(store):
    bc, dv = gid(), gid()
    await store.create(Coupling(CUSTOMER, bc, dv))
    await store.create(Coupling("VENDOR", bc, dv))
    assert (await store.get_by_bc("VENDOR", bc)).mapping == "VENDOR"


async def test_coupling_a_coupled_bc_record_fails_and_writes_nothing(store, service, names):
    first = await store.create(Coupling(CUSTOMER, gid(), gid()))
    other_dv = gid()
    with pytest.raises(CouplingExists) as info:
        await store.create(Coupling(CUSTOMER, first.bc_id, other_dv))
    assert isinstance(info.value, Conflict)
    assert info.value.side == "bc" and info.value.existing == first
    assert info.value.details["dataverseId"] == first.dataverse_id
    assert await store.get_by_dataverse(CUSTOMER, other_dv) is None
    assert len(await rows(service, names)) == 2


async def test_coupling_a_coupled_dataverse_row_fails_and_writes_nothing(store, service, names):
    first = await store.create(Coupling(CUSTOMER, gid(), gid()))
    other_bc = gid()
    with pytest.raises(CouplingExists) as info:
        await store.create(Coupling(CUSTOMER, other_bc, first.dataverse_id))
    assert info.value.side == "dataverse" and info.value.existing == first
    assert await store.get_by_bc(CUSTOMER, other_bc) is None
    assert len(await rows(service, names)) == 2


async def test_coupling_the_same_pair_twice_names_the_existing_one(store):
    first = await store.create(Coupling(CUSTOMER, gid(), gid(), to_result=RESULT_SUCCESS))
    with pytest.raises(CouplingExists) as info:
        await store.create(Coupling(CUSTOMER, first.bc_id, first.dataverse_id))
    assert info.value.existing == first  # the caller can tell "already coupled as asked"


@pytest.mark.parametrize("shared", ["bc", "dataverse"])
async def test_concurrent_creates_for_one_record_exactly_one_wins(store, service, names, shared):
    record = gid()
    attempts = [Coupling(CUSTOMER, record, gid()) if shared == "bc" else Coupling(CUSTOMER, gid(), record)
                for _ in range(20)]
    results = await asyncio.gather(*(store.create(c) for c in attempts), return_exceptions=True)
    winners = [r for r in results if isinstance(r, Coupling)]
    losers = [r for r in results if isinstance(r, CouplingExists)]
    assert len(winners) == 1 and len(losers) == 19, results
    assert all(e.existing == winners[0] and e.side == shared for e in losers)
    stored = await rows(service, names)
    assert len(stored) == 2
    assert {r["BcId"] for r in stored} == {winners[0].bc_id}
    assert {r["DataverseId"] for r in stored} == {winners[0].dataverse_id}


# --- update -----------------------------------------------------------------------------------------------------------
async def test_update_round_trips_every_field(store):
    created = await store.create(Coupling(CUSTOMER, gid(), gid()))
    cest = timezone(timedelta(hours=2))
    changed = Coupling(
        CUSTOMER, created.bc_id, created.dataverse_id,
        bc_modified_on=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),
        dataverse_modified_on=datetime(2024, 5, 1, 14, 0, 1, 999999, tzinfo=cest),
        to_result=RESULT_SUCCESS, to_job_id="job-to-1", from_result=RESULT_FAILURE, from_job_id="job-from-2",
        skipped=True, last_error="Customer 10000: Name is required", coupled_at=created.coupled_at,
        etag=created.etag)
    updated = await store.update(changed)
    assert updated == changed and updated.etag != created.etag
    for read in (await store.get_by_bc(CUSTOMER, created.bc_id),
                 await store.get_by_dataverse(CUSTOMER, created.dataverse_id)):
        assert read == changed
        assert read.dataverse_modified_on == datetime(2024, 5, 1, 12, 0, 1, 999999, tzinfo=timezone.utc)
        assert read.bc_modified_on.microsecond == 123456
        assert type(read.bc_modified_on) is datetime and read.bc_modified_on.tzinfo == timezone.utc

    # replace semantics: fields set to None are cleared on both rows
    cleared = Coupling(CUSTOMER, created.bc_id, created.dataverse_id, coupled_at=created.coupled_at,
                       etag=(None, updated.etag[1]))
    await store.update(cleared)
    assert await store.get_by_bc(CUSTOMER, created.bc_id) == cleared
    assert await store.get_by_dataverse(CUSTOMER, created.dataverse_id) == cleared


async def test_long_error_is_truncated_in_storage(store):
    c = await store.create(Coupling(CUSTOMER, gid(), gid()))
    c.last_error = "x" * 40_000  # changed after construction: still cut when written
    await store.update(c)
    assert len((await store.get_by_bc(CUSTOMER, c.bc_id)).last_error) == MAX_ERROR_CHARS


async def test_update_of_an_uncoupled_record_raises_and_creates_nothing(store, service, names):
    c = await store.create(Coupling(CUSTOMER, gid(), gid()))
    assert await store.delete(c)
    with pytest.raises(CouplingChanged) as info:
        await store.update(c)
    assert info.value.gone and isinstance(info.value, Conflict)
    with pytest.raises(CouplingChanged):
        await store.update(Coupling(CUSTOMER, c.bc_id, c.dataverse_id))  # unconditional: still must exist
    assert await rows(service, names) == []


class _FakeTable:
    """Records transactions and fails them like Azure Storage does for a stale If-Match in an EGT."""

    def __init__(self, status: int, code: str):
        self.status, self.code, self.calls = status, code, []

    async def submit_transaction(self, ops):
        self.calls.append(list(ops))
        err = TableTransactionError(message=f"0:{self.code}")
        err.status_code, err.error_code = self.status, self.code
        raise err


class _FakeService:
    def __init__(self, table):
        self._t = table

    async def table(self, name):
        return self._t


async def test_stale_etag_in_the_transaction_maps_to_coupling_changed():
    """Azurite may ignore If-Match inside EGTs (Azurite#1233), so the 412 path is checked with a fake table."""
    fake = _FakeTable(412, "UpdateConditionNotSatisfied")
    store = CouplingStore(_FakeService(fake), TableNames("fake"))
    c = Coupling(CUSTOMER, gid(), gid(), etag=('W/"bc-etag"', None))
    with pytest.raises(CouplingChanged) as info:
        await store.update(c)
    assert not info.value.gone
    (ops,) = fake.calls
    (_, bc_entity, bc_opts), (_, dv_entity, dv_opts) = ops
    assert bc_entity["RowKey"] == f"bc_{c.bc_id}" and bc_opts["etag"] == 'W/"bc-etag"'
    assert dv_entity["RowKey"] == f"dv_{c.dataverse_id}" and "etag" not in dv_opts  # If-Match: * (must exist)
    assert str(bc_opts["match_condition"]).endswith("IfNotModified")


# --- delete -----------------------------------------------------------------------------------------------------------
async def test_delete_removes_both_rows_and_is_idempotent(store, service, names):
    keep = await store.create(Coupling(CUSTOMER, gid(), gid()))
    c = await store.create(Coupling(CUSTOMER, gid(), gid()))
    assert await store.delete(c) is True
    assert await store.get_by_bc(CUSTOMER, c.bc_id) is None
    assert await store.get_by_dataverse(CUSTOMER, c.dataverse_id) is None
    assert await store.delete(c) is False
    assert await store.delete(Coupling(CUSTOMER, c.bc_id, c.dataverse_id)) is False
    assert len(await rows(service, names)) == 2 and await store.get_by_bc(CUSTOMER, keep.bc_id) == keep


async def test_delete_after_a_concurrent_update_still_uncouples(store):
    c = await store.create(Coupling(CUSTOMER, gid(), gid()))
    await store.update(Coupling(CUSTOMER, c.bc_id, c.dataverse_id, skipped=True, etag=c.etag))
    assert await store.delete(c) is True  # c's etag is stale: re-read, still the same pair, removed
    assert await store.get_by_bc(CUSTOMER, c.bc_id) is None


async def test_delete_of_a_stale_pair_never_touches_other_couplings(store, service, names):
    a, x = gid(), gid()
    stale = await store.create(Coupling(CUSTOMER, a, x))
    await store.delete(stale)
    y, b = gid(), gid()
    ay = await store.create(Coupling(CUSTOMER, a, y))
    bx = await store.create(Coupling(CUSTOMER, b, x))
    assert await store.delete(Coupling(CUSTOMER, a, x)) is False  # no etag: checked first
    assert await store.delete_many(CUSTOMER, [Coupling(CUSTOMER, a, x)]) == 0
    assert await store.get_by_bc(CUSTOMER, a) == ay and await store.get_by_dataverse(CUSTOMER, x) == bx
    assert len(await rows(service, names)) == 4


async def test_delete_many_in_transactions(store, service, names):
    couplings = await create_many(store, CUSTOMER, 130)
    keep = couplings[:10]
    gone = couplings[10:13]
    for c in gone:
        await store.delete(c)
    target = couplings[10:]
    unversioned = [Coupling(CUSTOMER, c.bc_id, c.dataverse_id) for c in target[-5:]]
    request = target[:-5] + unversioned + target[20:22]  # some gone, some without etag, some twice
    before = service.ops
    assert await store.delete_many(CUSTOMER, request) == 117
    used = service.ops - before
    # 3 transactions (50 + 50 + 17) + 5 reads for the unversioned + per gone coupling one failed transaction
    # and one single delete: far fewer requests than one per coupling
    assert used <= 3 + 5 + 2 * len(gone), used
    stored = await rows(service, names)
    assert len(stored) == 20
    assert {r["BcId"] for r in stored} == {c.bc_id for c in keep}
    assert await store.delete_many(CUSTOMER, target) == 0
    assert await store.delete_many(CUSTOMER, []) == 0


async def test_delete_many_refuses_couplings_of_another_mapping(store):
    c = await store.create(Coupling("VENDOR", gid(), gid()))
    with pytest.raises(RequestError):
        await store.delete_many(CUSTOMER, [c])
    assert await store.get_by_bc("VENDOR", c.bc_id) == c


# --- listing ----------------------------------------------------------------------------------------------------------
async def test_listing_pages_returns_each_coupling_once(store, service):
    created = await create_many(store, CUSTOMER, 250)
    await create_many(store, "VENDOR", 5)
    seen: list[Coupling] = []
    token = None
    pages = 0
    before = service.ops
    while True:
        items, token = await store.list(CUSTOMER, 100, token)
        pages += 1
        assert len(items) <= 100
        seen += items
        if token is None:
            break
        assert isinstance(token, str)
    assert pages >= 3
    assert service.ops - before == pages
    assert len(seen) == 250
    assert {c.bc_id for c in seen} == {c.bc_id for c in created}
    assert {c.dataverse_id for c in seen} == {c.dataverse_id for c in created}
    by_bc = {c.bc_id: c for c in created}
    assert all(c == by_bc[c.bc_id] and c.etag[0] for c in seen)

    paged = [len(p) async for p in store.iter_all(CUSTOMER, page_size=120)]
    assert sum(paged) == 250 and max(paged) <= 120


async def test_tampered_continuation_is_rejected(store):
    await create_many(store, CUSTOMER, 5)
    await create_many(store, "VENDOR", 5)
    _, token = await store.list(CUSTOMER, 2)
    _, vendor_token = await store.list("VENDOR", 2)
    assert token and vendor_token
    flipped = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    for bad in (flipped, token + "x", token[:-1], "not-a-token", vendor_token):
        with pytest.raises(RequestError):
            await store.list(CUSTOMER, 2, bad)
    with pytest.raises(RequestError):
        await store.list(CUSTOMER, 2, token, skipped=True)  # issued for another filter
    for size in (0, 1001, -1, "10", True):
        with pytest.raises(RequestError):
            await store.list(CUSTOMER, size)
    items, _ = await store.list(CUSTOMER, 2, token)
    assert len(items) == 2


async def test_skipped_listing(store):
    couplings = await create_many(store, CUSTOMER, 12)
    skipped = couplings[::4]
    for c in skipped:
        c.skipped = True
        c.from_result = RESULT_FAILURE
        await store.update(c)
    found = await store.list_skipped(CUSTOMER)
    assert sorted(c.bc_id for c in found) == sorted(c.bc_id for c in skipped)
    assert all(c.skipped for c in found)
    items, _ = await store.list(CUSTOMER, 100, skipped=False)
    assert len(items) == 9 and not any(c.skipped for c in items)
    assert await store.list_skipped("VENDOR") == []


@pytest.mark.parametrize("mapping", ["PAYMENT TERMS", "ITEM-PRODUCT", "a/b#c?d\\e", "Ünïcode ✓ 😀", "it's 100%",
                                     "tab\there"])
async def test_odd_mapping_names(store, service, names, mapping):
    c = await store.create(Coupling(mapping, gid(), gid()))
    other = await store.create(Coupling(mapping + "X", c.bc_id, c.dataverse_id))
    assert await store.get_by_bc(mapping, c.bc_id) == c
    assert await store.get_by_dataverse(mapping, c.dataverse_id) == c
    items, token = await store.list(mapping, 10)
    assert items == [c] and token is None and items[0].mapping == mapping
    assert await store.get_many_by_bc(mapping, [c.bc_id]) == {c.bc_id: c}
    assert await store.delete_many(mapping, [c]) == 1
    assert await store.get_by_bc(mapping + "X", c.bc_id) == other
    assert all("/" not in r["PartitionKey"] and "#" not in r["PartitionKey"] for r in await rows(service, names))


# --- many ids ---------------------------------------------------------------------------------------------------------
async def test_get_many_by_either_id(store, service):
    created = await create_many(store, CUSTOMER, 60)
    unknown = [gid() for _ in range(10)]
    ids = [c.bc_id.upper() for c in created] + unknown + [created[0].bc_id]
    before = service.ops
    found = await store.get_many_by_bc(CUSTOMER, ids)
    assert service.ops - before == 70  # one point read per distinct id
    assert found == {c.bc_id: c for c in created}
    found_dv = await store.get_many_by_dataverse(CUSTOMER, [c.dataverse_id for c in created[:30]] + unknown)
    assert found_dv == {c.dataverse_id: c for c in created[:30]}
    assert await store.get_many_by_bc(CUSTOMER, []) == {}


async def test_invalid_ids_are_rejected_before_any_request(store, service):
    await service.table(TableNames(store._names.prefix).couplings)
    before = service.ops
    with pytest.raises(RequestError):
        await store.get_many_by_bc(CUSTOMER, [gid(), "CUST-10000"])
    with pytest.raises(RequestError):
        await store.get_by_bc(CUSTOMER, "10000")
    with pytest.raises(RequestError):
        await store.get_by_dataverse(CUSTOMER, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(RequestError):
        await store.get_by_bc("", gid())
    assert service.ops == before


# --- the service ------------------------------------------------------------------------------------------------------
async def test_ops_counter_counts_requests(store, service, names):
    assert service.ops == 0
    c = await store.create(Coupling(CUSTOMER, gid(), gid()))
    assert service.ops == 2  # create table + one transaction
    await store.get_by_bc(CUSTOMER, c.bc_id)
    await store.get_by_dataverse(CUSTOMER, gid())
    assert service.ops == 4
    with pytest.raises(CouplingExists):
        await store.create(Coupling(CUSTOMER, c.bc_id, gid()))
    assert service.ops == 6  # failed transaction + reading the coupling in the way
    await store.list(CUSTOMER, 10)
    assert service.ops == 7


async def test_table_is_created_once_even_when_racing(azurite, table_prefix):
    a = TableService(azurite.connection_string, retry_total=1)
    b = TableService(azurite.connection_string, retry_total=1)
    try:
        name = f"{table_prefix}Race"
        clients = await asyncio.gather(*(svc.table(name) for svc in [a, b] * 10))
        assert all(c is clients[0] for c in clients[::2]) and all(c is clients[1] for c in clients[1::2])
        assert a.ops + b.ops <= 2  # at most one create per racing service, none afterwards
        await clients[0].upsert_entity({"PartitionKey": "p", "RowKey": "r"})
        assert [e["RowKey"] async for e in clients[1].list_entities()] == ["r"]
        before = a.ops
        await a.table(name)
        assert a.ops == before
    finally:
        await a.close()
        await b.close()


async def test_create_many_batches_and_falls_back_on_collisions(store, service, names):
    taken = Coupling(CUSTOMER, gid(), gid())
    await store.create(taken)
    batch = [Coupling(CUSTOMER, gid(), gid()) for _ in range(120)]
    clean = [Coupling(CUSTOMER, gid(), gid()) for _ in range(100)]
    ops_before = service.ops
    assert all(isinstance(r, Coupling) for r in await store.create_many(CUSTOMER, clean))
    assert service.ops - ops_before == 2  # 50 couplings per transaction when nothing is in the way
    clash = Coupling(CUSTOMER, gid(), taken.dataverse_id)  # the account is already coupled
    dup = Coupling(CUSTOMER, batch[0].bc_id, gid())  # the same BC id twice in one call
    results = await store.create_many(CUSTOMER, batch[:60] + [clash] + batch[60:] + [dup])
    assert len(results) == 122
    assert isinstance(results[60], CouplingExists) and results[60].existing.bc_id == taken.bc_id
    assert isinstance(results[121], CouplingExists) and results[121].side == "bc"
    assert all(isinstance(r, Coupling) for i, r in enumerate(results) if i not in (60, 121))
    for c in batch:
        assert (await store.get_by_dataverse(CUSTOMER, c.dataverse_id)).bc_id == c.bc_id
    assert len(await rows(service, names)) == 2 * (1 + 100 + 120)


# --- update_many ------------------------------------------------------------------------------------------------------
async def test_update_many_in_transactions(store, service):
    couplings = await create_many(store, CUSTOMER, 120)
    changed = [replace(c, to_result=RESULT_SUCCESS, to_job_id=f"job-{i}",
                       bc_modified_on=datetime(2024, 5, 1, 12, 0, i % 60, tzinfo=timezone.utc))
               for i, c in enumerate(couplings)]
    before = service.ops
    results = await store.update_many(CUSTOMER, changed)
    assert service.ops - before == 3  # 50 + 50 + 20 couplings, one transaction each
    assert results == changed
    assert all(r.etag != c.etag and all(r.etag) for r, c in zip(results, couplings))
    for c in changed[::7]:
        assert await store.get_by_bc(CUSTOMER, c.bc_id) == c
        assert await store.get_by_dataverse(CUSTOMER, c.dataverse_id) == c
    assert await store.update_many(CUSTOMER, []) == []


async def test_update_many_falls_back_to_one_by_one(store, service, names):
    couplings = await create_many(store, CUSTOMER, 60)
    gone = couplings[10]
    await store.delete(gone)
    changed = [replace(c, from_result=RESULT_FAILURE, last_error="boom") for c in couplings]
    changed.append(replace(changed[3], last_error="again", etag=None))  # the same coupling again, unconditional
    before = service.ops
    results = await store.update_many(CUSTOMER, changed)
    # a failed transaction for the first 50, then 50 single updates; 10 + 1 in the second transaction
    assert service.ops - before == 1 + 50 + 1
    assert len(results) == 61
    assert isinstance(results[10], CouplingChanged) and results[10].gone
    assert all(isinstance(r, Coupling) for i, r in enumerate(results) if i != 10)
    assert len(await rows(service, names)) == 2 * 59  # nothing re-created
    assert (await store.get_by_bc(CUSTOMER, couplings[3].bc_id)).last_error == "again"
    assert (await store.get_by_bc(CUSTOMER, couplings[59].bc_id)).from_result == RESULT_FAILURE


async def test_update_many_refuses_couplings_of_another_mapping(store):
    c = await store.create(Coupling("VENDOR", gid(), gid()))
    with pytest.raises(RequestError):
        await store.update_many(CUSTOMER, [replace(c, skipped=True)])
    assert not (await store.get_by_bc("VENDOR", c.bc_id)).skipped


# --- iter_filtered ----------------------------------------------------------------------------------------------------
async def test_iter_filtered_by_skipped_and_results(store, service):
    couplings = await create_many(store, CUSTOMER, 40)
    await create_many(store, "VENDOR", 3)
    for i, c in enumerate(couplings):
        c.to_result = RESULT_FAILURE if i % 2 else RESULT_SUCCESS
        c.from_result = RESULT_FAILURE if i % 5 == 0 else (RESULT_SUCCESS if i % 3 else None)
        c.skipped = i % 4 == 1
    await store.update_many(CUSTOMER, couplings)

    async def ids(page_size=1000, **filters):
        pages = [p async for p in store.iter_filtered(CUSTOMER, page_size=page_size, **filters)]
        assert all(0 < len(p) <= page_size for p in pages)
        return sorted(c.bc_id for p in pages for c in p)

    def expect(pred):
        return sorted(c.bc_id for c in couplings if pred(c))

    retry_to = await ids(skipped=False, to_result=RESULT_FAILURE)
    assert retry_to == expect(lambda c: not c.skipped and c.to_result == RESULT_FAILURE) and retry_to
    assert await ids(skipped=False, from_result=RESULT_FAILURE) == expect(
        lambda c: not c.skipped and c.from_result == RESULT_FAILURE)
    assert await ids(page_size=3, skipped=True) == expect(lambda c: c.skipped)
    assert await ids(to_result=RESULT_SUCCESS, from_result=RESULT_SUCCESS) == expect(
        lambda c: c.to_result == RESULT_SUCCESS and c.from_result == RESULT_SUCCESS)
    before = service.ops
    assert await ids(page_size=7) == expect(lambda c: True)
    assert service.ops - before >= 6  # 40 couplings, 7 a page: the service pages, and the pages are followed
    found = [c async for p in store.iter_filtered(CUSTOMER, skipped=True) for c in p]
    assert all(c == next(x for x in couplings if x.bc_id == c.bc_id) for c in found)
    assert [p async for p in store.iter_filtered("CONTACT")] == []
    for bad in ({"page_size": 0}, {"page_size": 1001}, {"to_result": 1}):
        with pytest.raises(RequestError):
            [p async for p in store.iter_filtered(CUSTOMER, **bad)]


async def test_update_many_with_a_coupling_twice_in_a_chunk_goes_one_by_one(store, service):
    c = await store.create(Coupling(CUSTOMER, gid(), gid()))
    first, second = replace(c, to_result=RESULT_FAILURE), replace(c, to_result=RESULT_SUCCESS, etag=None)
    before = service.ops
    results = await store.update_many(CUSTOMER, [first, second])
    assert service.ops - before == 2  # no transaction can touch a row twice: two single updates
    assert results == [first, second]
    assert (await store.get_by_bc(CUSTOMER, c.bc_id)).to_result == RESULT_SUCCESS
