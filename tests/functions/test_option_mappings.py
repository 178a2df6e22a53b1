"""Option mappings end to end (PAYMENT TERMS, SHIPMENT METHOD): couple by option value, create new, match by label,
the option synchronization pass (To and From) and lookups through option couplings in CUSTOMER.

Through the registered functions and the services, against both emulators and real Azurite."""
from __future__ import annotations

from dataclasses import replace

import pytest

from coupling.model import option_value_id
from emulators import dataverse_metadata as md
from sync import engine, schedule
from sync.mappings import DeletionConflictResolution, Direction
from sync.runtime import get_runtime

pytestmark = pytest.mark.usefixtures("app_env")

TO, FROM = Direction.TO_INTEGRATION_TABLE, Direction.FROM_INTEGRATION_TABLE
PT = "PAYMENT TERMS"
STOCK = {1: "Net 30", 2: "2% 10, Net 30", 3: "Net 45", 4: "Net 60"}
SEEDED_CODES = {"10 DAYS", "14 DAYS", "30 DAYS", "1M(8D)", "CM", "COD"}


async def _couplings(mapping=PT):
    return [c async for page in get_runtime().couplings.iter_all(mapping) for c in page]


def _term(bc, code):
    return next(t for t in bc.all("paymentTerms") if t["code"] == code)


def _options(dv):
    return md.options(dv, "account", "paymenttermscode")


# --- couple by option value -------------------------------------------------------------------------------------------
async def test_couple_by_option_value_then_look_up_and_uncouple(app, bc_emulator, dv_emulator):
    term = _term(bc_emulator, "30 DAYS")
    body = {"mapping": "payment terms", "bcId": term["id"], "dataverseOptionValue": 1}
    r = await app("couple", "POST", body=body)
    assert r.status == 201, r
    c = r.json["coupling"]
    assert (c["mapping"], c["bcId"], c["dataverseOptionValue"]) == (PT, term["id"], 1)
    assert c["dataverseId"] == option_value_id(1) == "00000000-0000-0000-0000-000000000001"
    again = await app("couple", "POST", body=body)
    assert again.status == 200 and again.json["created"] is False
    assert _options(dv_emulator) == STOCK  # coupling writes nothing to Dataverse

    by_value = await app("get_couplings", route={"mapping": PT}, params={"dataverseOptionValue": "1"})
    by_id = await app("get_couplings", route={"mapping": PT}, params={"dataverseId": option_value_id(1)})
    by_bc = await app("get_couplings", route={"mapping": PT}, params={"bcId": term["id"]})
    assert by_value.status == by_id.status == by_bc.status == 200
    assert by_value.json == by_id.json == by_bc.json
    listed = await app("get_couplings", route={"mapping": PT})
    assert [x["dataverseOptionValue"] for x in listed.json["value"]] == [1]
    for params in ({"dataverseOptionValue": "x"}, {"dataverseOptionValue": "0"},
                   {"dataverseOptionValue": "1", "dataverseId": option_value_id(1)}):
        assert (await app("get_couplings", route={"mapping": PT}, params=params)).status == 400, params
    assert (await app("get_couplings", route={"mapping": PT}, params={"dataverseOptionValue": "2"})).status == 404

    r = await app("uncouple", "POST", body={"mapping": PT, "dataverseIds": [option_value_id(1)]})
    assert r.status == 200 and r.json["uncoupled"] == 1 and r.json["childContactsUncoupled"] == 0
    assert await _couplings() == []


async def test_couple_unknown_value_is_404_and_already_coupled_is_409(app, bc_emulator):
    ten, fourteen = _term(bc_emulator, "10 DAYS"), _term(bc_emulator, "14 DAYS")
    r = await app("couple", "POST", body={"mapping": PT, "bcId": ten["id"], "dataverseOptionValue": 99})
    assert r.status == 404 and r.json["error"]["details"]["dataverseMissing"] is True
    assert "99" in r.json["error"]["message"] and "Net 45" in r.json["error"]["message"]
    r = await app("couple", "POST", body={"mapping": PT, "bcId": "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b",
                                         "dataverseOptionValue": 3})
    assert r.status == 404 and r.json["error"]["details"] == {"bcMissing": True, "dataverseMissing": False}
    assert (await app("couple", "POST", body={"mapping": PT, "bcId": ten["id"],
                                              "dataverseOptionValue": 3})).status == 201
    r = await app("couple", "POST", body={"mapping": PT, "bcId": fourteen["id"], "dataverseOptionValue": 3})
    assert r.status == 409 and r.json["error"]["code"] == "AlreadyCoupled"
    assert "option 3" in r.json["error"]["message"]
    assert r.json["error"]["details"]["coupling"]["bcId"] == ten["id"]
    r = await app("couple", "POST", body={"mapping": PT, "bcId": ten["id"], "dataverseOptionValue": 4})
    assert r.status == 409 and r.json["error"]["details"]["coupling"]["dataverseOptionValue"] == 3
    assert len(await _couplings()) == 1


@pytest.mark.parametrize("extra, mapping, code", [
    ({"dataverseOptionValue": "3"}, PT, "InvalidField"),
    ({"dataverseOptionValue": True}, PT, "InvalidField"),
    ({"dataverseOptionValue": -1}, PT, "InvalidField"),
    ({"dataverseOptionValue": 0}, PT, "InvalidField"),          # the nil GUID: not couplable
    ({"dataverseOptionValue": 2 ** 31}, PT, "InvalidField"),
    ({"dataverseOptionValue": 3, "dataverseId": "7a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"}, PT, "InvalidIds"),
    ({"dataverseId": "7a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"}, PT, "InvalidIds"),  # an option mapping needs a value
    ({"dataverseOptionValue": 3}, "CUSTOMER", "InvalidIds"),                      # a record mapping needs a row id
    ({}, PT, "InvalidIds"),
])
async def test_couple_request_errors_are_400_and_write_nothing(app, bc_emulator, extra, mapping, code):
    term = _term(bc_emulator, "CM")
    r = await app("couple", "POST", body={"mapping": mapping, "bcId": term["id"], **extra})
    assert (r.status, r.json["error"]["code"]) == (400, code), r
    assert await _couplings() == [] and await _couplings("CUSTOMER") == []


async def test_sync_after_coupling_renames_the_option_to_the_bc_code(app, bc_emulator, dv_emulator):
    term = _term(bc_emulator, "COD")
    r = await app("couple", "POST", body={"mapping": PT, "bcId": term["id"], "dataverseOptionValue": 4,
                                         "syncAfterCoupling": "ToIntegrationTable"})
    assert r.status == 201, r
    assert r.json["synchronization"]["counts"]["modified"] == 1
    assert _options(dv_emulator)[4] == "COD"
    assert r.json["coupling"]["lastSynchToIntegrationTable"]["result"] == "Success"


# --- create new -------------------------------------------------------------------------------------------------------
async def test_create_new_adds_one_option_labelled_with_the_code_and_is_idempotent(app, bc_emulator, dv_emulator):
    term = _term(bc_emulator, "1M(8D)")
    body = {"mapping": PT, "bcId": term["id"], "createNew": True}
    r = await app("couple", "POST", body=body)
    assert r.status == 201, r
    value = r.json["coupling"]["dataverseOptionValue"]
    assert value == 100000000 and _options(dv_emulator) == {**STOCK, value: "1M(8D)"}
    assert r.json["coupling"]["lastSynchToIntegrationTable"]["result"] == "Success"
    again = await app("couple", "POST", body=body)
    assert again.status == 200 and again.json["created"] is False
    assert again.json["coupling"]["dataverseOptionValue"] == value
    assert _options(dv_emulator) == {**STOCK, value: "1M(8D)"}
    # the coupling lost (a crash between the insert and the coupling): the option is found by its label
    await app("uncouple", "POST", body={"mapping": PT, "bcIds": [term["id"]]})
    third = await app("couple", "POST", body=body)
    assert third.status == 201 and third.json["coupling"]["dataverseOptionValue"] == value
    assert len(_options(dv_emulator)) == 5
    # an account may now hold the option (the value is valid for the column)
    dv_emulator.create("accounts", {"name": "Holder", "paymenttermscode": value})


async def test_create_new_survives_a_lost_insert_answer(app, bc_emulator, dv_emulator):
    term = _term(bc_emulator, "14 DAYS")
    dv_emulator.inject("drop_after", match=lambda r: r.path.endswith("/InsertOptionValue"))
    r = await app("couple", "POST", body={"mapping": PT, "bcId": term["id"], "createNew": True})
    assert r.status == 201, r
    assert list(_options(dv_emulator).values()).count("14 DAYS") == 1
    assert r.json["coupling"]["dataverseOptionValue"] == 100000000


async def test_create_new_refusals(app, bc_emulator, dv_emulator):
    # the record's code is the label of an option coupled to another record
    net45 = bc_emulator.create("paymentTerms", {"code": "NET 45", "displayName": "Net 45 days"})
    other = _term(bc_emulator, "CM")
    assert (await app("couple", "POST", body={"mapping": PT, "bcId": other["id"],
                                              "dataverseOptionValue": 3})).status == 201
    r = await app("couple", "POST", body={"mapping": PT, "bcId": net45["id"], "createNew": True})
    assert r.status == 409 and "same label" in r.json["error"]["message"]
    # already coupled to an option with another label
    r = await app("couple", "POST", body={"mapping": PT, "bcId": other["id"], "createNew": True})
    assert r.status == 409 and r.json["error"]["code"] == "AlreadyCoupled"
    # From (a BC record for an option) needs a From mapping
    r = await app("couple", "POST", body={"mapping": PT, "dataverseOptionValue": 4, "createNew": True})
    assert r.status == 422 and r.json["error"]["code"] == "DirectionNotAllowed"
    assert _options(dv_emulator) == STOCK


# --- match by label ---------------------------------------------------------------------------------------------------
async def test_match_codes_with_labels_case_insensitively_then_create_the_missing_options(app, bc_emulator,
                                                                                          dv_emulator):
    net30 = bc_emulator.create("paymentTerms", {"code": "NET 30", "displayName": "Net 30"})
    net60 = bc_emulator.create("paymentTerms", {"code": "net 60", "displayName": "Net 60"})
    ten = _term(bc_emulator, "10 DAYS")
    r = await app("couple_match", "POST", body={"mapping": PT, "bcIds": [net30["id"], net60["id"], ten["id"]],
                                               "createNewIfNoMatch": False})
    assert r.status == 200, r
    out = {x["bcId"]: x for x in r.json["records"]}
    assert out[net30["id"]]["outcome"] == "coupled" and out[net30["id"]]["dataverseOptionValue"] == 1
    assert out[net60["id"]]["dataverseOptionValue"] == 4
    assert out[ten["id"]]["outcome"] == "unmatched" and "no match" in out[ten["id"]]["reason"]
    assert _options(dv_emulator) == STOCK

    # every uncoupled record, with the mapping's default (Create New in Case of No Match)
    r = await app("couple_match", "POST", body={"mapping": PT})
    assert r.status == 200, r
    counts = r.json["counts"]
    assert counts["alreadyCoupled"] == 2 and counts["created"] == len(SEEDED_CODES) and counts["failed"] == 0
    assert set(_options(dv_emulator).values()) == set(STOCK.values()) | SEEDED_CODES
    assert len(await _couplings()) == 2 + len(SEEDED_CODES)
    # nothing left to do
    r = await app("couple_match", "POST", body={"mapping": PT})
    assert r.json["counts"]["alreadyCoupled"] == 2 + len(SEEDED_CODES) and r.json["counts"]["created"] == 0


# --- the synchronization pass -----------------------------------------------------------------------------------------
async def _run(rt, mapping):
    results = await engine.run_mapping(rt, mapping)
    return {r.job.direction: r for r in results}


async def test_scheduled_payment_terms_then_customer_lookups_both_ways(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    assert PT in schedule.scheduled_mappings(await rt.mappings())
    net30 = bc_emulator.create("paymentTerms", {"code": "NET 30", "displayName": "Net 30 days"})
    pt = await rt.mapping(PT)

    first = (await _run(rt, pt))["ToIntegrationTable"]
    assert first.job.status == "Finished"
    assert first.counters.to_json() == {"inserted": len(SEEDED_CODES), "modified": 1, "unchanged": 0,
                                        "skipped": 0, "failed": 0}
    couplings = {c.bc_id: c for c in await _couplings()}
    assert set(couplings) == {t["id"] for t in bc_emulator.all("paymentTerms")}
    assert couplings[net30["id"]].dataverse_id == option_value_id(1)  # matched "Net 30" by label
    labels = _options(dv_emulator)
    assert set(labels.values()) == set(STOCK.values()) | SEEDED_CODES
    assert all(c.to_result == "Success" and c.bc_modified_on for c in couplings.values())
    jobs, _ = await rt.jobs.list(PT)
    assert [j.counters["inserted"] for j in jobs] == [len(SEEDED_CODES)]

    writes = dv_emulator.stats.writes
    second = (await _run(rt, pt))["ToIntegrationTable"]
    assert second.counters.inserted == second.counters.modified == second.counters.failed == 0
    assert dv_emulator.stats.writes == writes

    # a renamed BC code renames its option
    cm = _term(bc_emulator, "CM")
    bc_emulator.update("paymentTerms", cm["id"], {"code": "CURMONTH"})
    third = (await _run(rt, pt))["ToIntegrationTable"]
    assert third.counters.modified == 1
    cm_value = int(couplings[cm["id"]].dataverse_id[-12:], 16)
    assert _options(dv_emulator)[cm_value] == "CURMONTH"

    # CUSTOMER: paymentTermsId -> the coupled option value
    thirty = _term(bc_emulator, "30 DAYS")
    thirty_value = int(couplings[thirty["id"]].dataverse_id[-12:], 16)
    cust = bc_emulator.create("customers", {"displayName": "Option Lookups Ltd", "paymentTermsId": thirty["id"]})
    acc = dv_emulator.create("accounts", {"name": "Option Lookups (old)", "customertypecode": 3})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": acc["accountid"],
                                         "syncAfterCoupling": "ToIntegrationTable"})
    assert r.status == 201 and r.json["synchronization"]["counts"]["modified"] == 1, r
    assert dv_emulator.get("accounts", acc["accountid"])["paymenttermscode"] == thirty_value

    # From: the account's option comes back as the coupled payment terms
    dv_emulator.update("accounts", acc["accountid"], {"paymenttermscode": 1})
    counters = {d: res.counters.to_json() for d, res in (await _run(rt, await rt.mapping("CUSTOMER"))).items()}
    assert counters["FromIntegrationTable"]["modified"] == 1, counters
    assert bc_emulator.get("customers", cust["id"])["paymentTermsId"] == net30["id"]


async def test_customer_with_uncoupled_payment_terms_still_fails_with_bcs_message(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    thirty = _term(bc_emulator, "30 DAYS")
    cust = bc_emulator.create("customers", {"displayName": "Not Yet Coupled", "paymentTermsId": thirty["id"]})
    acc = dv_emulator.create("accounts", {"name": "Not Yet Coupled", "customertypecode": 3})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": acc["accountid"],
                                         "syncAfterCoupling": "ToIntegrationTable"})
    assert r.json["synchronization"]["counts"]["failed"] == 1
    assert "must be coupled to a Dataverse row" in r.json["synchronization"]["records"][0]["message"]
    await engine.run_mapping(rt, await rt.mapping(PT))
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": acc["accountid"],
                                         "syncAfterCoupling": "ToIntegrationTable"})
    assert r.json["synchronization"]["counts"]["modified"] == 1, r
    assert dv_emulator.get("accounts", acc["accountid"])["paymenttermscode"] >= 100000000


def _from_mapping(m):
    return replace(m, direction=FROM, field_mappings=tuple(replace(f, direction=FROM) for f in m.field_mappings),
                   create_new_if_no_match=False)


async def test_from_pass_creates_bc_records_named_after_the_labels(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    pt = _from_mapping(await rt.mapping(PT))
    before = {t["code"] for t in bc_emulator.all("paymentTerms")}
    first = (await _run(rt, pt))["FromIntegrationTable"]
    assert first.counters.to_json() == {"inserted": 3, "modified": 0, "unchanged": 0, "skipped": 0, "failed": 1}
    assert {t["code"] for t in bc_emulator.all("paymentTerms")} == before | {"NET 30", "NET 45", "NET 60"}
    errors = await rt.jobs.list_errors(first.job.id)
    assert len(errors) == 1 and errors[0].dataverse_id == option_value_id(2)
    assert "'2% 10, Net 30'" in errors[0].message and "13 characters" in errors[0].message
    assert "at most 10" in errors[0].message
    by_value = {c.dataverse_id: c.bc_id for c in await _couplings()}
    assert bc_emulator.get("paymentTerms", by_value[option_value_id(3)])["code"] == "NET 45"

    bc_writes = bc_emulator.stats.writes
    second = (await _run(rt, pt))["FromIntegrationTable"]
    assert second.counters.unchanged == 3 and second.counters.inserted == 0 and second.counters.failed == 1
    assert bc_emulator.stats.writes == bc_writes

    # a relabelled option renames its BC record; an existing BC code is coupled, not duplicated
    md.update_option(dv_emulator, "account", "paymenttermscode", 4, "Net 90")
    cod_value = md.insert_option(dv_emulator, "account", "paymenttermscode", "cod")
    third = (await _run(rt, pt))["FromIntegrationTable"]
    assert third.counters.modified == 2 and third.counters.failed == 1
    assert bc_emulator.get("paymentTerms", by_value[option_value_id(4)])["code"] == "NET 90"
    couplings = {c.dataverse_id: c.bc_id for c in await _couplings()}
    assert couplings[option_value_id(cod_value)] == _term(bc_emulator, "COD")["id"]
    assert [t["code"] for t in bc_emulator.all("paymentTerms")].count("COD") == 1


async def test_deleted_option_is_a_deletion_conflict(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    pt = await rt.mapping(PT)
    await engine.run_mapping(rt, pt)
    cm = _term(bc_emulator, "CM")
    value = int((await rt.couplings.get_by_bc(PT, cm["id"])).dataverse_id[-12:], 16)
    md.delete_option(dv_emulator, "account", "paymenttermscode", value)
    bc_emulator.update("paymentTerms", cm["id"], {"displayName": "Current month"})
    res = (await _run(rt, pt))["ToIntegrationTable"]
    assert res.counters.failed == 1
    assert "coupled to a deleted option" in (await rt.couplings.get_by_bc(PT, cm["id"])).last_error
    restoring = replace(pt, deletion_conflict_resolution=DeletionConflictResolution.RESTORE_RECORDS)
    res = (await _run(rt, restoring))["ToIntegrationTable"]
    assert res.counters.inserted == 1, res.to_json()
    new_value = int((await rt.couplings.get_by_bc(PT, cm["id"])).dataverse_id[-12:], 16)
    assert new_value != value and _options(dv_emulator)[new_value] == "CM"


async def test_shipment_methods_follow_the_same_rules(app, bc_emulator, dv_emulator):
    rt = get_runtime()
    res = (await _run(rt, await rt.mapping("SHIPMENT METHOD")))["ToIntegrationTable"]
    assert res.counters.modified == 1 and res.counters.inserted == 5  # FOB matches the stock option 1
    fob = next(s for s in bc_emulator.all("shipmentMethods") if s["code"] == "FOB")
    assert (await rt.couplings.get_by_bc("SHIPMENT METHOD", fob["id"])).dataverse_id == option_value_id(1)
    labels = md.options(dv_emulator, "account", "address1_freighttermscode")
    assert set(labels.values()) == {"FOB", "No Charge", "CFR", "CIF", "DDP", "EXW", "PICKUP"}
