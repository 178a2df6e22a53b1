"""The synchronization errors page (list, retry, synchronize, restore, find for deleted, clean up the job log),
through the registered functions against the emulators and real Azurite."""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from coupling.jobs import Job, JobError, job_id_for
from sync import engine
from sync.runtime import get_runtime

pytestmark = pytest.mark.usefixtures("app_env")

DELETED_ROW = "coupled to a deleted record"


# --- helpers -----------------------------------------------------------------------------------------------------
async def _pair(app, bc, dv, name, *, mapping="CUSTOMER", sync=True):
    """A coupled BC record / account pair (synchronized BC -> Dataverse once unless ``sync`` is False)."""
    entity_set, typecode = ("customers", 3) if mapping == "CUSTOMER" else ("vendors", 11)
    rec = bc.create(entity_set, {"displayName": name})
    acc = dv.create("accounts", {"name": name + " old", "customertypecode": typecode})
    body = {"mapping": mapping, "bcId": rec["id"], "dataverseId": acc["accountid"]}
    if sync:
        body["syncAfterCoupling"] = "ToIntegrationTable"
    r = await app("couple", "POST", body=body)
    assert r.status == 201, r
    return rec, acc


async def _run(mapping="CUSTOMER"):
    rt = get_runtime()
    results = await engine.run_mapping(rt, await rt.mapping(mapping))
    return {r.job.direction: r.counters.to_json() for r in results}


async def _coupling(bc_id, mapping="CUSTOMER"):
    return await get_runtime().couplings.get_by_bc(mapping, bc_id)


async def _skipped_by_deleted_row(app, bc, dv, name):
    """Realistic: the Dataverse row is deleted, the BC record changes, two runs fail the same way -> skipped."""
    cust, acc = await _pair(app, bc, dv, name)
    dv.delete("accounts", acc["accountid"])
    bc.update("customers", cust["id"], {"city": "Oslo"})
    for _ in range(2):
        assert (await _run())["ToIntegrationTable"]["failed"] == 1
    c = await _coupling(cust["id"])
    assert c.skipped and DELETED_ROW in c.last_error
    return cust, acc


async def _mark_skipped(bc_id, mapping="CUSTOMER", **changes):
    """A skipped coupling without the runs it takes (for the listing, restore and cleanup cases)."""
    rt = get_runtime()
    c = await rt.couplings.get_by_bc(mapping, bc_id)
    values = {"skipped": True, "last_error": "Failed twice.", "to_result": "Failure", **changes}
    return await rt.couplings.update(replace(c, **values))


async def _errors(app, **params):
    r = await app("list_sync_errors", params=params or None)
    assert r.status == 200, r
    return r.json


# --- the list --------------------------------------------------------------------------------------------------------
async def test_list_shows_the_skipped_coupling_with_its_error_and_which_side_exists(app, bc_emulator, dv_emulator):
    cust, acc = await _skipped_by_deleted_row(app, bc_emulator, dv_emulator, "Listed Co")
    await _pair(app, bc_emulator, dv_emulator, "Healthy Co", sync=False)  # coupled, not skipped: not listed
    page = await _errors(app, mapping="customer")
    assert "continuation" not in page
    [entry] = page["value"]
    assert (entry["mapping"], entry["bcId"], entry["dataverseId"]) == ("CUSTOMER", cust["id"], acc["accountid"])
    assert DELETED_ROW in entry["lastError"] and entry["direction"] == "ToIntegrationTable"
    assert (entry["bcExists"], entry["dataverseExists"]) == (True, False)
    job = await app("get_job", route={"id": entry["jobId"]})
    assert job.status == 200 and [e["bcId"] for e in job.json["errors"]] == [cust["id"]]
    assert [e["bcId"] for e in (await _errors(app))["value"]] == [cust["id"]]  # every mapping: the same


async def test_pages_over_every_mapping_and_checks_existence_in_bulk(app, bc_emulator, dv_emulator):
    customers = [await _pair(app, bc_emulator, dv_emulator, f"Paged {i}", sync=False) for i in range(3)]
    vendor, _ = await _pair(app, bc_emulator, dv_emulator, "Paged Vendor", mapping="VENDOR", sync=False)
    for cust, _ in customers:
        await _mark_skipped(cust["id"])
    await _mark_skipped(vendor["id"], "VENDOR", to_result=None, from_result="Failure", from_job_id=None)
    bc_emulator.delete("customers", customers[0][0]["id"])

    seen, token, pages = [], None, 0
    while True:
        params = {"pageSize": "2", **({"continuation": token} if token else {})}
        page = await _errors(app, **params)
        pages += 1
        seen += page["value"]
        token = page.get("continuation")
        if not token:
            break
        assert pages < 10
    assert sorted((e["mapping"], e["bcId"]) for e in seen) == sorted(
        [("CUSTOMER", c["id"]) for c, _ in customers] + [("VENDOR", vendor["id"])])
    by_id = {e["bcId"]: e for e in seen}
    assert by_id[customers[0][0]["id"]]["bcExists"] is False
    assert all(by_id[c["id"]]["bcExists"] and by_id[c["id"]]["dataverseExists"] for c, _ in customers[1:])
    assert by_id[vendor["id"]]["direction"] == "FromIntegrationTable"

    bc_before, dv_before = bc_emulator.stats.requests, dv_emulator.stats.requests
    page = await _errors(app, mapping="CUSTOMER", pageSize="10")
    assert len(page["value"]) == 3
    # one bulk read per side for the whole page, never one per record
    assert (bc_emulator.stats.requests - bc_before, dv_emulator.stats.requests - dv_before) == (1, 1)


# --- retry -------------------------------------------------------------------------------------------------------
async def test_retry_clears_skipped_and_the_next_run_retries(app, bc_emulator, dv_emulator):
    cust, acc = await _skipped_by_deleted_row(app, bc_emulator, dv_emulator, "Retried Co")
    r = await app("retry_skipped", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    assert r.status == 200, r
    assert r.json == {"mapping": "CUSTOMER", "retried": 1, "notRetried": []}
    c = await _coupling(cust["id"])
    assert not c.skipped and c.to_result == "Failure"  # the failed result stays: the next run picks it up
    assert (await _errors(app, mapping="CUSTOMER"))["value"] == []

    assert (await _run())["ToIntegrationTable"]["failed"] == 1  # retried, fails the same way
    assert (await _coupling(cust["id"])).skipped  # ... and is skipped again

    # Retry All with a deletion-conflict strategy: the strategy resolves it (BC's documented use of Retry All).
    patched = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"},
                        body={"deletionConflictResolution": "RestoreRecords"})
    assert patched.status == 200, patched
    r = await app("retry_skipped", "POST", body={"mapping": "CUSTOMER", "all": True})
    assert r.json["retried"] == 1
    assert (await _run())["ToIntegrationTable"]["inserted"] == 1
    c = await _coupling(cust["id"])
    assert not c.skipped and c.dataverse_id != acc["accountid"]
    assert dv_emulator.get("accounts", c.dataverse_id)["address1_city"] == "Oslo"


async def test_retry_reports_what_it_leaves_alone(app, bc_emulator, dv_emulator):
    healthy, _ = await _pair(app, bc_emulator, dv_emulator, "Not Skipped Co", sync=False)
    gone, _ = await _pair(app, bc_emulator, dv_emulator, "Gone Co", sync=False)
    await _mark_skipped(gone["id"])
    bc_emulator.delete("customers", gone["id"])
    stranger = str(uuid.uuid4())
    r = await app("retry_skipped", "POST", body={"mapping": "CUSTOMER",
                                                 "bcIds": [healthy["id"], gone["id"], stranger]})
    assert r.status == 200 and r.json["retried"] == 0
    assert {n["bcId"]: n["outcome"] for n in r.json["notRetried"]} == {
        healthy["id"]: "notSkipped", gone["id"]: "bcRecordMissing", stranger: "notCoupled"}
    assert (await _coupling(gone["id"])).skipped


# --- synchronize -------------------------------------------------------------------------------------------------
async def test_synchronize_settles_an_update_conflict_in_the_chosen_direction(app, bc_emulator, dv_emulator):
    cust, acc = await _pair(app, bc_emulator, dv_emulator, "Conflict Co")
    await _run()
    bc_emulator.update("customers", cust["id"], {"city": "Bern"})
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Basel"})
    # Two ToIntegrationTable passes fail with the same update conflict (strategy None). Full runs would not do:
    # their From pass fails too, with another message, and the two alternate in the one last_error.
    rt = get_runtime()
    mapping = await rt.mapping("CUSTOMER")
    for _ in range(2):
        res = await engine.run_pass(rt, engine.PassRequest(mapping, engine.TO))
        assert res.counters.failed == 1
    c = await _coupling(cust["id"])
    assert c.skipped and "bi-directional" in c.last_error
    other, _ = await _skipped_by_deleted_row(app, bc_emulator, dv_emulator, "No Row Co")

    r = await app("synchronize_skipped", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"], other["id"]],
                                                       "direction": "ToIntegrationTable"})
    assert r.status == 200, r
    by_id = {o["bcId"]: o for o in r.json["records"]}
    assert by_id[cust["id"]]["result"] == "modified"
    assert by_id[other["id"]]["result"] == "skipped" and by_id[other["id"]]["reason"] == "recordMissing"
    assert r.json["counts"]["modified"] == 1 and r.json["counts"]["skipped"] == 1 and len(r.json["jobs"]) == 1
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Bern"
    c = await _coupling(cust["id"])
    assert not c.skipped and c.to_result == "Success"
    assert (await _coupling(other["id"])).skipped  # left for restore or uncouple

    counters = await _run()  # settled: nothing in conflict any more
    assert counters["ToIntegrationTable"]["failed"] == counters["FromIntegrationTable"]["failed"] == 0
    c = await _coupling(cust["id"])
    assert not c.skipped and c.last_error is None and "Failure" not in (c.to_result, c.from_result)
    assert bc_emulator.get("customers", cust["id"])["city"] == "Bern"


# --- restore -----------------------------------------------------------------------------------------------------
async def test_restore_recreates_the_missing_row_and_recouples(app, bc_emulator, dv_emulator):
    cust, acc = await _skipped_by_deleted_row(app, bc_emulator, dv_emulator, "Restored Co")
    both, _ = await _pair(app, bc_emulator, dv_emulator, "Both Here Co", sync=False)
    await _mark_skipped(both["id"])
    neither, neither_acc = await _pair(app, bc_emulator, dv_emulator, "Neither Co", sync=False)
    await _mark_skipped(neither["id"])
    bc_emulator.delete("customers", neither["id"])
    dv_emulator.delete("accounts", neither_acc["accountid"])

    r = await app("restore_deleted", "POST", body={"mapping": "CUSTOMER", "all": True})
    assert r.status == 200, r
    by_id = {n["bcId"]: n for n in r.json["records"]}
    assert {k: n["outcome"] for k, n in by_id.items()} == {
        cust["id"]: "restored", both["id"]: "nothingToRestore", neither["id"]: "notRestorable"}
    assert r.json["counts"]["restored"] == 1 and r.json["counts"]["failed"] == 0
    restored = by_id[cust["id"]]
    assert restored["recreated"] == "dataverse" and restored["dataverseId"] != acc["accountid"]
    row = dv_emulator.get("accounts", restored["dataverseId"])
    assert (row["name"], row["address1_city"]) == ("Restored Co", "Oslo")
    c = await _coupling(cust["id"])
    assert c.dataverse_id == restored["dataverseId"] and not c.skipped and c.to_result == "Success"
    assert await get_runtime().couplings.get_by_dataverse("CUSTOMER", acc["accountid"]) is None
    listed = {e["bcId"] for e in (await _errors(app, mapping="CUSTOMER"))["value"]}
    assert listed == {both["id"], neither["id"]}
    assert (await _run())["ToIntegrationTable"]["failed"] == 0


async def test_a_failed_restore_keeps_the_record_on_the_errors_page(app, bc_emulator, dv_emulator):
    cust, acc = await _pair(app, bc_emulator, dv_emulator, "Blocked Later Co", sync=False)
    await _mark_skipped(cust["id"])
    dv_emulator.delete("accounts", acc["accountid"])
    bc_emulator.update("customers", cust["id"], {"blocked": "All"})  # now outside the mapping's table filter
    r = await app("restore_deleted", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    assert r.status == 200, r
    [note] = r.json["records"]
    assert note["outcome"] == "failed" and "filter" in note["message"]
    c = await _coupling(cust["id"])
    assert c is not None and c.skipped and c.dataverse_id == acc["accountid"]


# --- find for deleted --------------------------------------------------------------------------------------------
async def test_find_deleted_marks_couplings_of_deleted_bc_records_then_restore_recreates_them(
        app, bc_emulator, dv_emulator):
    cust, acc = await _pair(app, bc_emulator, dv_emulator, "Deleted In BC")
    kept, _ = await _pair(app, bc_emulator, dv_emulator, "Still In BC", sync=False)
    bc_emulator.delete("customers", cust["id"])
    r = await app("find_deleted", "POST", body={"mapping": "CUSTOMER"})
    assert r.status == 200, r
    assert r.json == {"mapping": "CUSTOMER", "checked": 2, "marked": 1, "alreadySkipped": 0, "changedMeanwhile": 0}
    c = await _coupling(cust["id"])
    assert c.skipped and c.last_error == "The Business Central record was deleted."
    assert not (await _coupling(kept["id"])).skipped
    [entry] = (await _errors(app, mapping="CUSTOMER"))["value"]
    assert (entry["bcId"], entry["bcExists"], entry["dataverseExists"]) == (cust["id"], False, True)
    again = await app("find_deleted", "POST", body={"mapping": "CUSTOMER"})
    assert (again.json["marked"], again.json["alreadySkipped"]) == (0, 1)

    r = await app("retry_skipped", "POST", body={"mapping": "CUSTOMER", "all": True})
    assert r.json["retried"] == 0 and r.json["notRetried"][0]["outcome"] == "bcRecordMissing"

    r = await app("restore_deleted", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    assert r.status == 200, r
    [note] = r.json["records"]
    assert note["outcome"] == "restored" and note["recreated"] == "bc" and note["dataverseId"] == acc["accountid"]
    assert bc_emulator.get("customers", note["bcId"])["displayName"] == "Deleted In BC"
    c = await get_runtime().couplings.get_by_dataverse("CUSTOMER", acc["accountid"])
    assert c.bc_id == note["bcId"] != cust["id"] and not c.skipped


# --- clean up ----------------------------------------------------------------------------------------------------
async def _old_job(days: float, mapping="CUSTOMER", errors: int = 0) -> Job:
    rt = get_runtime()
    at = datetime.now(timezone.utc) - timedelta(days=days)
    job = await rt.jobs.start(Job(id=job_id_for(at), mapping=mapping, direction="ToIntegrationTable",
                                  kind="Synchronization", started_at=at))
    if errors:
        await rt.jobs.add_errors(job.id, [JobError(job.id, mapping, "ToIntegrationTable", str(uuid.uuid4()), None,
                                                   f"error {i}") for i in range(errors)])
    return await rt.jobs.finish(job)


async def test_cleanup_deletes_old_jobs_but_keeps_those_skipped_couplings_point_to(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    kept_to = await _old_job(10, errors=2)
    kept_from = await _old_job(20, "VENDOR", errors=1)
    doomed = await _old_job(9, errors=3)
    recent = await _old_job(2)
    cust, _ = await _pair(app, bc_emulator, dv_emulator, "Cleanup Co", sync=False)
    await _mark_skipped(cust["id"], to_job_id=kept_to.id)
    vendor, _ = await _pair(app, bc_emulator, dv_emulator, "Cleanup Vendor", mapping="VENDOR", sync=False)
    await _mark_skipped(vendor["id"], "VENDOR", to_result=None, from_result="Failure", from_job_id=kept_from.id)

    r = await app("cleanup_job_log", "POST")  # no body: 7 days
    assert r.status == 200, r
    assert (r.json["deletedJobs"], r.json["deletedErrors"], r.json["keptJobs"]) == (1, 3, 2)
    assert await rt.jobs.get(doomed.id) is None and await rt.jobs.list_errors(doomed.id) == []
    assert len(await rt.jobs.list_errors(kept_to.id)) == 2 and len(await rt.jobs.list_errors(kept_from.id)) == 1
    assert await rt.jobs.get(recent.id) is not None

    r = await app("cleanup_job_log", "POST", body={"days": 1})
    assert r.status == 200 and r.json["deletedJobs"] == 1 and await rt.jobs.get(recent.id) is None
    assert await rt.jobs.get(kept_to.id) is not None and await rt.jobs.get(kept_from.id) is not None


# --- client errors -----------------------------------------------------------------------------------------------
GHOST = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"


def _token(mapping, inner=None):
    return base64.urlsafe_b64encode(json.dumps({"m": mapping, "t": inner}).encode()).decode().rstrip("=")


BAD_POSTS = [
    ("retry_skipped", {"mapping": "NOPE", "all": True}, 400),
    ("retry_skipped", {"all": True}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "bcIds": ["x"]}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "bcIds": "BCID"}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "bcIds": ["BCID"], "all": True}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER"}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "bcIds": []}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "all": False}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "all": "yes"}, 400),
    ("retry_skipped", {"mapping": "CUSTOMER", "all": True, "dataverseIds": []}, 400),
    ("retry_skipped", {"mapping": "PAYMENT TERMS", "all": True}, 422),
    ("synchronize_skipped", {"mapping": "CUSTOMER", "bcIds": ["BCID"]}, 400),  # Bidirectional: direction needed
    ("synchronize_skipped", {"mapping": "CUSTOMER", "all": True, "direction": "Bidirectional"}, 400),
    ("synchronize_skipped", {"mapping": "CUSTOMER", "all": True, "direction": "Sideways"}, 400),
    ("synchronize_skipped", {"mapping": "CURRENCY", "all": True, "direction": "FromIntegrationTable"}, 422),
    ("synchronize_skipped", {"mapping": "CUSTOMER", "direction": "ToIntegrationTable",
                             "bcIds": [str(uuid.UUID(int=i + 1)) for i in range(101)]}, 400),
    ("restore_deleted", {"mapping": "NOPE", "bcIds": ["BCID"]}, 400),
    ("restore_deleted", {"mapping": "CUSTOMER", "bcIds": ["BCID"], "all": True}, 400),
    ("restore_deleted", {"mapping": "SHIPMENT METHOD", "all": True}, 422),
    ("find_deleted", {"mapping": "NOPE"}, 400),
    ("find_deleted", {}, 400),
    ("find_deleted", {"mapping": "CUSTOMER", "all": True}, 400),
    ("cleanup_job_log", {"days": 0}, 400),
    ("cleanup_job_log", {"days": 3651}, 400),
    ("cleanup_job_log", {"days": "7"}, 400),
    ("cleanup_job_log", {"days": True}, 400),
    ("cleanup_job_log", {"days": 1.5}, 400),
    ("cleanup_job_log", {"older": 1}, 400),
]
BAD_RAW = [("retry_skipped", b"{"), ("restore_deleted", b"[]"), ("cleanup_job_log", b"\xff"),
           ("synchronize_skipped", b"")]
BAD_LISTS = [
    ({"pageSize": "0"}, 400), ({"pageSize": "1001"}, 400), ({"pageSize": "ten"}, 400), ({"mapping": "NOPE"}, 400),
    ({"mapping": "PAYMENT TERMS"}, 422), ({"continuation": "bogus"}, 400),
    ({"mapping": "VENDOR", "continuation": _token("CUSTOMER")}, 400),
    ({"mapping": "CUSTOMER", "continuation": _token("CUSTOMER", "forged.token")}, 400),
]


async def test_client_errors_are_4xx_and_write_nothing(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    cust, _ = await _pair(app, bc_emulator, dv_emulator, "Untouched Co", sync=False)
    gone, gone_acc = await _pair(app, bc_emulator, dv_emulator, "Untouched Gone Co", sync=False)
    await _mark_skipped(cust["id"])
    await _mark_skipped(gone["id"])
    dv_emulator.delete("accounts", gone_acc["accountid"])
    old = await _old_job(30, errors=1)
    before = [await _coupling(cust["id"]), await _coupling(gone["id"])]
    jobs_before, _ = await rt.jobs.list()
    writes = bc_emulator.stats.writes + dv_emulator.stats.writes

    problems = []
    for name, body, status in BAD_POSTS:
        body = json.loads(json.dumps(body).replace("BCID", cust["id"]))
        r = await app(name, "POST", body=body)
        if r.status != status or not r.json["error"]["message"] or not r.json["error"]["code"]:
            problems.append((name, body, r))
    for name, raw in BAD_RAW:
        r = await app(name, "POST", raw=raw)
        if r.status != 400 or not r.json["error"]["message"]:
            problems.append((name, raw, r))
    for params, status in BAD_LISTS:
        r = await app("list_sync_errors", params=params)
        if r.status != status or not r.json["error"]["message"]:
            problems.append(("list_sync_errors", params, r))
    assert problems == []

    assert [await _coupling(cust["id"]), await _coupling(gone["id"])] == before
    assert (await rt.jobs.list())[0] == jobs_before and await rt.jobs.get(old.id) is not None
    assert bc_emulator.stats.writes + dv_emulator.stats.writes == writes


async def test_all_beyond_the_limit_is_refused_before_anything_is_written(app, bc_emulator, dv_emulator, monkeypatch):
    from sync import errors_page

    monkeypatch.setattr(errors_page, "ACTION_LIMIT", 1)
    pairs = [await _pair(app, bc_emulator, dv_emulator, f"Many {i}", sync=False) for i in range(2)]
    for cust, acc in pairs:
        await _mark_skipped(cust["id"])
        dv_emulator.delete("accounts", acc["accountid"])
    writes = dv_emulator.stats.writes + bc_emulator.stats.writes
    for name, extra in (("synchronize_skipped", {"direction": "ToIntegrationTable"}), ("restore_deleted", {})):
        r = await app(name, "POST", body={"mapping": "CUSTOMER", "all": True, **extra})
        assert r.status == 422 and r.json["error"]["code"] == "TooManyRecords", r
    assert [(await _coupling(c["id"])).skipped for c, _ in pairs] == [True, True]
    assert dv_emulator.stats.writes + bc_emulator.stats.writes == writes
    assert (await get_runtime().jobs.list())[0] == []
