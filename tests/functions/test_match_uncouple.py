"""Match-based coupling and uncoupling through the registered functions (emulators + Azurite)."""
from __future__ import annotations

import uuid

import pytest

from sync.runtime import get_runtime

pytestmark = pytest.mark.usefixtures("app_env")


async def _couplings(mapping="CUSTOMER"):
    return [c async for page in get_runtime().couplings.iter_all(mapping) for c in page]


def _outcomes(result):
    return {r["bcId"]: r for r in result["records"]}


async def test_match_by_priority_groups_with_zero_one_and_many_matches(app, bc_emulator, dv_emulator):
    bc, dv = bc_emulator, dv_emulator
    one = bc.create("customers", {"displayName": "Zeta Unique Traders", "phoneNumber": "111"})
    case = bc.create("customers", {"displayName": "zeta CASE Traders", "phoneNumber": "222"})
    many = bc.create("customers", {"displayName": "Zeta Twin Traders", "phoneNumber": "333"})
    by_phone = bc.create("customers", {"displayName": "Zeta Renamed Traders", "phoneNumber": "444"})
    none = bc.create("customers", {"displayName": "Zeta Nobody", "phoneNumber": "555"})
    blank = bc.create("customers", {"displayName": "Zeta Blank Phone Twin", "phoneNumber": ""})
    a_one = dv.create("accounts", {"name": "Zeta Unique Traders", "customertypecode": 3})
    a_case = dv.create("accounts", {"name": "ZETA case traders", "customertypecode": 3})
    dv.create("accounts", {"name": "Zeta Twin Traders", "customertypecode": 3, "telephone1": "900"})
    dv.create("accounts", {"name": "Zeta Twin Traders", "customertypecode": 3, "telephone1": "901"})
    a_phone = dv.create("accounts", {"name": "Zeta Old Name", "customertypecode": 3, "telephone1": "444"})
    dv.create("accounts", {"name": "Zeta Nobody", "customertypecode": 11})  # a vendor: outside the filter
    dv.create("accounts", {"name": "Zeta Blank Phone Twin", "customertypecode": 3})
    dv.create("accounts", {"name": "Zeta Blank Phone Twin", "customertypecode": 3})
    ids = [one["id"], case["id"], many["id"], by_phone["id"], none["id"], blank["id"]]

    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": ids})
    assert r.status == 200, r
    out = _outcomes(r.json)
    assert out[one["id"]] == {"bcId": one["id"], "outcome": "coupled", "dataverseId": a_one["accountid"],
                              "priority": 0}
    assert out[case["id"]]["dataverseId"] == a_case["accountid"]  # case-insensitive by default
    assert out[many["id"]]["outcome"] == "unmatched"
    assert "several matches" in out[many["id"]]["reason"] and "priority 1: no match" in out[many["id"]]["reason"]
    assert out[by_phone["id"]] == {"bcId": by_phone["id"], "outcome": "coupled",
                                   "dataverseId": a_phone["accountid"], "priority": 1}
    assert out[none["id"]]["outcome"] == "unmatched"
    assert "priority 1: no criterion value (blank)" in out[blank["id"]]["reason"]
    assert r.json["counts"]["coupled"] == 3 and r.json["counts"]["unmatched"] == 3
    assert len(await _couplings()) == 3

    # Run again: the coupled ones are reported as already coupled and nothing changes.
    again = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": ids})
    assert again.json["counts"]["alreadyCoupled"] == 3 and again.json["counts"]["coupled"] == 0
    assert len(await _couplings()) == 3


async def test_a_match_already_coupled_is_not_taken(app, bc_emulator, dv_emulator):
    first = bc_emulator.create("customers", {"displayName": "Omega Shared"})
    second = bc_emulator.create("customers", {"displayName": "omega shared"})
    acc = dv_emulator.create("accounts", {"name": "Omega Shared", "customertypecode": 3})
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": [first["id"], second["id"]]})
    out = _outcomes(r.json)
    assert out[first["id"]]["dataverseId"] == acc["accountid"]
    assert out[second["id"]]["outcome"] == "unmatched" and "already coupled" in out[second["id"]]["reason"]


async def test_case_sensitive_criteria_after_patch(app, bc_emulator, dv_emulator):
    cust = bc_emulator.create("customers", {"displayName": "Sigma Case"})
    dv_emulator.create("accounts", {"name": "SIGMA CASE", "customertypecode": 3})
    patch = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, body={"matchCriteria": [
        {"bcField": "displayName", "dataverseColumn": "name", "priority": 0, "caseSensitive": True}]})
    assert patch.status == 200, patch
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    assert _outcomes(r.json)[cust["id"]]["outcome"] == "unmatched"


async def test_match_all_uncoupled_records_of_the_seed(app, bc_emulator, dv_emulator):
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER"})
    assert r.status == 200
    counts = r.json["counts"]
    in_filter = [c for c in bc_emulator.all("customers") if c["blocked"] == "_x0020_"]
    assert sum(counts.values()) == len(in_filter)
    assert counts["coupled"] >= 10  # the seed shares names between customers and accounts
    couplings = await _couplings()
    assert len(couplings) == counts["coupled"]
    assert len({c.dataverse_id for c in couplings}) == len(couplings)
    names = {c["id"]: c["displayName"].casefold() for c in bc_emulator.all("customers")}
    accounts = {a["accountid"]: a["name"].casefold() for a in dv_emulator.all("accounts")}
    assert all(names[c.bc_id] == accounts[c.dataverse_id] for c in couplings)


async def test_match_reports_missing_and_filtered_ids_and_validates(app, bc_emulator):
    blocked = bc_emulator.create("customers", {"displayName": "Blocked One", "blocked": "All"})
    ghost = str(uuid.uuid4())
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": [ghost, blocked["id"]]})
    out = _outcomes(r.json)
    assert out[ghost]["outcome"] == "notFound" and out[blocked["id"]]["outcome"] == "outsideFilter"
    for body in ({"mapping": "CUSTOMER", "bcIds": "x"}, {"mapping": "CUSTOMER", "bcIds": ["nope"]},
                 {"mapping": "CUSTOMER", "createNewIfNoMatch": 1}, {"bcIds": []}):
        assert (await app("couple_match", "POST", body=body)).status == 400
    none = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, body={"matchCriteria": []})
    assert none.status == 200
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER"})
    assert r.status == 422 and r.json["error"]["code"] == "NoMatchCriteria"


async def _couple(app, mapping, bc_id, dv_id):
    r = await app("couple", "POST", body={"mapping": mapping, "bcId": bc_id, "dataverseId": dv_id})
    assert r.status == 201, r


async def test_uncouple_by_ids_and_all_never_deletes_data(app, bc_emulator, dv_emulator):
    pairs = []
    for i in range(5):
        c = bc_emulator.create("customers", {"displayName": f"Uncouple {i}"})
        a = dv_emulator.create("accounts", {"name": f"Uncouple {i}", "customertypecode": 3})
        await _couple(app, "CUSTOMER", c["id"], a["accountid"])
        pairs.append((c["id"], a["accountid"]))
    ghost = str(uuid.uuid4())
    r = await app("uncouple", "POST", body={"mapping": "CUSTOMER", "bcIds": [pairs[0][0], ghost]})
    assert r.status == 200 and (r.json["uncoupled"], r.json["notCoupled"]) == (1, 1)
    r = await app("uncouple", "POST", body={"mapping": "CUSTOMER", "dataverseIds": [pairs[1][1]]})
    assert r.json["uncoupled"] == 1
    r = await app("uncouple", "POST", body={"mapping": "CUSTOMER", "all": True})
    assert r.json["uncoupled"] == 3
    assert await _couplings() == []
    assert all(bc_emulator.get("customers", c) and dv_emulator.get("accounts", a) for c, a in pairs)


async def test_uncoupling_an_account_uncouples_its_child_contacts(app, bc_emulator, dv_emulator):
    cust = bc_emulator.create("customers", {"displayName": "Parent Co"})
    acc = dv_emulator.create("accounts", {"name": "Parent Co", "customertypecode": 3})
    await _couple(app, "CUSTOMER", cust["id"], acc["accountid"])
    company = bc_emulator.create("contacts", {"displayName": "Parent Co", "type": "Company"})
    kids = []
    for i in range(3):
        person = bc_emulator.create("contacts", {"displayName": f"Kid {i}", "type": "Person",
                                                 "companyNumber": company["number"]})
        row = dv_emulator.create("contacts", {"lastname": f"Kid {i}",
                                              "parentcustomerid_account@odata.bind": f"/accounts({acc['accountid']})"})
        await _couple(app, "CONTACT", person["id"], row["contactid"])
        kids.append(row["contactid"])
    other_person = bc_emulator.create("contacts", {"displayName": "Orphan", "type": "Person",
                                                   "companyNumber": company["number"]})
    other_row = dv_emulator.create("contacts", {"lastname": "Orphan"})
    await _couple(app, "CONTACT", other_person["id"], other_row["contactid"])

    r = await app("uncouple", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    assert r.status == 200 and r.json == {"mapping": "CUSTOMER", "uncoupled": 1, "notCoupled": 0,
                                          "childContactsUncoupled": 3}
    left = await _couplings("CONTACT")
    assert [c.dataverse_id for c in left] == [other_row["contactid"]]


@pytest.mark.parametrize("body", [
    {"mapping": "CUSTOMER"},
    {"mapping": "CUSTOMER", "all": True, "bcIds": []},
    {"mapping": "CUSTOMER", "bcIds": ["x"]},
    {"mapping": "CUSTOMER", "all": "true"},
    {"mapping": "CUSTOMER", "dataverseIds": [1]},
    {"mapping": "NOPE", "all": True},
])
async def test_uncouple_client_errors(app, body):
    r = await app("uncouple", "POST", body=body)
    assert r.status == 400 and r.json["error"]["message"]


async def test_match_then_synchronize_the_new_pairs(app, bc_emulator, dv_emulator):
    cust = bc_emulator.create("customers", {"displayName": "Synced Match", "city": "Lille"})
    acc = dv_emulator.create("accounts", {"name": "Synced Match", "customertypecode": 3, "address1_city": "Metz"})
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]],
                                               "syncAfterCoupling": "ToIntegrationTable"})
    assert r.status == 200 and r.json["synchronization"]["counts"]["modified"] == 1
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Lille"
    # the mapping's own setting, as BC's "Synch. After Match-Based Coupling" with "Get Update from Integration"
    patch = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, body={
        "syncAfterMatchCoupling": True, "updateConflictResolution": "GetUpdateFromIntegration"})
    assert patch.status == 200, patch
    other = bc_emulator.create("customers", {"displayName": "Get Match", "city": "Caen"})
    dv_emulator.create("accounts", {"name": "Get Match", "customertypecode": 3, "address1_city": "Brest"})
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": [other["id"]]})
    assert r.json["synchronization"]["direction"] == "FromIntegrationTable"
    assert bc_emulator.get("customers", other["id"])["city"] == "Brest"
