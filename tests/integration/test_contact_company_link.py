"""CONTACT's company link (bc-integration-semantics 10.4, 11.7) through the engine, against both emulators and
Azurite: BC's person contact -> company contact -> business relation -> customer / vendor -> coupled account =
the Dataverse contact's ``parentcustomerid``, and back."""
from __future__ import annotations

import pytest

from coupling import service
from sync import engine
from sync.mappings import Direction
from sync.runtime import close_runtime, get_runtime

TO, FROM = Direction.TO_INTEGRATION_TABLE, Direction.FROM_INTEGRATION_TABLE
NO_RELATION = "The contact {} must have a contact company that has a business relation to a customer or vendor."
NO_COMPANY = "The contact cannot be synchronized because the company does not exist."


@pytest.fixture
async def rt(app_env):
    runtime = get_runtime()
    yield runtime
    await close_runtime()


async def _couple(rt, name, bc_id, dv_id):
    await service.couple_existing(rt, await rt.mapping(name), bc_id, dv_id)


async def _account_of(rt, bc, dv, entity_set, name):
    """A new customer (or vendor) coupled to a new account; returns (record, account, its company contact)."""
    rec = bc.create(entity_set, {"displayName": name})
    acc = dv.create("accounts", {"name": name, "customertypecode": 3 if entity_set == "customers" else 11})
    await _couple(rt, "CUSTOMER" if entity_set == "customers" else "VENDOR", rec["id"], acc["accountid"])
    return rec, acc, bc.company_contact(entity_set, rec["id"])


async def _person(rt, bc, dv, name, company_number, parent_account=None):
    """A BC person contact under ``company_number`` coupled to a new Dataverse contact."""
    person = bc.create("contacts", {"type": "Person", "displayName": name, "companyNumber": company_number})
    fields = {"firstname": name.split()[0], "lastname": name.split()[-1]}
    if parent_account:
        fields["parentcustomerid_account@odata.bind"] = f"/accounts({parent_account})"
    row = dv.create("contacts", fields)
    await _couple(rt, "CONTACT", person["id"], row["contactid"])
    return person, row


async def _run(rt):
    """A scheduled run of CONTACT: the To pass, then the From pass."""
    results = await engine.run_mapping(rt, await rt.mapping("CONTACT"))
    return {r.job.direction: r.counters.to_json() for r in results}


async def _sync_now(rt, *bc_ids):
    """BC's "Synchronize Now" of coupled contacts, To (forced), as after a manual coupling."""
    req = engine.PassRequest(await rt.mapping("CONTACT"), TO, kind="SyncNow", ids=list(bc_ids), forced=True,
                             keep_outcomes=True)
    return await engine.run_pass(rt, req)


def _parent(dv, row):
    return dv.get("contacts", row["contactid"])["_parentcustomerid_value"]


def _writes(*emus):
    return sum(e.stats.writes for e in emus)


async def test_to_sets_the_parent_account_then_a_second_run_writes_nothing(rt, bc_emulator, dv_emulator):
    _, acc, company = await _account_of(rt, bc_emulator, dv_emulator, "customers", "Link Co")
    person, row = await _person(rt, bc_emulator, dv_emulator, "Ann Lee", company["number"])
    assert _parent(dv_emulator, row) is None
    res = await _sync_now(rt, person["id"])
    assert res.counters.modified == 1, res.to_json()
    assert _parent(dv_emulator, row) == acc["accountid"]

    # the person moves to another customer's company in BC: a scheduled To pass moves the parent
    _, new_acc, new_company = await _account_of(rt, bc_emulator, dv_emulator, "customers", "New Employer")
    bc_emulator.update("contacts", person["id"], {"companyNumber": new_company["number"]})
    first = await _run(rt)
    assert first["ToIntegrationTable"]["modified"] == 1 and first["ToIntegrationTable"]["failed"] == 0
    assert first["FromIntegrationTable"]["failed"] == first["FromIntegrationTable"]["modified"] == 0
    assert _parent(dv_emulator, row) == new_acc["accountid"]
    assert bc_emulator.get("contacts", person["id"])["companyNumber"] == new_company["number"]

    writes = _writes(bc_emulator, dv_emulator)
    second = await _run(rt)
    assert _writes(bc_emulator, dv_emulator) == writes
    for counters in second.values():
        assert counters["modified"] == counters["failed"] == counters["inserted"] == 0


async def test_from_sets_the_company_contact_of_the_vendor_coupled_to_the_parent(rt, bc_emulator, dv_emulator):
    _, _, old_company = await _account_of(rt, bc_emulator, dv_emulator, "customers", "Old Employer")
    vendor, vendor_acc, vendor_company = await _account_of(rt, bc_emulator, dv_emulator, "vendors", "Supplier Co")
    person, row = await _person(rt, bc_emulator, dv_emulator, "Bo Chen", old_company["number"])
    await _sync_now(rt, person["id"])  # both sides agree: the customer's account
    await _run(rt)
    dv_emulator.update("contacts", row["contactid"],
                       {"parentcustomerid_account@odata.bind": f"/accounts({vendor_acc['accountid']})"})

    counters = await _run(rt)
    assert counters["FromIntegrationTable"]["modified"] == 1 and counters["FromIntegrationTable"]["failed"] == 0
    moved = bc_emulator.get("contacts", person["id"])
    assert moved["companyNumber"] == vendor_company["number"] and moved["companyName"] == "Supplier Co"
    assert moved["contactBusinessRelation"] == "Vendor"
    writes = _writes(bc_emulator, dv_emulator)
    again = await _run(rt)
    assert _writes(bc_emulator, dv_emulator) == writes
    assert again["ToIntegrationTable"]["modified"] == again["FromIntegrationTable"]["modified"] == 0


async def test_a_company_without_a_customer_or_vendor_relation_fails_with_bcs_message(rt, bc_emulator, dv_emulator):
    loose = bc_emulator.create("contacts", {"type": "Company", "displayName": "No Relation Ltd"})
    assert loose["contactBusinessRelation"] == "None"
    person, row = await _person(rt, bc_emulator, dv_emulator, "Cy Dunn", loose["number"])
    uncoupled_customer = bc_emulator.create("customers", {"displayName": "Not Coupled Inc"})  # related, no account
    company = bc_emulator.company_contact("customers", uncoupled_customer["id"])
    other, other_row = await _person(rt, bc_emulator, dv_emulator, "Di Eve", company["number"])

    res = await engine.run_pass(rt, engine.PassRequest(await rt.mapping("CONTACT"), TO, keep_outcomes=True))
    assert res.counters.failed == 2 and res.counters.modified == 0
    messages = {o.bc_id: o.message for o in res.outcomes}
    assert messages[person["id"]] == NO_RELATION.format(person["number"])
    assert messages[other["id"]] == NO_RELATION.format(other["number"])
    c = await rt.couplings.get_by_bc("CONTACT", person["id"])
    assert c.to_result == "Failure" and c.last_error == NO_RELATION.format(person["number"])
    assert _parent(dv_emulator, row) is None and _parent(dv_emulator, other_row) is None

    # From: a parent account coupled to no customer or vendor
    stray = dv_emulator.create("accounts", {"name": "Stray", "customertypecode": 3})
    dv_emulator.update("contacts", other_row["contactid"],
                       {"parentcustomerid_account@odata.bind": f"/accounts({stray['accountid']})"})
    res = await engine.run_pass(rt, engine.PassRequest(await rt.mapping("CONTACT"), FROM, keep_outcomes=True))
    assert [o.message for o in res.outcomes if o.dataverse_id == other_row["contactid"]] == [NO_COMPANY]
    assert bc_emulator.get("contacts", other["id"])["companyNumber"] == company["number"]  # unchanged


async def test_customer_first_then_vendor_and_a_renamed_customer(rt, bc_emulator, dv_emulator):
    """A company related to an uncoupled customer and a coupled vendor gets the vendor's account (BC tries the
    customer first); a customer renamed after its contact was created is still found (full read fallback)."""
    vendor, vendor_acc, _ = await _account_of(rt, bc_emulator, dv_emulator, "vendors", "Both Sides")
    cust = bc_emulator.create("customers", {"displayName": "Both Sides"})
    company = bc_emulator.company_contact("customers", cust["id"])
    bc_emulator.relate(company["id"], "vendors", vendor["id"])
    assert bc_emulator.get("contacts", company["id"])["contactBusinessRelation"] == "Multiple"
    both, both_row = await _person(rt, bc_emulator, dv_emulator, "Ed Fox", company["number"])

    renamed, renamed_acc, renamed_company = await _account_of(rt, bc_emulator, dv_emulator, "customers", "Old Name")
    bc_emulator.update("customers", renamed["id"], {"displayName": "New Name"})
    renamed_person, renamed_row = await _person(rt, bc_emulator, dv_emulator, "Flo Gray", renamed_company["number"])

    res = await _sync_now(rt, both["id"], renamed_person["id"])
    assert res.counters.modified == 2, res.to_json()
    assert _parent(dv_emulator, both_row) == vendor_acc["accountid"]
    assert _parent(dv_emulator, renamed_row) == renamed_acc["accountid"]


async def test_resolution_is_bulk_not_per_contact(rt, bc_emulator, dv_emulator):
    """The BC requests of a To pass don't grow with the number of contacts and companies: the contacts by id, their
    company contacts, the customers named like them (with contactsInformation) - one request each."""
    async def pass_requests(n: int) -> int:
        ids = []
        for i in range(n):
            _, _, company = await _account_of(rt, bc_emulator, dv_emulator, "customers", f"Bulk {n}-{i}")
            for j in range(2):
                person, _ = await _person(rt, bc_emulator, dv_emulator, f"P{j} Bulk{n}x{i}", company["number"])
                ids.append(person["id"])
        before = bc_emulator.stats.requests
        res = await _sync_now(rt, *ids)
        assert res.counters.modified == 2 * n and res.counters.failed == 0, res.to_json()
        return bc_emulator.stats.requests - before

    await pass_requests(1)  # the first pass also reads the company's LCY (cached by the runtime)
    small = await pass_requests(1)
    assert await pass_requests(15) == small == 3
