"""The synchronization engine against both emulators and real Azurite (service level)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from coupling import service
from sync import engine
from sync.mappings import DeletionConflictResolution, Direction, UpdateConflictResolution
from sync.runtime import close_runtime, get_runtime

TO, FROM = Direction.TO_INTEGRATION_TABLE, Direction.FROM_INTEGRATION_TABLE


@pytest.fixture
async def rt(app_env):
    runtime = get_runtime()
    yield runtime
    await close_runtime()


async def _mapping(rt, name="CUSTOMER", **changes):
    m = await rt.mapping(name)
    return replace(m, **changes) if changes else m


async def _pair(rt, bc, dv, name, *, sync_to=True, **bc_fields):
    """A coupled customer/account pair, synchronized once BC -> Dataverse."""
    cust = bc.create("customers", {"displayName": name, **bc_fields})
    acc = dv.create("accounts", {"name": name + " (old)", "customertypecode": 3})
    m = await _mapping(rt)
    await service.couple_existing(rt, m, cust["id"], acc["accountid"])
    if sync_to:
        res = await engine.run_pass(rt, engine.PassRequest(m, TO, kind="SyncNow", ids=[cust["id"]], forced=True))
        assert res.counters.modified == 1, res.to_json()
    return cust, acc


async def _run(rt, mapping=None):
    m = mapping or await _mapping(rt)
    results = await engine.run_mapping(rt, m)
    return {r.job.direction: r.counters.to_json() for r in results}


def _writes(*emus):
    return sum(e.stats.writes for e in emus)


async def test_forced_sync_then_echo_suppressed_across_two_runs(rt, bc_emulator, dv_emulator):
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Echo Inc", city="Lyon")
    assert dv_emulator.get("accounts", acc["accountid"])["name"] == "Echo Inc"
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Lyon"
    first = await _run(rt)
    writes = _writes(bc_emulator, dv_emulator)
    second = await _run(rt)
    assert _writes(bc_emulator, dv_emulator) == writes  # the sync's own writes come back unchanged
    for counters in (first, second):
        assert counters["ToIntegrationTable"]["modified"] == counters["FromIntegrationTable"]["modified"] == 0
        assert counters["ToIntegrationTable"]["failed"] == counters["FromIntegrationTable"]["failed"] == 0


async def test_incremental_changes_each_way(rt, bc_emulator, dv_emulator):
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Both Ways")
    await _run(rt)
    bc_emulator.update("customers", cust["id"], {"phoneNumber": "+1 555 0101"})
    counters = await _run(rt)
    assert counters["ToIntegrationTable"]["modified"] == 1
    assert dv_emulator.get("accounts", acc["accountid"])["telephone1"] == "+1 555 0101"
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Kyoto"})
    counters = await _run(rt)
    assert counters["FromIntegrationTable"]["modified"] == 1 and counters["ToIntegrationTable"]["modified"] == 0
    assert bc_emulator.get("customers", cust["id"])["city"] == "Kyoto"
    writes = _writes(bc_emulator, dv_emulator)
    assert (await _run(rt))["FromIntegrationTable"]["modified"] == 0
    assert _writes(bc_emulator, dv_emulator) == writes


async def test_edit_in_the_same_second_as_the_sync_is_not_lost(rt, bc_emulator, dv_emulator):
    """modifiedon has whole seconds: the row version catches an edit right after the sync's own write."""
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Same Second")
    dv_emulator.update("accounts", acc["accountid"], {"telephone1": "42"})
    await _run(rt)
    assert bc_emulator.get("customers", cust["id"])["phoneNumber"] == "42"


@pytest.mark.parametrize("strategy, winner", [
    (UpdateConflictResolution.NONE, None),
    (UpdateConflictResolution.SEND_UPDATE_TO_INTEGRATION, "bc"),
    (UpdateConflictResolution.GET_UPDATE_FROM_INTEGRATION, "dataverse"),
])
async def test_update_conflicts(rt, bc_emulator, dv_emulator, strategy, winner):
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Conflict Co")
    await _run(rt)
    bc_emulator.update("customers", cust["id"], {"city": "Bern"})
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Basel"})
    m = await _mapping(rt, update_conflict_resolution=strategy)
    counters = await _run(rt, m)
    bc_city = bc_emulator.get("customers", cust["id"])["city"]
    dv_city = dv_emulator.get("accounts", acc["accountid"])["address1_city"]
    if winner is None:
        assert counters["ToIntegrationTable"]["failed"] == 1
        assert (bc_city, dv_city) == ("Bern", "Basel")
        c = await rt.couplings.get_by_bc("CUSTOMER", cust["id"])
        assert "bi-directional" in c.last_error
    elif winner == "bc":
        assert (bc_city, dv_city) == ("Bern", "Bern")
    else:
        assert (bc_city, dv_city) == ("Basel", "Basel")


@pytest.mark.parametrize("strategy", list(DeletionConflictResolution))
async def test_deletion_conflicts(rt, bc_emulator, dv_emulator, strategy):
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Deleted Partner")
    await _run(rt)
    dv_emulator.delete("accounts", acc["accountid"])
    bc_emulator.update("customers", cust["id"], {"city": "Turin"})
    m = await _mapping(rt, deletion_conflict_resolution=strategy)
    counters = await _run(rt, m)
    c = await rt.couplings.get_by_bc("CUSTOMER", cust["id"])
    assert bc_emulator.get("customers", cust["id"]) is not None  # deletes are never propagated
    if strategy is DeletionConflictResolution.NONE:
        assert counters["ToIntegrationTable"]["failed"] == 1
        assert "coupled to a deleted record" in c.last_error
    elif strategy is DeletionConflictResolution.RESTORE_RECORDS:
        assert counters["ToIntegrationTable"]["inserted"] == 1
        restored = dv_emulator.get("accounts", c.dataverse_id)
        assert restored["name"] == "Deleted Partner" and restored["address1_city"] == "Turin"
    else:
        assert c is None


async def test_same_error_twice_marks_skipped(rt, bc_emulator, dv_emulator):
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Twice Failing")
    await _run(rt)
    dv_emulator.delete("accounts", acc["accountid"])
    bc_emulator.update("customers", cust["id"], {"city": "Oslo"})
    await _run(rt)
    c = await rt.couplings.get_by_bc("CUSTOMER", cust["id"])
    assert c.to_result == "Failure" and not c.skipped
    counters = await _run(rt)  # retried although nothing changed since (failed-not-skipped), fails the same way
    assert counters["ToIntegrationTable"]["failed"] == 1
    c = await rt.couplings.get_by_bc("CUSTOMER", cust["id"])
    assert c.skipped
    counters = await _run(rt)
    assert counters["ToIntegrationTable"]["failed"] == 0  # skipped couplings are left alone
    jobs, _ = await rt.jobs.list("CUSTOMER")
    errors = [e for j in jobs for e in await rt.jobs.list_errors(j.id)]
    assert sum(e.bc_id == cust["id"] for e in errors) == 2


async def test_lookup_of_an_uncoupled_record_fails_with_bcs_message(rt, bc_emulator, dv_emulator):
    cust, acc = await _pair(rt, bc_emulator, dv_emulator, "Lookup Co")
    person = bc_emulator.all("salespeoplePurchasers")[0]
    bc_emulator.update("customers", cust["id"], {"salespersonCode": person["code"]})
    counters = await _run(rt)
    assert counters["ToIntegrationTable"]["failed"] == 1
    c = await rt.couplings.get_by_bc("CUSTOMER", cust["id"])
    assert f"salespersonCode {person['code']} must be coupled to a Dataverse row" in c.last_error


async def test_uncoupled_records_are_created_when_sync_only_coupled_is_off(rt, bc_emulator, dv_emulator):
    before = len(dv_emulator.all("accounts"))
    m = await _mapping(rt, sync_only_coupled_records=False, direction=TO)
    res = await engine.run_pass(rt, engine.PassRequest(m, TO, keep_outcomes=True))
    open_customers = [c for c in bc_emulator.all("customers") if c["blocked"] == "_x0020_"]
    free = [c for c in open_customers if not c["salespersonCode"]
            and c["paymentTermsId"] == "00000000-0000-0000-0000-000000000000"]
    assert 0 < len(free) < len(open_customers)
    assert res.counters.inserted == len(free)
    assert res.counters.failed == len(open_customers) - len(free)  # their salesperson / terms aren't coupled
    assert all("must be coupled" in o.message for o in res.outcomes if o.result.value == "failed")
    assert len(dv_emulator.all("accounts")) == before + len(free)
    again = await _run(rt, m)
    assert again["ToIntegrationTable"]["inserted"] == 0
    assert len(dv_emulator.all("accounts")) == before + len(free)


async def test_a_run_killed_midway_is_completed_by_the_next(rt, bc_emulator, dv_emulator, monkeypatch):
    pairs = [await _pair(rt, bc_emulator, dv_emulator, f"Resume {i}") for i in range(5)]
    await _run(rt)
    for cust, _ in pairs:
        bc_emulator.update("customers", cust["id"], {"city": "Dublin"})
    real = rt.couplings.update_many

    async def dies(*a, **k):
        raise RuntimeError("the instance died after writing to Dataverse")

    monkeypatch.setattr(rt.couplings, "update_many", dies)
    with pytest.raises(RuntimeError):
        await _run(rt)
    assert all(dv_emulator.get("accounts", a["accountid"])["address1_city"] == "Dublin" for _, a in pairs)
    jobs, _ = await rt.jobs.list("CUSTOMER")
    assert jobs[0].status == "Failed"
    monkeypatch.setattr(rt.couplings, "update_many", real)
    accounts_before = len(dv_emulator.all("accounts"))
    counters = await _run(rt)
    assert counters["ToIntegrationTable"]["failed"] == 0
    assert len(dv_emulator.all("accounts")) == accounts_before  # no duplicates
    for cust, acc in pairs:  # nothing lost, and the couplings are up to date again
        c = await rt.couplings.get_by_bc("CUSTOMER", cust["id"])
        assert c.to_result == "Success"
    writes = _writes(bc_emulator, dv_emulator)
    await _run(rt)
    assert _writes(bc_emulator, dv_emulator) == writes


async def test_watermarks_advance_and_never_pass_the_job_start(rt, bc_emulator, dv_emulator):
    await _pair(rt, bc_emulator, dv_emulator, "Watermark Co")
    await _run(rt)
    marks = await rt.watermarks.get("CUSTOMER")
    jobs, _ = await rt.jobs.list("CUSTOMER")
    assert marks.bc is not None and marks.dataverse is not None
    assert marks.bc <= max(j.started_at for j in jobs)


async def test_sync_now_multi_skips_uncoupled_and_newer_destinations(rt, bc_emulator, dv_emulator):
    from sync.sync_now import sync_now

    synced, _ = await _pair(rt, bc_emulator, dv_emulator, "Plain")
    newer, newer_acc = await _pair(rt, bc_emulator, dv_emulator, "Newer There")
    dv_emulator.update("accounts", newer_acc["accountid"], {"address1_city": "Rome"})
    loose = bc_emulator.create("customers", {"displayName": "Loose"})
    bc_emulator.update("customers", synced["id"], {"city": "Nice"})
    m = await _mapping(rt)
    result = await sync_now(rt, m, bc_ids=[synced["id"], newer["id"], loose["id"]], direction=TO)
    out = {o.bc_id: o for o in result.outcomes}
    assert out[synced["id"]].result.value == "modified"
    assert out[newer["id"]].reason.value == "destinationModified"
    assert out[loose["id"]].reason.value == "notCoupled"
    assert dv_emulator.get("accounts", newer_acc["accountid"])["address1_city"] == "Rome"
