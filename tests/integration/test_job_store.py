"""The job log and job errors against a real Azurite (tables unique per test)."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from coupling.jobs import (
    ALL_PARTITION, MAX_OUTCOMES_UNITS, Job, JobError, JobStore, _job_entity, fit_outcomes, job_id_for,
)
from coupling.model import MAX_ERROR_CHARS
from sync.errors import RequestError

TO, FROM = "ToIntegrationTable", "FromIntegrationTable"
T0 = datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=timezone.utc)


@pytest.fixture
def store(service, names):
    return JobStore(service, names)


async def rows(service, table_name) -> list[dict]:
    table = await service.table(table_name)
    return [e async for e in table.list_entities()]


def job_at(mapping: str, started_at: datetime, direction: str = TO) -> Job:
    return Job(id=job_id_for(started_at), mapping=mapping, direction=direction, kind="Synchronization",
               started_at=started_at)


# --- ids --------------------------------------------------------------------------------------------------------------
def test_job_ids_sort_newest_first_and_are_unique():
    times = [T0 + timedelta(microseconds=i) for i in (0, 1, 2)] + [T0 + timedelta(days=400), T0 - timedelta(days=1)]
    ids = [job_id_for(t) for t in times]
    assert all(len(i) == 27 for i in ids)
    assert sorted(ids) == [ids[3], ids[2], ids[1], ids[0], ids[4]]
    assert job_id_for(T0) != job_id_for(T0)  # same microsecond: the random tail tells them apart
    assert job_id_for(T0)[:19] == job_id_for(T0.astimezone(timezone(timedelta(hours=2))))[:19]


# --- start / finish / get ---------------------------------------------------------------------------------------------
async def test_start_finish_get_round_trip(store, service, names):
    job = store.new_job("CUSTOMER", TO, "SyncNow", details={"bcIds": ["a", "b"], "force": True})
    assert job.status == "Running" and job.finished_at is None and job.started_at.tzinfo == timezone.utc
    assert await store.get(job.id) is None  # not stored before start
    started = await store.start(job)
    assert await store.get(job.id) == started
    (copy,), _ = await store.list("CUSTOMER")
    assert copy == started

    done = await store.finish(started, counters={"inserted": 2, "modified": 1, "unchanged": 0, "skipped": 0,
                                                 "failed": 1},
                              message="1 record failed", outcomes=[{"bcId": "a", "action": "Insert"}])
    assert done.status == "Finished" and done.finished_at >= done.started_at and not done.outcomes_truncated
    read = await store.get(job.id)
    assert read == done
    assert read.counters["failed"] == 1 and read.details == {"bcIds": ["a", "b"], "force": True}
    assert read.started_at == job.started_at  # microseconds kept
    assert type(read.started_at) is datetime and read.started_at.tzinfo == timezone.utc
    (copy,), _ = await store.list("CUSTOMER")
    assert copy == done
    stored = await rows(service, names.jobs)
    assert sorted(r["PartitionKey"] for r in stored) == sorted([ALL_PARTITION, "CUSTOMER"])
    assert json.loads(stored[0]["Counters"])["inserted"] == 2


async def test_job_level_failure(store):
    job = await store.start(store.new_job("CURRENCY", FROM, "Synchronization"))
    failed = await store.finish(job, status="Failed", message="x" * 20_000)
    read = await store.get(job.id)
    assert read.status == "Failed" and len(read.message) == MAX_ERROR_CHARS and read == failed
    with pytest.raises(RequestError):
        await store.finish(job, status="Running")


async def test_invalid_jobs_are_refused(store, service):
    with pytest.raises(RequestError):
        store.new_job("CUSTOMER", "Bidirectional", "Synchronization")  # a job is one pass
    with pytest.raises(RequestError):
        store.new_job("CUSTOMER", TO, "Sync")
    with pytest.raises(RequestError):
        store.new_job("", TO, "Synchronization")
    with pytest.raises(RequestError):
        store.new_job("CUSTOMER", TO, "SyncNow", details={"ids": ["x" * 100] * 200})  # not "small"
    for bad in ("", "job-1", "0" * 27 + "'", "x" * 27):
        with pytest.raises(RequestError):
            await store.get(bad)
        with pytest.raises(RequestError):
            await store.list_errors(bad)
    assert service.ops == 0  # refused before any request


# --- listing ----------------------------------------------------------------------------------------------------------
async def test_list_newest_first_per_mapping_and_for_all(store, service):
    jobs = []
    for i in range(7):
        mapping = "CUSTOMER" if i % 3 else "PAYMENT TERMS"
        jobs.append(await store.start(job_at(mapping, T0 + timedelta(minutes=i), TO if i % 2 else FROM)))

    async def everything(mapping, size):
        out, token, calls = [], None, 0
        while True:
            page, token = await store.list(mapping, size, token)
            calls += 1
            assert len(page) <= size
            out += page
            if token is None:
                return out, calls
            assert isinstance(token, str)

    newest_first = sorted(jobs, key=lambda j: j.started_at, reverse=True)
    before = service.ops
    all_jobs, calls = await everything(None, 3)
    assert all_jobs == newest_first and calls >= 3
    assert service.ops - before == calls  # one range read per page
    customer, _ = await everything("CUSTOMER", 2)
    assert customer == [j for j in newest_first if j.mapping == "CUSTOMER"] and len(customer) == 4
    terms, _ = await everything("PAYMENT TERMS", 50)
    assert [j.id for j in terms] == [j.id for j in newest_first if j.mapping == "PAYMENT TERMS"]
    assert await store.list("VENDOR") == ([], None)

    _, token = await store.list(None, 2)
    _, customer_token = await store.list("CUSTOMER", 2)
    for bad in (customer_token, token + "x", "garbage"):
        with pytest.raises(RequestError):
            await store.list(None, 2, bad)
    for size in (0, 1001, True, "5"):
        with pytest.raises(RequestError):
            await store.list(None, size)


async def test_mapping_listing_shows_a_finish_its_copy_missed(store, service, names):
    """``finish`` writes the ~all row, then the copy: if the second write is lost, the listing still agrees."""
    job = await store.start(job_at("CUSTOMER", T0))
    done = await store.finish(job, counters={"modified": 3})
    table = await service.table(names.jobs)
    await table.upsert_entity(_job_entity(job, "CUSTOMER"))  # the copy as it was before the finish
    (listed,), _ = await store.list("CUSTOMER")
    assert listed == done and listed.status == "Finished"
    await table.delete_entity(ALL_PARTITION, job.id)  # a copy without its ~all row stays as it is
    (listed,), _ = await store.list("CUSTOMER")
    assert listed.status == "Running"


# --- outcomes ---------------------------------------------------------------------------------------------------------
def test_fit_outcomes_counts_utf16_units():
    items = [{"n": "😀" * 10}] * 5  # each emoji is 2 UTF-16 units (a surrogate pair), 1 Python character
    one = len(json.dumps(items[0], separators=(",", ":"), ensure_ascii=False)) + 10  # +10 for the pairs
    text, kept = fit_outcomes(items, limit=2 + 3 * one + 2)
    assert kept == 3 and json.loads(text) == items[:3]
    text, kept = fit_outcomes(items, limit=2 + 3 * one + 1)
    assert kept == 2
    assert fit_outcomes([], limit=2) == ("[]", 0)


async def test_outcomes_are_truncated_to_fit_one_property(store, service, names):
    outcomes = [{"bcId": f"{i:08d}", "action": "Modify", "note": "Ünïcode ✓ 😀" * 5} for i in range(2000)]
    job = await store.start(store.new_job("CONTACT", TO, "Synchronization"))
    done = await store.finish(job, outcomes=outcomes, counters={"modified": 2000})
    assert done.outcomes_truncated and 0 < len(done.outcomes) < 2000
    assert done.outcomes == outcomes[:len(done.outcomes)]
    read = await store.get(job.id)
    assert read.outcomes_truncated and read.outcomes == done.outcomes
    raw = next(r for r in await rows(service, names.jobs) if r["PartitionKey"] == ALL_PARTITION)
    assert MAX_OUTCOMES_UNITS - 200 < len(raw["Outcomes"].encode("utf-16-le")) // 2 <= MAX_OUTCOMES_UNITS

    small = await store.finish(await store.start(store.new_job("CONTACT", FROM, "Synchronization")),
                               outcomes=outcomes[:10])
    assert not small.outcomes_truncated and (await store.get(small.id)).outcomes == outcomes[:10]


# --- errors -----------------------------------------------------------------------------------------------------------
async def test_errors_add_and_list(store, service):
    job = await store.start(store.new_job("CUSTOMER", TO, "Synchronization"))
    other = await store.start(store.new_job("VENDOR", TO, "Synchronization"))
    errors = [JobError(job.id, "CUSTOMER", TO, bc_id=f"bc-{i}", dataverse_id=None if i % 2 else f"dv-{i}",
                       message=f"error {i}", at=T0 + timedelta(seconds=i)) for i in range(250)]
    errors[7].message = "y" * 50_000
    before = service.ops
    assert await store.add_errors(job.id, errors) == 250
    assert service.ops - before <= 3 + 1  # 100 + 100 + 50 per transaction (+ creating the table)
    await store.add_errors(job.id, [JobError(job.id, "CUSTOMER", TO, message="later")])
    await store.add_errors(other.id, [JobError(other.id, "VENDOR", TO, bc_id="v", message="vendor error")])

    listed = await store.list_errors(job.id)
    assert len(listed) == 251
    assert [e.message for e in listed[:3]] == ["error 0", "error 1", "error 2"] and listed[-1].message == "later"
    assert listed[0] == errors[0] and listed[0].at == T0 and listed[1].dataverse_id is None
    assert len(listed[7].message) == MAX_ERROR_CHARS
    assert [e.message for e in await store.list_errors(other.id)] == ["vendor error"]
    assert await store.list_errors(job_id_for(T0)) == []
    assert await store.add_errors(job.id, []) == 0
    with pytest.raises(RequestError):
        await store.add_errors(job.id, [JobError(other.id, "VENDOR", TO, message="wrong job")])


# --- cleanup ----------------------------------------------------------------------------------------------------------
async def test_cleanup_deletes_old_jobs_and_their_errors_but_keeps_the_kept(store, service, names):
    now = datetime.now(timezone.utc)
    cutoff = now - timedelta(days=7)
    old = [await store.start(job_at("CUSTOMER" if i % 2 else "VENDOR", cutoff - timedelta(hours=i + 1)))
           for i in range(9)]
    recent = [await store.start(job_at("CUSTOMER", cutoff + timedelta(hours=i + 1))) for i in range(3)]
    kept = old[4]
    for job in old[:6] + recent[:1]:
        await store.add_errors(job.id, [JobError(job.id, job.mapping, TO, bc_id=str(n), message="boom")
                                        for n in range(3 if job is not old[0] else 130)])
    result = await store.cleanup(cutoff, {kept.id, recent[1].id, "not-a-job"}, page_size=2)
    assert result == {"jobs": 8, "errors": 130 + 4 * 3, "kept": 1}

    remaining_ids = {j.id for j in recent} | {kept.id}
    job_rows = await rows(service, names.jobs)
    assert {r["RowKey"] for r in job_rows} == remaining_ids
    assert len(job_rows) == 2 * len(remaining_ids)  # the ~all row and the mapping copy of each
    error_rows = await rows(service, names.errors)
    assert {r["PartitionKey"] for r in error_rows} == {kept.id, recent[0].id}
    assert len(await store.list_errors(kept.id)) == 3
    assert await store.get(old[0].id) is None and await store.get(kept.id) == kept
    listed, _ = await store.list("CUSTOMER")
    assert [j.id for j in listed] == [j.id for j in reversed(recent)]

    assert await store.cleanup(cutoff, {kept.id}) == {"jobs": 0, "errors": 0, "kept": 1}
    assert (await store.cleanup(now + timedelta(days=1)))["jobs"] == 4
    assert await rows(service, names.jobs) == [] and await rows(service, names.errors) == []


async def test_cleanup_finishes_an_interrupted_cleanup(store, service, names):
    cutoff = datetime.now(timezone.utc) - timedelta(days=1)
    job = await store.start(job_at("CUSTOMER", cutoff - timedelta(hours=1)))
    await store.add_errors(job.id, [JobError(job.id, "CUSTOMER", TO, message="boom")])
    table = await service.table(names.jobs)
    await table.delete_entity("CUSTOMER", job.id)  # the copy went, the ~all row and the errors stayed
    assert await store.cleanup(cutoff) == {"jobs": 1, "errors": 1, "kept": 0}
    assert await rows(service, names.jobs) == [] and await rows(service, names.errors) == []


async def test_cleanup_refuses_a_naive_cutoff(store):
    with pytest.raises(RequestError):
        await store.cleanup(datetime(2024, 1, 1))


def test_job_is_validated_when_built():
    with pytest.raises(RequestError):
        Job(id="1", mapping="CUSTOMER", direction=TO, kind="Synchronization", started_at=T0)
    with pytest.raises(RequestError):
        replace(job_at("CUSTOMER", T0), status="Done")
    with pytest.raises(RequestError):
        replace(job_at("CUSTOMER", T0), counters={"inserted": "2"})


async def test_long_non_latin_errors_are_split_to_fit_a_transaction(store, service):
    job = await store.start(store.new_job("CUSTOMER", TO, "Synchronization"))
    errors = [JobError(job.id, "CUSTOMER", TO, bc_id=str(i), message="данные 😀 " * 2000) for i in range(100)]
    before = service.ops
    assert await store.add_errors(job.id, errors) == 100
    assert service.ops - before > 2  # 100 rows, but not in one 4 MB transaction
    listed = await store.list_errors(job.id)
    assert len(listed) == 100 and listed[0].message == errors[0].message
