"""Watermarks, leases and run fan-out against a real Azurite (tables unique per test).

Concurrency tests use one ``TableService`` per simulated instance: separate connections, like separate hosts.
Azurite enforces If-Match on single-entity writes (only batch writes ignore it, Azurite#1233), which is all
these stores use for their conditional writes.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from coupling.leases import Lease, LeaseLost, LeaseStore
from coupling.runs import DONE, ENQUEUED, PENDING, RunExists, RunStore
from coupling.tables import TableNames, TableService
from coupling.watermarks import Watermarks, WatermarkStore
from sync.errors import Conflict, NotFound, RequestError

T0 = datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=timezone.utc)


@pytest.fixture
async def services(azurite):
    """Four services: ``services[0]`` for single-instance tests, all of them to simulate instances."""
    svcs = [TableService(azurite.connection_string, retry_total=1) for _ in range(4)]
    yield svcs
    for svc in svcs:
        await svc.close()


@pytest.fixture
def service(services):
    return services[0]


@pytest.fixture
def names(table_prefix):
    return TableNames(table_prefix)


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# --- watermarks -------------------------------------------------------------------------------------------------------
async def test_watermarks_only_move_forward(service, names):
    store = WatermarkStore(service, names)
    assert await store.get("CUSTOMER") == Watermarks(None, None)
    assert await store.advance("CUSTOMER", bc=T0) == Watermarks(T0, None)
    cest = timezone(timedelta(hours=2))
    later_dv = datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=cest)
    assert await store.advance("CUSTOMER", dataverse=later_dv) == Watermarks(T0, later_dv)

    before = service.ops
    assert await store.advance("CUSTOMER", bc=T0 - timedelta(microseconds=1),
                               dataverse=later_dv - timedelta(days=1)) == Watermarks(T0, later_dv)
    assert service.ops - before == 1  # read only: nothing moved, nothing written
    moved = await store.advance("CUSTOMER", bc=T0 + timedelta(microseconds=1),
                                dataverse=later_dv - timedelta(hours=1))
    assert moved == Watermarks(T0 + timedelta(microseconds=1), later_dv)

    read = await store.get("CUSTOMER")
    assert read == moved and read.dataverse == datetime(2024, 5, 1, 10, 0, 0, 999999, tzinfo=timezone.utc)
    assert type(read.bc) is datetime and read.bc.tzinfo == timezone.utc and read.bc.microsecond == 123457
    assert await store.get("VENDOR") == Watermarks(None, None)  # per mapping
    assert await store.advance("VENDOR") == Watermarks(None, None)
    with pytest.raises(RequestError):
        await store.advance("CUSTOMER", bc=datetime(2024, 6, 1))  # naive


async def test_concurrent_advances_keep_the_maximum(services, names):
    stores = [WatermarkStore(svc, names) for svc in services]
    values = [T0 + timedelta(seconds=s) for s in (5, 17, 3, 11, 17, 2, 8, 13, 1, 16, 9, 4)]
    await asyncio.gather(*(stores[i % len(stores)].advance("CUSTOMER", bc=v, dataverse=v - timedelta(days=1))
                           for i, v in enumerate(values)))
    assert await stores[0].get("CUSTOMER") == Watermarks(max(values), max(values) - timedelta(days=1))

    for r in range(1, 6):  # two writers at once, in both orders, several times: the larger value always stays
        high, low = T0 + timedelta(hours=2 * r), T0 + timedelta(hours=2 * r - 1)
        await asyncio.gather(stores[1].advance("CUSTOMER", bc=low), stores[2].advance("CUSTOMER", bc=high))
        assert (await stores[3].get("CUSTOMER")).bc == high
        high, low = high + timedelta(minutes=30), high + timedelta(minutes=10)
        await asyncio.gather(stores[1].advance("CUSTOMER", bc=high), stores[2].advance("CUSTOMER", bc=low))
        assert (await stores[3].get("CUSTOMER")).bc == high


class _SlowReader(WatermarkStore):
    """Pauses between its first read and its write until told to go on: a writer that lost the race."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read_done, self.go_on, self.reads = asyncio.Event(), asyncio.Event(), 0

    async def _read(self, table, mapping):
        result = await super()._read(table, mapping)
        self.reads += 1
        if self.reads == 1:
            self.read_done.set()
            await self.go_on.wait()
        return result


async def test_a_writer_that_read_before_a_larger_write_does_not_move_it_back(services, names):
    fast, slow = WatermarkStore(services[0], names), _SlowReader(services[1], names)
    await fast.advance("CUSTOMER", bc=T0)
    pending = asyncio.create_task(slow.advance("CUSTOMER", bc=T0 + timedelta(hours=1)))
    await slow.read_done.wait()  # slow has read T0 and means to write T0 + 1h
    await fast.advance("CUSTOMER", bc=T0 + timedelta(hours=2))
    slow.go_on.set()
    assert await pending == Watermarks(T0 + timedelta(hours=2), None)  # its write failed, it read again
    assert slow.reads == 2
    assert (await fast.get("CUSTOMER")).bc == T0 + timedelta(hours=2)


async def test_reset_clears_both(service, names):
    store = WatermarkStore(service, names)
    await store.advance("CONTACT", bc=T0, dataverse=T0)
    await store.advance("VENDOR", bc=T0)
    await store.reset("CONTACT")
    assert await store.get("CONTACT") == Watermarks(None, None)
    assert await store.get("VENDOR") == Watermarks(T0, None)
    earlier = T0 - timedelta(days=30)
    assert await store.advance("CONTACT", bc=earlier) == Watermarks(earlier, None)  # starts over
    await store.reset("CONTACT")
    await store.reset("CONTACT")  # nothing to reset is fine


# --- leases -----------------------------------------------------------------------------------------------------------
async def test_lease_lifecycle_with_expiry_and_takeover(service, names):
    clock = Clock()
    store = LeaseStore(service, names, clock=clock)
    minute = timedelta(minutes=1)
    a = await store.acquire("run:CUSTOMER", "instance-a", minute)
    assert isinstance(a, Lease) and a.owner == "instance-a" and a.expires_at == T0 + minute
    assert await store.holder("run:CUSTOMER") == a
    assert await store.acquire("run:CUSTOMER", "instance-b", minute) is None  # held
    assert await store.acquire("run:CUSTOMER", "instance-a", minute) is None  # held, even by itself
    assert (await store.acquire("run:VENDOR", "instance-b", minute)).owner == "instance-b"  # per name

    clock.now += timedelta(seconds=30)
    a = await store.renew(a, minute)
    assert a.expires_at == clock.now + minute and a.acquired_at == T0

    clock.now += timedelta(seconds=91)  # expired
    assert await store.holder("run:CUSTOMER") is None
    b = await store.acquire("run:CUSTOMER", "instance-b", minute)
    assert b is not None and b.owner == "instance-b" and b.acquired_at == clock.now
    with pytest.raises(LeaseLost) as info:
        await store.renew(a, minute)
    assert isinstance(info.value, Conflict) and info.value.lease == a
    await store.release(a)  # lost: leaves b's lease alone
    assert await store.holder("run:CUSTOMER") == b

    await store.release(b)
    assert await store.holder("run:CUSTOMER") is None
    with pytest.raises(LeaseLost):
        await store.renew(b, minute)  # released: gone
    await store.release(b)  # twice is fine
    c = await store.acquire("run:CUSTOMER", "instance-c", minute)
    assert c is not None and await store.holder("run:CUSTOMER") == c


async def test_expired_lease_nobody_took_can_be_renewed(service, names):
    clock = Clock()
    store = LeaseStore(service, names, clock=clock)
    lease = await store.acquire("m", "a", timedelta(seconds=10))
    clock.now += timedelta(minutes=5)
    renewed = await store.renew(lease, timedelta(seconds=10))
    assert await store.holder("m") == renewed and renewed.expires_at == clock.now + timedelta(seconds=10)


async def test_invalid_lease_requests(service, names):
    store = LeaseStore(service, names)
    for duration in (timedelta(0), timedelta(seconds=-1), 60):
        with pytest.raises(RequestError):
            await store.acquire("m", "a", duration)
    for owner in ("", None, "x" * 300):
        with pytest.raises(RequestError):
            await store.acquire("m", owner, timedelta(seconds=1))
    with pytest.raises(RequestError):
        await store.acquire("", "a", timedelta(seconds=1))


@pytest.mark.parametrize("expired", [False, True])
async def test_concurrent_acquirers_exactly_one_wins(services, names, expired):
    clock = Clock()
    stores = [LeaseStore(svc, names, clock=clock) for svc in services]
    if expired:  # an old holder's lease has expired: the racers take it over with a conditional replace
        assert await stores[0].acquire("run:CONTACT", "old", timedelta(seconds=1))
        clock.now += timedelta(minutes=1)
    results = await asyncio.gather(*(stores[i % len(stores)].acquire("run:CONTACT", f"racer-{i}",
                                                                     timedelta(minutes=5)) for i in range(10)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert await stores[0].holder("run:CONTACT") == winners[0]


# --- runs -------------------------------------------------------------------------------------------------------------
GRAPH = {
    "SALESPEOPLE": [],
    "CURRENCY": [],
    "CUSTOMER": ["SALESPEOPLE", "CURRENCY", "PAYMENT TERMS"],  # PAYMENT TERMS is not in the run: satisfied
    "VENDOR": ["SALESPEOPLE", "CURRENCY"],
    "CONTACT": ["CUSTOMER", "VENDOR"],
}


async def test_run_releases_mappings_level_by_level(services, names):
    store = RunStore(services[0], names)
    assert await store.create("run-1", GRAPH) == ["SALESPEOPLE", "CURRENCY"]
    state = await store.get("run-1")
    assert state["mappings"]["CUSTOMER"] == {"state": PENDING, "dependsOn": ["SALESPEOPLE", "CURRENCY"],
                                             "outcome": None, "completedAt": None}
    assert state["mappings"]["CURRENCY"]["state"] == ENQUEUED and not state["finished"]
    assert state["finishedAt"] is None and state["startedAt"].tzinfo == timezone.utc

    with pytest.raises(RequestError):
        await store.complete("run-1", "CONTACT", outcome="Finished")  # not started: its dependencies aren't done
    assert await store.complete("run-1", "SALESPEOPLE", outcome="Finished") == []
    assert await store.complete("run-1", "SALESPEOPLE", outcome="Finished") == []  # redelivered: nothing again
    assert await store.complete("run-1", "CURRENCY", outcome="Failed") == ["CUSTOMER", "VENDOR"]

    other = RunStore(services[1], names)  # another instance
    released = await asyncio.gather(store.complete("run-1", "CUSTOMER", outcome="Finished"),
                                    other.complete("run-1", "VENDOR", outcome="Finished"))
    assert sorted(released, key=len) == [[], ["CONTACT"]]
    assert not (await store.get("run-1"))["finished"]
    assert await other.complete("run-1", "CONTACT", outcome="Finished") == []

    state = await store.get("run-1")
    assert state["finished"] and state["finishedAt"] >= state["startedAt"]
    assert {m: s["state"] for m, s in state["mappings"].items()} == dict.fromkeys(GRAPH, DONE)
    assert state["mappings"]["CURRENCY"]["outcome"] == "Failed"
    assert state["mappings"]["CONTACT"]["completedAt"] >= state["mappings"]["VENDOR"]["completedAt"]


async def test_concurrent_completes_release_each_mapping_once(services, names):
    stores = [RunStore(svc, names) for svc in services]
    leaves = [f"M{i}" for i in range(10)]
    graph = {**{m: [] for m in leaves}, "JOIN": leaves, "AFTER": ["JOIN"], "ALSO": leaves[:3]}
    for r in range(3):
        run_id = f"run-{r}"
        assert await stores[0].create(run_id, graph) == leaves
        released = await asyncio.gather(*(stores[i % len(stores)].complete(run_id, m, outcome="Finished")
                                          for i, m in enumerate(leaves)))
        flat = [m for batch in released for m in batch]
        assert sorted(flat) == ["ALSO", "JOIN"], released  # each exactly once, to one of the completers
        assert await stores[1].complete(run_id, "JOIN", outcome="Finished") == ["AFTER"]


async def test_run_errors(service, names):
    store = RunStore(service, names)
    await store.create("run-x", {"A": []})
    with pytest.raises(RunExists) as info:
        await store.create("run-x", {"A": []})
    assert isinstance(info.value, Conflict)
    with pytest.raises(NotFound):
        await store.complete("nope", "A", outcome="Finished")
    with pytest.raises(RequestError):
        await store.complete("run-x", "B", outcome="Finished")
    assert await store.get("nope") is None
    for bad in ({}, {"A": ["B"], "B": ["A"]}, {"A": ["A"]}, {"A": "B"}, {"A": [1]}, {"": []}, ["A"]):
        with pytest.raises(RequestError):
            await store.create("run-bad", bad)
    assert await store.get("run-bad") is None


async def test_run_cleanup(service, names):
    store = RunStore(service, names)
    for i in range(3):
        await store.create(f"old-{i}", {"A": []})
    cutoff = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert await store.cleanup(cutoff - timedelta(days=1)) == 0
    assert await store.cleanup(cutoff) == 3
    assert await store.get("old-0") is None
