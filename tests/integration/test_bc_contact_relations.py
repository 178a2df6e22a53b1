"""Business relations in the BC emulator: the company contact BC creates with each customer and vendor, the
contacts' ``contactBusinessRelation``, and ``customers({id})/contactsInformation`` / ``vendors({id})/...`` with
``$expand=contactsInformation`` (apis.md C2/C3; page 30072 "APIV2 - Contacts Information" and table 5049 "Contact
Information Buffer" of microsoft/BCApps), through real HTTP.

Shapes follow the documented contactInformation resource (devitpro ``dynamics_contactinformation.md``) and the
``contactInformation`` rows of reference/schema/bc-api-v2-properties.csv, in that order.
"""
from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest

from emulators.bc import BCEmulator
from emulators.server import DEFAULT_TOKEN
from tests.conftest import BC_COMPANY_ID
from tests.integration.test_bc_emulator import assert_error, page_all, values

INFO_KEYS = ["contactId", "contactNumber", "contactName", "contactType", "relatedId", "relatedType"]


@pytest.fixture
def bc(bc_emulator):
    with httpx.Client(base_url=bc_emulator.company_url + "/",
                      headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}, timeout=10) as client:
        yield bc_emulator, client


def _persons(emu: BCEmulator, company_number: str, *names: str) -> list[dict]:
    return [emu.create("contacts", {"type": "Person", "displayName": n, "companyNumber": company_number})
            for n in names]


# -- the company contact of a new customer / vendor ----------------------------------------------------------------
def test_a_new_customer_gets_a_company_contact_linked_by_a_business_relation(bc):
    emu, client = bc
    before = emu.count("contacts")
    resp = client.post("customers", json={"displayName": "Relation Co", "addressLine1": "1 Main Street",
                                          "city": "Lyon", "country": "fr", "phoneNumber": "+33 1 00",
                                          "email": "info@relation.example"})
    assert resp.status_code == 201, resp.text
    cust = resp.json()
    assert emu.count("contacts") == before + 1
    company = emu.company_contact("customers", cust["id"])
    assert company["type"] == "Company" and company["number"].startswith("CT")
    assert (company["displayName"], company["addressLine1"], company["city"], company["country"],
            company["phoneNumber"], company["email"]) == ("Relation Co", "1 Main Street", "Lyon", "FR", "+33 1 00",
                                                          "info@relation.example")
    assert company["companyNumber"] == company["number"] and company["companyName"] == "Relation Co"
    assert company["contactBusinessRelation"] == "Customer"
    assert company["lastModifiedDateTime"] > cust["lastModifiedDateTime"]
    [person] = _persons(emu, company["number"], "Ann Lee")
    assert person["contactBusinessRelation"] == "Customer" and person["companyName"] == "Relation Co"

    vendor = client.post("vendors", json={"displayName": "Supplier Co"}).json()
    vendor_company = emu.company_contact("vendors", vendor["id"])
    assert vendor_company["type"] == "Company" and vendor_company["contactBusinessRelation"] == "Vendor"
    assert vendor_company["number"] != company["number"]
    # the relation is BC's to maintain: read-only through the API
    assert_error(client.patch(f"contacts({company['id']})", json={"contactBusinessRelation": "None"},
                              headers={"If-Match": "*"}), 400, "BadRequest_InvalidOperation")


def test_a_person_customer_gets_a_person_contact(bc):
    emu, client = bc
    cust = client.post("customers", json={"displayName": "Solo Trader", "type": "Person"}).json()
    contact = emu.company_contact("customers", cust["id"])
    assert contact["type"] == "Person" and contact["contactBusinessRelation"] == "Customer"
    rows = values(client.get(f"customers({cust['id']})/contactsInformation"))
    assert [(r["contactNumber"], r["contactType"]) for r in rows] == [(contact["number"], "Person")]


# -- customers({id})/contactsInformation -----------------------------------------------------------------------------
def test_contacts_information_lists_the_company_and_its_persons_in_bcs_shape(bc):
    emu, client = bc
    cust = emu.create("customers", {"displayName": "Shape Co"})
    company = emu.company_contact("customers", cust["id"])
    persons = _persons(emu, company["number"], "Ann Lee", "Bo Chen")
    _persons(emu, emu.company_contact("customers", emu.all("customers")[0]["id"])["number"], "Elsewhere")

    resp = client.get(f"customers({cust['id']})/contactsInformation")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["@odata.context"] == (f"{emu.base_url}/$metadata#companies({BC_COMPANY_ID})/customers({cust['id']})"
                                      "/contactsInformation")
    rows = body["value"]
    assert all(list(r) == INFO_KEYS for r in rows)  # no @odata.etag: a temporary buffer, read-only
    assert [r["contactId"] for r in rows] == sorted(r["contactId"] for r in rows)  # the buffer's key order
    assert {(r["contactId"], r["contactNumber"], r["contactName"], r["contactType"]) for r in rows} == {
        (company["id"], company["number"], "Shape Co", "Company"),
        *((p["id"], p["number"], p["displayName"], "Person") for p in persons)}
    assert {(r["relatedId"], r["relatedType"]) for r in rows} == {(cust["id"], "Customer")}

    one = client.get(f"customers({cust['id']})/contactsInformation({persons[0]['id']})")
    assert one.status_code == 200 and one.json()["contactNumber"] == persons[0]["number"]
    assert one.json()["@odata.context"].endswith(f"/customers({cust['id']})/contactsInformation/$entity")
    assert emu.contacts_information("customers", cust["id"]) == rows


def test_contacts_information_query_options_paging_and_errors(bc):
    emu, client = bc
    cust = emu.create("customers", {"displayName": "Options Co"})
    company = emu.company_contact("customers", cust["id"])
    persons = _persons(emu, company["number"], *(f"Person {i}" for i in range(7)))
    url = f"customers({cust['id']})/contactsInformation"

    only = values(client.get(url, params={"$filter": "contactType eq 'Person'", "$select": "contactNumber"}))
    assert sorted(r["contactNumber"] for r in only) == sorted(p["number"] for p in persons)
    assert all(list(r) == ["contactNumber"] for r in only)
    paged = page_all(client, url, 3, params={"$select": "contactId,contactType"})
    assert len(paged) == 8 and len({r["contactId"] for r in paged}) == 8
    assert values(client.get(url, params={"$top": "2"})) == values(client.get(url))[:2]

    assert_error(client.get(f"customers({emu.all('vendors')[0]['id']})/contactsInformation"), 404,
                 "BadRequest_ResourceNotFound")
    assert_error(client.get(f"{url}({cust['id']})"), 404, "BadRequest_ResourceNotFound")  # not a contact id
    assert_error(client.get(url, params={"$select": "email"}), 400, "BadRequest",
                 "Could not find a property named 'email' on type 'Microsoft.NAV.contactInformation'.")
    assert client.post(url, json={"contactNumber": "X"}).status_code == 405
    assert client.patch(f"{url}({persons[0]['id']})", json={"contactName": "X"},
                        headers={"If-Match": "*"}).status_code == 405
    assert_error(client.get(f"items({emu.all('items')[0]['id']})/contactsInformation"), 404, "BadRequest_NotFound")


def test_vendor_contacts_information_and_a_contact_related_to_both(bc):
    emu, client = bc
    cust = emu.create("customers", {"displayName": "Both Ways Co"})
    vendor = emu.create("vendors", {"displayName": "Both Ways Co"})
    company = emu.company_contact("customers", cust["id"])
    [person] = _persons(emu, company["number"], "Dee Moss")
    own_vendor_contact = emu.company_contact("vendors", vendor["id"])
    etag = emu.get("contacts", company["id"])["@odata.etag"]

    emu.relate(company["id"], "vendors", vendor["id"])  # BC: "Link with existing" on the contact card
    assert emu.company_contact("vendors", vendor["id"])["id"] == company["id"]
    assert emu.get("contacts", company["id"])["contactBusinessRelation"] == "Multiple"
    assert emu.get("contacts", company["id"])["@odata.etag"] != etag  # a Modify
    assert emu.get("contacts", person["id"])["contactBusinessRelation"] == "Multiple"
    assert emu.get("contacts", own_vendor_contact["id"])["contactBusinessRelation"] == "None"
    rows = values(client.get(f"vendors({vendor['id']})/contactsInformation"))
    assert {(r["contactNumber"], r["relatedId"], r["relatedType"]) for r in rows} == {
        (company["number"], vendor["id"], "Vendor"), (person["number"], vendor["id"], "Vendor")}

    # deleting the customer deletes its business relation; the contacts stay
    assert client.delete(f"customers({cust['id']})", headers={"If-Match": "*"}).status_code == 204
    assert emu.get("contacts", company["id"])["contactBusinessRelation"] == "Vendor"
    assert emu.get("contacts", person["id"])["contactBusinessRelation"] == "Vendor"
    # deleting the contact deletes its relations
    emu.delete("contacts", person["id"])
    emu.delete("contacts", company["id"])
    assert emu.company_contact("vendors", vendor["id"]) is None
    assert values(client.get(f"vendors({vendor['id']})/contactsInformation")) == []


# -- $expand=contactsInformation -------------------------------------------------------------------------------------
def test_expand_on_the_customers_list_with_select_and_paging(bc):
    emu, client = bc
    params = {"$select": "id,number", "$expand": "contactsInformation($select=contactNumber,contactType)"}
    first = client.get("customers", params=params, headers={"Prefer": "odata.maxpagesize=7"})
    assert first.status_code == 200, first.text
    assert first.json()["@odata.context"] == (f"{emu.base_url}/$metadata#companies({BC_COMPANY_ID})/customers"
                                              "(id,number,contactsInformation(contactNumber,contactType))")
    assert "%24expand=" in first.json()["@odata.nextLink"] or "$expand=" in first.json()["@odata.nextLink"]
    rows = page_all(client, "customers", 7, params=params)
    assert len(rows) == emu.count("customers") == 50
    for row in rows:
        assert list(row) == ["@odata.etag", "id", "number", "contactsInformation"]
        assert all(list(i) == ["contactNumber", "contactType"] for i in row["contactsInformation"])
        company = emu.company_contact("customers", row["id"])
        assert [i["contactNumber"] for i in row["contactsInformation"] if i["contactType"] == "Company"] == \
            [company["number"]]
    # the seed's persons hang under the first 12 customers' companies (2 each)
    by_number = {r["number"]: r for r in rows}
    first_twelve = [c["number"] for c in emu.all("customers")[:12]]
    assert [sum(i["contactType"] == "Person" for i in by_number[n]["contactsInformation"]) for n in first_twelve] \
        == [2] * 12

    full = values(client.get("customers", params={"$expand": "contactsInformation", "$top": "1"}))[0]
    assert list(full)[-2:] == ["lastModifiedDateTime", "contactsInformation"]
    assert full["contactsInformation"] == emu.contacts_information("customers", full["id"])
    assert all(list(i) == INFO_KEYS for i in full["contactsInformation"])


def test_expand_on_one_record_and_on_vendors(bc):
    emu, client = bc
    vendor = emu.all("vendors")[0]
    one = client.get(f"vendors({vendor['id']})", params={"$expand": "contactsInformation"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["@odata.context"].endswith("/vendors(contactsInformation())/$entity")
    persons = [i for i in body["contactsInformation"] if i["contactType"] == "Person"]
    assert len(persons) == 2 and {i["relatedType"] for i in body["contactsInformation"]} == {"Vendor"}  # seed
    filtered = values(client.get("vendors", params={"$filter": f"number eq '{vendor['number']}'",
                                                     "$expand": "contactsInformation"}))
    assert filtered[0]["contactsInformation"] == body["contactsInformation"]


@pytest.mark.parametrize("entity_set, expand, code, message", [
    ("customers", "contacts", "BadRequest", "Could not find a property named 'contacts' on type "
                                            "'Microsoft.NAV.customer'."),
    ("customers", "currency", "BadRequest_MethodNotImplemented",
     "$expand of 'currency' is not implemented by the BC emulator."),
    ("customers", "contactsInformation($filter=contactType eq 'Person')", "BadRequest_MethodNotImplemented",
     "The nested query option '$filter' is not implemented by the BC emulator."),
    ("customers", "contactsInformation($select=nope)", "BadRequest",
     "Could not find a property named 'nope' on type 'Microsoft.NAV.contactInformation'."),
    ("customers", "contactsInformation(", "BadRequest", "Syntax error in $expand 'contactsInformation('."),
    ("contacts", "contactsInformation", "BadRequest", "Could not find a property named 'contactsInformation' on "
                                                      "type 'Microsoft.NAV.contact'."),
    ("items", "picture", "BadRequest_MethodNotImplemented", "$expand of 'picture' is not implemented by the BC "
                                                            "emulator."),
])
def test_expand_errors(bc, entity_set, expand, code, message):
    _, client = bc
    assert_error(client.get(entity_set, params={"$expand": expand}), 400, code, message)


# -- transactions and seed -------------------------------------------------------------------------------------------
def test_a_rolled_back_batch_leaves_no_contact_and_no_relation(bc):
    emu, client = bc
    contacts = emu.count("contacts")
    requests = [
        {"method": "POST", "id": "a", "url": f"companies({BC_COMPANY_ID})/vendors",
         "headers": {"Content-Type": "application/json"}, "body": {"displayName": "Rolled Back Vendor"}},
        {"method": "POST", "id": "b", "url": f"companies({BC_COMPANY_ID})/vendors",
         "headers": {"Content-Type": "application/json"}, "body": {"displayName": "Bad", "blocked": "Nope"}},
    ]
    resp = client.post(f"{emu.base_url}/$batch", json={"requests": requests}, headers={"Isolation": "snapshot"})
    assert [r["status"] for r in resp.json()["responses"]] == [201, 400]
    created = resp.json()["responses"][0]["body"]["id"]
    assert emu.count("contacts") == contacts
    assert emu._relations.get("Vendor", created) is None
    resp = client.post(f"{emu.base_url}/$batch", json={"requests": requests[:1]}, headers={"Isolation": "snapshot"})
    vendor = resp.json()["responses"][0]["body"]
    assert emu.count("contacts") == contacts + 1
    assert emu.company_contact("vendors", vendor["id"])["displayName"] == "Rolled Back Vendor"


def test_seeded_relations_are_deterministic():
    frozen = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    a, b = BCEmulator(BC_COMPANY_ID, clock=lambda: frozen), BCEmulator(BC_COMPANY_ID, clock=lambda: frozen)
    assert a.all("contacts") == b.all("contacts")
    for entity_set in ("customers", "vendors"):
        for rec in a.all(entity_set):
            assert a.contacts_information(entity_set, rec["id"]) == b.contacts_information(entity_set, rec["id"])
    companies = [c for c in a.all("contacts") if c["type"] == "Company"]
    assert len(companies) == a.count("customers") + a.count("vendors") == 60
    persons = [c for c in a.all("contacts") if c["type"] == "Person"]
    assert sum(p["contactBusinessRelation"] == "Customer" for p in persons) == 24
    assert sum(p["contactBusinessRelation"] == "Vendor" for p in persons) == 3
    assert sum(p["companyNumber"] == "" for p in persons) == 3
