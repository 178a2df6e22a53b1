"""Field transfer (spec section 2): lookups, LCY, option values, constants, transformations, create values,
only-modified semantics, normalisation, truncation, read-only columns, and echo idempotence for every default
mapping in every direction it allows."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from sync.mapping_defaults import default_mappings
from sync.mappings import Direction, FieldMapping, Lookup, OptionValueMap, Transformation, dataverse_table
from sync.transfer import (OPTION_LABEL, OPTION_VALUE, ZERO_GUID, LookupResolution, is_blank, lookup_key,
                           lookup_needs, transfer)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

LCY = "USD"
DV_USD = "9c8b6e6a-1f2d-4a3b-8c7d-000000000001"   # transactioncurrency with isocurrencycode USD (the LCY)
DV_EUR = "9c8b6e6a-1f2d-4a3b-8c7d-000000000002"
DV_CAD = "9c8b6e6a-1f2d-4a3b-8c7d-000000000003"
DV_USER_JR = "1e0a4c8e-92b5-ed11-94cc-000d3a2feca1"
BC_PT_10D = "01a5738a-44e3-ea11-bb43-000d3a2feca1"   # paymentTerm 10 DAYS
BC_PT_30D = "04a5738a-44e3-ea11-bb43-000d3a2feca1"   # paymentTerm 30 DAYS
BC_SM_PICKUP = "2aa5738a-44e3-ea11-bb43-000d3a2feca1"
BC_UOM_PCS = "5ca6738a-44e3-ea11-bb43-000d3a2feca1"
BC_UOM_BOX = "53a6738a-44e3-ea11-bb43-000d3a2feca1"
DV_UOM_PCS = "7b1f0e52-3c4d-4e5f-8a9b-0000000000a1"
DV_UOM_BOX = "7b1f0e52-3c4d-4e5f-8a9b-0000000000a2"
COMPANY = "CUSTOMER|VENDOR"                           # CONTACT's company-contact lookup
DV_ADATUM = "5a0d3c2e-44e3-ea11-bb43-000d3a2feca1"   # account coupled to the customer of company contact CT000100
DV_FABRIKAM = "5a0d3c2e-44e3-ea11-bb43-000d3a2feca2"  # account coupled to the vendor of company contact CT000200

RESOLVED_TO = LookupResolution({
    ("CURRENCY", "EUR"): DV_EUR, ("CURRENCY", "CAD"): DV_CAD,
    ("SALESPEOPLE", "JR"): DV_USER_JR,
    ("PAYMENT TERMS", BC_PT_10D): 1, ("PAYMENT TERMS", BC_PT_30D): 3,
    ("SHIPMENT METHOD", BC_SM_PICKUP): 2,
    ("UNIT OF MEASURE", BC_UOM_PCS): DV_UOM_PCS, ("UNIT OF MEASURE", BC_UOM_BOX): DV_UOM_BOX,
    (COMPANY, "CT000100"): DV_ADATUM, (COMPANY, "CT000200"): DV_FABRIKAM,
}, lcy_code=LCY, lcy_dataverse_currency_id=DV_USD)

RESOLVED_FROM = LookupResolution({
    ("CURRENCY", DV_EUR): "EUR", ("CURRENCY", DV_CAD): "CAD",
    ("PAYMENT TERMS", 1): BC_PT_10D, ("PAYMENT TERMS", 3): BC_PT_30D,
    ("SHIPMENT METHOD", 2): BC_SM_PICKUP,
    ("UNIT OF MEASURE", DV_UOM_PCS): BC_UOM_PCS, ("UNIT OF MEASURE", DV_UOM_BOX): BC_UOM_BOX,
    (COMPANY, DV_ADATUM): "CT000100", (COMPANY, DV_FABRIKAM): "CT000200",
}, lcy_code=LCY, lcy_dataverse_currency_id=DV_USD)


def m(name):
    return default_mappings()[name]


def with_fields(mapping, *fields, **kw):
    return replace(mapping, field_mappings=tuple(fields), **kw)


def field_mapping(mapping, bc=None, dv=None):
    fm = mapping.field_mapping(bc, dv)
    assert fm is not None
    return fm


# --- what Dataverse and BC do with a body (the services' writes, simulated) --------------------------------------
_BIND = re.compile(r"/(\w+)\(([0-9a-fA-F-]{36})\)")


def apply_dataverse(mapping, row, changes):
    """The row as Dataverse returns it after POST/PATCH ``changes``: binds read back as ``_x_value`` (a Customer
    column's ``x_account`` / ``x_contact`` as ``_x_value``), computed fullname for contacts."""
    out = dict(row)
    columns = dataverse_table(mapping.dataverse_table).columns
    for key, value in changes.items():
        if key.endswith("@odata.bind"):
            nav = key[:-len("@odata.bind")]
            base, _, target = nav.rpartition("_")
            if nav not in columns and base in columns and target in columns[base].targets:
                nav = base
            out[f"_{nav}_value"] = None if value is None else _BIND.fullmatch(value).group(2).lower()
        else:
            out[key] = value
    if mapping.dataverse_table == "contact":
        out["fullname"] = " ".join(p for p in (out.get("firstname"), out.get("middlename"), out.get("lastname")) if p)
    return out


def apply_bc(mapping, record, changes, lcy=LCY):
    """The record as BC returns it after POST/PATCH ``changes``: LCY customers/vendors return the LCY code."""
    out = dict(record)
    out.update(changes)
    if "currencyCode" in changes and not changes["currencyCode"]:
        out["currencyCode"] = lcy
    return out


# --- realistic records per default mapping ------------------------------------------------------------------------
def bc_customer(**kw):
    rec = {
        "@odata.etag": 'W/"JzE5OzY3MjczMjkxODU0MzQ2NTQ2MTcxOzAwOyc="', "id": "34f03eee-2a32-f011-9a4a-7ced8d0ee6e7",
        "number": "NA0007", "displayName": "Adatum Corporation", "type": "Company",
        "addressLine1": "192 Market Square", "addressLine2": "", "city": "Atlanta", "state": "GA", "country": "US",
        "postalCode": "31772", "phoneNumber": "+1 425 555 0100", "email": "robert.townes@contoso.com", "website": "",
        "salespersonCode": "JR", "balanceDue": 0, "creditLimit": 2000, "currencyId": ZERO_GUID,
        "currencyCode": "USD", "paymentTermsId": BC_PT_30D, "shipmentMethodId": ZERO_GUID, "blocked": "_x0020_",
        "lastModifiedDateTime": "2025-05-16T07:55:28.833Z"}
    rec.update(kw)
    return rec


def dv_account(**kw):
    row = {
        "@odata.etag": 'W/"502186"', "accountid": "b2a6b689-9a39-e611-80d2-00155db44581",
        "modifiedon": "2025-05-16T08:00:00Z", "name": "Adatum Corporation", "address1_line1": "192 Market Square",
        "address1_line2": None, "address1_postalcode": "31772", "address1_city": "Atlanta",
        "address1_country": "US", "address1_stateorprovince": "GA", "_transactioncurrencyid_value": DV_USD,
        "emailaddress1": "robert.townes@contoso.com", "websiteurl": None, "telephone1": "+1 425 555 0100",
        "paymenttermscode": 3, "address1_freighttermscode": None, "_ownerid_value": DV_USER_JR,
        "creditlimit": 2000.0, "customertypecode": 3, "statecode": 0}
    row.update(kw)
    return row


def bc_vendor(**kw):
    rec = bc_customer(**kw)
    for k in ("salespersonCode", "creditLimit", "shipmentMethodId", "balanceDue", "type"):
        rec.pop(k, None)
    rec.update({"number": "V10000", "displayName": "Fabrikam, Inc.", "currencyCode": "EUR", **kw})
    return rec


def dv_vendor_account(**kw):
    row = dv_account(name="Fabrikam, Inc.", _transactioncurrencyid_value=DV_EUR, customertypecode=11)
    for k in ("_ownerid_value", "creditlimit", "address1_freighttermscode"):
        row.pop(k)
    row.update(kw)
    return row


def bc_contact(**kw):
    rec = {"id": "5d115c9c-44e3-ea11-bb43-000d3a2feca1", "number": "CT000123", "type": "Person",
           "displayName": "Jane van Dyke", "companyNumber": "CT000100", "companyName": "Adatum Corporation",
           "addressLine1": "7122 South Ashford Street", "addressLine2": "Westminster", "city": "Atlanta",
           "state": "GA", "country": "US", "postalCode": "31772", "phoneNumber": "+1 425 555 0100",
           "mobilePhoneNumber": "", "email": "jane@adatum.com", "website": "",
           "lastModifiedDateTime": "2025-05-16T07:55:28.833Z"}
    rec.update(kw)
    return rec


def dv_contact(**kw):
    row = {"contactid": "49b0be2e-d01c-ed11-b83e-000d3a572421", "modifiedon": "2025-05-16T08:00:00Z",
           "firstname": "Jane", "middlename": "van", "lastname": "Dyke", "fullname": "Jane van Dyke",
           "address1_line1": "7122 South Ashford Street", "address1_line2": "Westminster",
           "address1_postalcode": "31772", "address1_city": "Atlanta", "address1_country": "US",
           "address1_stateorprovince": "GA", "emailaddress1": "jane@adatum.com", "websiteurl": None,
           "mobilephone": None, "telephone1": "+1 425 555 0100", "_parentcustomerid_value": DV_ADATUM,
           "statecode": 0}
    row.update(kw)
    return row


def bc_currency(**kw):
    rec = {"id": "0ca5738a-44e3-ea11-bb43-000d3a2feca1", "code": "CAD", "displayName": "Canadian dollar",
           "symbol": "$", "amountDecimalPlaces": "2:2", "amountRoundingPrecision": 0.01,
           "lastModifiedDateTime": "2020-08-21T00:24:12.793Z"}
    rec.update(kw)
    return rec


def dv_currency(**kw):
    row = {"transactioncurrencyid": DV_CAD, "modifiedon": "2020-08-21T00:30:00Z", "isocurrencycode": "CAD",
           "currencysymbol": "$", "currencyname": "Canadian dollar"}
    row.update(kw)
    return row


def dv_systemuser(**kw):
    row = {"systemuserid": DV_USER_JR, "modifiedon": "2025-04-28T15:42:26Z",
           "internalemailaddress": "jennifer.smith@contoso.com", "fullname": "Jennifer Smith",
           "mobilephone": "+1 425-555-0187", "isdisabled": False, "islicensed": True, "isintegrationuser": False}
    row.update(kw)
    return row


def bc_salesperson(**kw):
    rec = {"id": "f57a8943-92b5-ed11-94cc-000d3a2feca1", "code": "JS", "displayName": "Jennifer Smith",
           "email": "jennifer.smith@contoso.com", "email2": "js@contoso.onmicrosoft.com",
           "phoneNo": "+1 425-555-0187", "jobTitle": "Senior Sales Representative", "commisionPercent": 7.5,
           "privacyBlocked": False, "blocked": False, "lastModifiedDateTime": "2025-04-28T15:42:26Z"}
    rec.update(kw)
    return rec


def bc_payment_term(**kw):
    rec = {"id": BC_PT_10D, "code": "10 DAYS", "displayName": "Net 10 days", "dueDateCalculation": "10D",
           "discountDateCalculation": "", "discountPercent": 0, "calculateDiscountOnCreditMemos": False,
           "lastModifiedDateTime": "2020-08-21T00:24:12.633Z"}
    rec.update(kw)
    return rec


def bc_shipment_method(**kw):
    rec = {"id": BC_SM_PICKUP, "code": "PICKUP", "displayName": "Pickup at Location",
           "lastModifiedDateTime": "2020-08-21T00:24:12.700Z"}
    rec.update(kw)
    return rec


def bc_uom(**kw):
    rec = {"id": BC_UOM_BOX, "code": "BOX", "displayName": "Box", "internationalStandardCode": "BX", "symbol": "",
           "lastModifiedDateTime": "2020-08-20T22:24:22.193Z"}
    rec.update(kw)
    return rec


def dv_uomschedule(**kw):
    row = {"uomscheduleid": DV_UOM_BOX, "modifiedon": "2020-08-21T00:00:00Z", "name": "BOX", "baseuomname": "BOX",
           "statecode": 0}
    row.update(kw)
    return row


def bc_item(**kw):
    rec = {"id": "fca5738a-44e3-ea11-bb43-000d3a2feca1", "number": "1896-S", "displayName": "ATHENS Desk",
           "type": "Inventory", "blocked": False, "inventory": 4, "unitPrice": 1000.8, "unitCost": 780.7,
           "baseUnitOfMeasureId": BC_UOM_PCS, "baseUnitOfMeasureCode": "PCS",
           "lastModifiedDateTime": "2020-08-21T00:24:19.347Z"}
    rec.update(kw)
    return rec


def dv_product(**kw):
    row = {"productid": "4d2b9d1c-8e0f-4a67-9b3d-5e6f7a8b9c0d", "modifiedon": "2020-08-21T00:30:00Z",
           "productnumber": "1896-S", "name": "ATHENS Desk", "price": 1000.8, "standardcost": 780.7,
           "currentcost": 780.7, "quantityonhand": 4, "_defaultuomscheduleid_value": DV_UOM_PCS, "statecode": 0,
           "producttypecode": 1}
    row.update(kw)
    return row


def option(value, label):
    return {OPTION_VALUE: value, OPTION_LABEL: label}


# (mapping, direction, source, destination to modify (with differences), kind of destination)
# Each source differs from its destination in several fields, so the first transfer has changes to write.
ECHO_CASES = [
    ("CUSTOMER", TO, bc_customer(displayName="Adatum Corp.", currencyCode="EUR", salespersonCode="JR",
                                 paymentTermsId=BC_PT_10D, shipmentMethodId=BC_SM_PICKUP, creditLimit=2500.5),
     dv_account(name="Adatum", _ownerid_value=None, address1_city="atlanta ")),
    ("CUSTOMER", FROM, dv_account(name="Adatum Corp. (Dataverse)", _transactioncurrencyid_value=DV_EUR,
                                  paymenttermscode=1, address1_freighttermscode=2, address1_postalcode="ab1 2cd",
                                  address1_country="gb"),
     bc_customer()),
    ("CUSTOMER", FROM, dv_account(_transactioncurrencyid_value=DV_USD), bc_customer(currencyCode="EUR")),
    ("VENDOR", TO, bc_vendor(displayName="Fabrikam Ltd", currencyCode="USD", paymentTermsId=ZERO_GUID),
     dv_vendor_account()),
    ("VENDOR", FROM, dv_vendor_account(name="Fabrikam Ltd", telephone1=None, _transactioncurrencyid_value=None),
     bc_vendor()),
    ("CONTACT", TO, bc_contact(displayName="Dr. Jane Maria van Dyke-Smith", mobilePhoneNumber="+1 555 0101",
                               companyNumber="ct000200"),
     dv_contact()),
    ("CONTACT", FROM, dv_contact(fullname="Jane Dyke", address1_city="Paris", mobilephone="+33 1 23 45 67 89",
                                 _parentcustomerid_value=DV_FABRIKAM.upper()),
     bc_contact(type="Company")),
    ("CURRENCY", TO, bc_currency(displayName="Canadian Dollar", symbol=""), dv_currency()),
    ("SALESPEOPLE", FROM, dv_systemuser(fullname="Jennifer Smith-Johnson " + "x" * 60,
                                        internalemailaddress="jennifer.smithjohnson@contoso.com"),
     bc_salesperson()),
    ("PAYMENT TERMS", TO, bc_payment_term(code="10 DAYS"), option(100000000, "10 DAYS OLD")),
    ("SHIPMENT METHOD", TO, bc_shipment_method(), option(100000001, "pickup")),
    ("UNIT OF MEASURE", TO, bc_uom(code="BOX"), dv_uomschedule(name="NAV BOX")),
    ("ITEM-PRODUCT", TO, bc_item(unitPrice=1099.99, unitCost=800, inventory=-2, baseUnitOfMeasureId=BC_UOM_BOX,
                                 displayName="ATHENS Desk, oak"),
     dv_product()),
    ("ITEM-PRODUCT", FROM, dv_product(name="ATHENS Desk (oak)", statecode=1, _defaultuomscheduleid_value=DV_UOM_BOX),
     bc_item()),
]


def _resolved(direction):
    return RESOLVED_TO if direction is TO else RESOLVED_FROM


def _apply(mapping, direction, dest, changes):
    return apply_dataverse(mapping, dest, changes) if direction is TO else apply_bc(mapping, dest, changes)


def _case_id(case):
    return f"{case[0]}-{'To' if case[1] is TO else 'From'}"


def test_every_default_mapping_and_direction_has_an_echo_case():
    covered = {(name, d) for name, d, *_ in ECHO_CASES}
    for name, mapping in default_mappings().items():
        for d in mapping.direction.passes:
            assert (name, d) in covered, f"no echo case for {name} {d.value}"


@pytest.mark.parametrize("case", ECHO_CASES, ids=_case_id)
def test_echo_after_modify_has_no_changes(case):
    name, direction, source, destination = case
    mapping = m(name)
    first = transfer(mapping, direction, source, destination, _resolved(direction), inserting=False)
    assert first.ok, first.errors
    assert first.changes, "the case must start with differences"
    json.dumps(first.changes)
    written = _apply(mapping, direction, destination, first.changes)
    again = transfer(mapping, direction, source, written, _resolved(direction), inserting=False)
    assert again.ok and again.changes == {} and again.changed_fields == [] and not again.bidirectional_changed


@pytest.mark.parametrize("case", ECHO_CASES, ids=_case_id)
def test_echo_after_insert_has_no_changes(case):
    name, direction, source, _ = case
    mapping = m(name)
    created = transfer(mapping, direction, source, None, _resolved(direction), inserting=True)
    assert created.ok, created.errors
    assert created.changes
    json.dumps(created.changes)
    written = _apply(mapping, direction, {}, created.changes)
    again = transfer(mapping, direction, source, written, _resolved(direction), inserting=False)
    assert again.changes == {}, again.changes


# --- lookup_needs ---------------------------------------------------------------------------------------------------
def test_lookup_needs_to_collects_bc_codes_and_ids_without_blanks_or_lcy():
    records = [
        bc_customer(currencyCode="EUR", salespersonCode="JR", paymentTermsId=BC_PT_10D.upper(),
                    shipmentMethodId=BC_SM_PICKUP),
        bc_customer(currencyCode="USD", salespersonCode="", paymentTermsId=ZERO_GUID, shipmentMethodId=ZERO_GUID),
        bc_customer(currencyCode="", salespersonCode="AH", paymentTermsId=BC_PT_30D),
        {"id": "x"},  # nothing selected: needs nothing
    ]
    needs = lookup_needs(m("CUSTOMER"), records, TO, lcy_code="USD")
    assert needs == {"CURRENCY": {"EUR"}, "SALESPEOPLE": {"JR", "AH"}, "PAYMENT TERMS": {BC_PT_10D, BC_PT_30D},
                     "SHIPMENT METHOD": {BC_SM_PICKUP}}


def test_lookup_needs_from_collects_dataverse_ids_and_option_values():
    rows = [dv_account(_transactioncurrencyid_value=DV_EUR.upper(), paymenttermscode=1,
                       address1_freighttermscode=2),
            dv_account(_transactioncurrencyid_value=DV_USD, paymenttermscode=None),
            dv_account(_transactioncurrencyid_value=None, paymenttermscode=3)]
    needs = lookup_needs(m("CUSTOMER"), rows, FROM, lcy_dataverse_currency_id=DV_USD)
    assert needs == {"CURRENCY": {DV_EUR}, "PAYMENT TERMS": {1, 3}, "SHIPMENT METHOD": {2}}
    # without the LCY currency id, the LCY row must be resolved like any other
    assert lookup_needs(m("CUSTOMER"), rows, FROM)["CURRENCY"] == {DV_EUR, DV_USD}
    # To-only lookups (salesperson -> ownerid) are not needed From
    assert "SALESPEOPLE" not in needs


def test_lookup_needs_item_uom_and_no_lookups():
    assert lookup_needs(m("ITEM-PRODUCT"), [bc_item()], TO) == {"UNIT OF MEASURE": {BC_UOM_PCS}}
    assert lookup_needs(m("ITEM-PRODUCT"), [dv_product()], FROM) == {"UNIT OF MEASURE": {DV_UOM_PCS}}
    assert lookup_needs(m("CONTACT"), [bc_contact(), bc_contact(companyNumber="")], TO) == {COMPANY: {"CT000100"}}
    assert lookup_needs(m("CONTACT"), [dv_contact(), dv_contact(_parentcustomerid_value=None)], FROM) == \
        {COMPANY: {DV_ADATUM}}
    assert lookup_needs(m("SALESPEOPLE"), [{"fullname": "x"}], FROM) == {}


def test_lookup_needs_to_requires_the_lcy_code_for_currency_lookups():
    with pytest.raises(ValueError, match="lcy_code"):
        lookup_needs(m("CUSTOMER"), [bc_customer()], TO)


def test_lookup_key_normalises_guids_and_codes():
    assert lookup_key("{" + BC_PT_10D.upper() + "}") == BC_PT_10D
    assert lookup_key(" eur ") == "EUR"
    assert lookup_key(3) == 3
    assert RESOLVED_TO.find("CURRENCY", "eur") == (True, DV_EUR)
    assert RESOLVED_TO.find("CURRENCY", "GBP") == (False, None)


@pytest.mark.parametrize("value,blank", [(None, True), ("", True), ("   ", True), (ZERO_GUID, True),
                                         ("{" + ZERO_GUID + "}", True), ("_x0020_", True), (0, False),
                                         ("A", False), (BC_PT_10D, False), (False, False)])
def test_is_blank(value, blank):
    assert is_blank(value) is blank


# --- lookups --------------------------------------------------------------------------------------------------------
def test_record_lookup_to_writes_odata_bind_and_option_lookup_writes_the_option_value():
    r = transfer(m("CUSTOMER"), TO, bc_customer(currencyCode="EUR", paymentTermsId=BC_PT_10D),
                 dv_account(), RESOLVED_TO, inserting=False)
    assert r.changes == {"transactioncurrencyid@odata.bind": f"/transactioncurrencies({DV_EUR})",
                         "paymenttermscode": 1}
    assert r.changed_fields == ["transactioncurrencyid", "paymenttermscode"]


def test_lookup_compares_the_bound_id_case_insensitively():
    r = transfer(m("CUSTOMER"), TO, bc_customer(currencyCode="EUR"),
                 dv_account(_transactioncurrencyid_value=DV_EUR.upper()), RESOLVED_TO, inserting=False)
    assert "transactioncurrencyid@odata.bind" not in r.changes


def test_record_and_option_lookups_from_write_the_bc_code_and_id():
    r = transfer(m("CUSTOMER"), FROM, dv_account(_transactioncurrencyid_value=DV_CAD, paymenttermscode=1),
                 bc_customer(), RESOLVED_FROM, inserting=False)
    assert r.changes == {"currencyCode": "CAD", "paymentTermsId": BC_PT_10D}


def test_not_coupled_lookup_fails_the_record_with_bcs_message_to():
    r = transfer(m("CUSTOMER"), TO, bc_customer(salespersonCode="AH"), dv_account(), RESOLVED_TO, inserting=False)
    assert r.errors == ["salespersonCode AH must be coupled to a Dataverse row."]
    assert not r.ok and r.message == r.errors[0]


def test_not_coupled_lookup_fails_the_record_with_bcs_message_from():
    unknown = "0f0f0f0f-0000-4000-8000-00000000abcd"
    r = transfer(m("CUSTOMER"), FROM, dv_account(_transactioncurrencyid_value=unknown, paymenttermscode=4),
                 bc_customer(), RESOLVED_FROM, inserting=False)
    assert r.errors == [f"transactioncurrencyid {unknown} must be coupled to a Business Central record.",
                        "paymenttermscode 4 must be coupled to a Business Central record."]


def test_not_coupled_lookup_fails_an_insert_too():
    r = transfer(m("CUSTOMER"), TO, bc_customer(currencyCode="GBP"), None, RESOLVED_TO, inserting=True)
    assert r.errors == ["currencyCode GBP must be coupled to a Dataverse row."]


def test_clear_value_on_failed_sync_writes_null_or_blank_instead_of_failing():
    base = m("CUSTOMER")
    cur = replace(field_mapping(base, "currencyCode"), clear_value_on_failed_sync=True)
    pt = replace(field_mapping(base, "paymentTermsId"), clear_value_on_failed_sync=True)
    mapping = with_fields(base, cur, pt)
    to = transfer(mapping, TO, bc_customer(currencyCode="GBP", paymentTermsId=BC_SM_PICKUP),
                  dv_account(_transactioncurrencyid_value=DV_EUR, paymenttermscode=3), RESOLVED_TO, inserting=False)
    assert to.ok and to.changes == {"transactioncurrencyid@odata.bind": None, "paymenttermscode": None}
    frm = transfer(mapping, FROM, dv_account(_transactioncurrencyid_value="0f0f0f0f-0000-4000-8000-00000000abcd",
                                             paymenttermscode=4),
                   bc_customer(currencyCode="EUR"), RESOLVED_FROM, inserting=False)
    assert frm.ok and frm.changes == {"currencyCode": "", "paymentTermsId": ZERO_GUID}
    # already blank: nothing to clear
    again = transfer(mapping, TO, bc_customer(currencyCode="GBP", paymentTermsId=BC_SM_PICKUP),
                     dv_account(_transactioncurrencyid_value=None, paymenttermscode=None), RESOLVED_TO,
                     inserting=False)
    assert again.changes == {}


def test_not_null_lookup_with_a_null_value_is_not_written_at_all():
    # blank salesperson: ownerid keeps its value (no "ownerid@odata.bind": null), on modify and on insert
    r = transfer(m("CUSTOMER"), TO, bc_customer(salespersonCode=""), dv_account(_ownerid_value=DV_USER_JR),
                 RESOLVED_TO, inserting=False)
    assert r.ok and "ownerid@odata.bind" not in r.changes and "ownerid" not in r.changed_fields
    ins = transfer(m("CUSTOMER"), TO, bc_customer(salespersonCode=""), None, RESOLVED_TO, inserting=True)
    assert "ownerid@odata.bind" not in ins.changes
    # coupled: written
    r = transfer(m("CUSTOMER"), TO, bc_customer(salespersonCode="JR"), dv_account(_ownerid_value=None),
                 RESOLVED_TO, inserting=False)
    assert r.changes == {"ownerid@odata.bind": f"/systemusers({DV_USER_JR})"}


def test_not_null_with_clear_value_not_coupled_writes_nothing():
    base = m("CUSTOMER")
    owner = replace(field_mapping(base, "salespersonCode"), clear_value_on_failed_sync=True)
    r = transfer(with_fields(base, owner), TO, bc_customer(salespersonCode="AH"), dv_account(), RESOLVED_TO,
                 inserting=False)
    assert r.ok and r.changes == {}


# --- LCY ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["USD", "usd", "", " "])
def test_lcy_to_maps_blank_or_lcy_code_to_the_lcy_dataverse_currency(code):
    r = transfer(m("CUSTOMER"), TO, bc_customer(currencyCode=code), dv_account(_transactioncurrencyid_value=DV_EUR),
                 RESOLVED_TO, inserting=False)
    assert r.changes == {"transactioncurrencyid@odata.bind": f"/transactioncurrencies({DV_USD})"}
    same = transfer(m("CUSTOMER"), TO, bc_customer(currencyCode=code), dv_account(), RESOLVED_TO, inserting=False)
    assert same.changes == {}


def test_lcy_to_without_the_lcy_currency_in_dataverse_fails():
    resolved = replace(RESOLVED_TO, lcy_dataverse_currency_id=None)
    r = transfer(m("CUSTOMER"), TO, bc_customer(currencyCode="USD"), dv_account(), resolved, inserting=False)
    assert r.errors == ["Currency USD could not be found in Dataverse."]


def test_lcy_requires_the_lcy_code_both_ways():
    with pytest.raises(ValueError, match="lcy_code"):
        transfer(m("CUSTOMER"), TO, bc_customer(), dv_account(), LookupResolution(), inserting=False)
    with pytest.raises(ValueError, match="lcy_code"):
        transfer(m("CUSTOMER"), FROM, dv_account(), bc_customer(), LookupResolution(), inserting=False)
    # mappings without a currency lookup need no LCY information
    assert transfer(m("ITEM-PRODUCT"), FROM, dv_product(), bc_item(), RESOLVED_FROM, inserting=False).ok


def test_lcy_from_maps_the_lcy_currency_to_a_blank_code():
    # BC returns the LCY code for LCY customers: blank and "USD" are the same
    same = transfer(m("CUSTOMER"), FROM, dv_account(_transactioncurrencyid_value=DV_USD),
                    bc_customer(currencyCode="USD"), RESOLVED_FROM, inserting=False)
    assert same.changes == {}
    null_currency = transfer(m("CUSTOMER"), FROM, dv_account(_transactioncurrencyid_value=None),
                             bc_customer(currencyCode="USD"), RESOLVED_FROM, inserting=False)
    assert null_currency.changes == {}
    r = transfer(m("CUSTOMER"), FROM, dv_account(_transactioncurrencyid_value=DV_USD),
                 bc_customer(currencyCode="EUR"), RESOLVED_FROM, inserting=False)
    assert r.changes == {"currencyCode": ""}
    back = transfer(m("CUSTOMER"), FROM, dv_account(_transactioncurrencyid_value=DV_EUR),
                    bc_customer(currencyCode="USD"), RESOLVED_FROM, inserting=False)
    assert back.changes == {"currencyCode": "EUR"}


# --- option values, constants, transformations ----------------------------------------------------------------------
@pytest.mark.parametrize("state,blocked", [(0, False), (1, True), (2, True), (3, True)])
def test_option_values_from(state, blocked):
    r = transfer(m("ITEM-PRODUCT"), FROM, dv_product(statecode=state), bc_item(blocked=not blocked),
                 RESOLVED_FROM, inserting=False)
    assert r.changes == {"blocked": blocked}
    assert transfer(m("ITEM-PRODUCT"), FROM, dv_product(statecode=state), bc_item(blocked=blocked), RESOLVED_FROM,
                    inserting=False).changes == {}


def test_option_value_without_a_pair_fails_the_record():
    r = transfer(m("ITEM-PRODUCT"), FROM, dv_product(statecode=7), bc_item(), RESOLVED_FROM, inserting=False)
    assert len(r.errors) == 1 and "statecode" in r.errors[0] and "7" in r.errors[0]


def test_option_values_to_and_bc_enum_blank_normalisation():
    base = m("CUSTOMER")
    blocked = FieldMapping("blocked", "statecode", Direction.BIDIRECTIONAL,
                           option_values=OptionValueMap((("_x0020_", 0), ("All", 1))))
    mapping = with_fields(base, blocked)
    assert transfer(mapping, TO, bc_customer(blocked="All"), dv_account(statecode=0), None,
                    inserting=False).changes == {"statecode": 1}
    assert transfer(mapping, TO, bc_customer(blocked=" "), dv_account(statecode=0), None,
                    inserting=False).changes == {}
    # the blank member as " ", "" or "_x0020_" is the same value
    for bc_blank in ("_x0020_", " ", ""):
        assert transfer(mapping, FROM, dv_account(statecode=0), bc_customer(blocked=bc_blank), None,
                        inserting=False).changes == {}
    assert transfer(mapping, FROM, dv_account(statecode=1), bc_customer(blocked="_x0020_"), None,
                    inserting=False).changes == {"blocked": "All"}


def test_constant_from_is_written_on_insert_and_when_different():
    ins = transfer(m("CONTACT"), FROM, dv_contact(), None, RESOLVED_FROM, inserting=True)
    assert ins.changes["type"] == "Person"
    mod = transfer(m("CONTACT"), FROM, dv_contact(), bc_contact(type="Company"), RESOLVED_FROM, inserting=False)
    assert mod.changes == {"type": "Person"}
    assert transfer(m("CONTACT"), FROM, dv_contact(), bc_contact(), RESOLVED_FROM, inserting=False).changes == {}


def test_constant_to_dataverse():
    base = m("CUSTOMER")
    const = FieldMapping(None, "address1_addresstypecode", TO, constant=3)
    mapping = with_fields(base, field_mapping(base, "displayName"), const)
    assert transfer(mapping, TO, bc_customer(), dv_account(), None, inserting=False).changes == \
        {"address1_addresstypecode": 3}
    assert transfer(mapping, TO, bc_customer(), dv_account(address1_addresstypecode=3), None,
                    inserting=False).changes == {}


@pytest.mark.parametrize("name,first,middle,last", [
    ("Jane van Dyke", "Jane", "van", "Dyke"),
    ("Jane Dyke", "Jane", None, "Dyke"),
    ("Madonna", "Madonna", None, None),
    ("Dr.  Jane Maria van Dyke", "Dr. Jane Maria", "van", "Dyke"),
])
def test_contact_name_is_split_like_bc(name, first, middle, last):
    r = transfer(m("CONTACT"), TO, bc_contact(displayName=name), None, RESOLVED_TO, inserting=True)
    assert r.changes.get("firstname") == first
    assert r.changes.get("middlename") == middle
    assert r.changes.get("lastname") == last
    assert "fullname" not in r.changes  # read-only in Dataverse


def test_contact_name_change_writes_only_the_parts_that_differ():
    r = transfer(m("CONTACT"), TO, bc_contact(displayName="Jane van Dijk"), dv_contact(), RESOLVED_TO,
                 inserting=False)
    assert r.changes == {"lastname": "Dijk"}
    assert not r.bidirectional_changed  # name parts are To-only field mappings
    dropped = transfer(m("CONTACT"), TO, bc_contact(displayName="Jane Dyke"), dv_contact(), RESOLVED_TO,
                       inserting=False)
    assert dropped.changes == {"middlename": None}


# --- the contact's company link (company-contact lookup) ------------------------------------------------------------
def test_company_link_to_binds_the_account_of_the_companys_customer_or_vendor():
    ins = transfer(m("CONTACT"), TO, bc_contact(), None, RESOLVED_TO, inserting=True)
    assert ins.changes["parentcustomerid_account@odata.bind"] == f"/accounts({DV_ADATUM})"
    assert "parentcustomerid" in ins.changed_fields
    assert transfer(m("CONTACT"), TO, bc_contact(), dv_contact(), RESOLVED_TO, inserting=False).changes == {}
    moved = transfer(m("CONTACT"), TO, bc_contact(companyNumber="CT000200"), dv_contact(), RESOLVED_TO,
                     inserting=False)
    assert moved.changes == {"parentcustomerid_account@odata.bind": f"/accounts({DV_FABRIKAM})"}
    assert moved.bidirectional_fields == [("companyNumber", "parentcustomerid")]
    orphan = transfer(m("CONTACT"), TO, bc_contact(), dv_contact(_parentcustomerid_value=None), RESOLVED_TO,
                      inserting=False)  # BC also fills an empty parent
    assert orphan.changes == {"parentcustomerid_account@odata.bind": f"/accounts({DV_ADATUM})"}


@pytest.mark.parametrize("company", ["CT000999", "", " "])
def test_company_link_to_fails_with_bcs_message_without_a_related_coupled_customer_or_vendor(company):
    for dest, inserting in ((None, True), (dv_contact(), False)):
        r = transfer(m("CONTACT"), TO, bc_contact(companyNumber=company), dest, RESOLVED_TO, inserting=inserting)
        assert r.errors == ["The contact CT000123 must have a contact company that has a business relation to a "
                            "customer or vendor."]
        assert not r.ok


def test_company_link_from_sets_the_company_contact_number():
    mod = transfer(m("CONTACT"), FROM, dv_contact(_parentcustomerid_value=DV_FABRIKAM), bc_contact(), RESOLVED_FROM,
                   inserting=False)
    assert mod.changes == {"companyNumber": "CT000200"}
    assert transfer(m("CONTACT"), FROM, dv_contact(_parentcustomerid_value=DV_ADATUM.upper()), bc_contact(),
                    RESOLVED_FROM, inserting=False).changes == {}
    ins = transfer(m("CONTACT"), FROM, dv_contact(), None, RESOLVED_FROM, inserting=True)
    assert ins.changes["companyNumber"] == "CT000100" and ins.changes["type"] == "Person"


@pytest.mark.parametrize("parent", [None, "9d9d9d9d-0000-0000-0000-000000000001", ZERO_GUID])
def test_company_link_from_fails_with_bcs_message_without_a_coupled_company(parent):
    r = transfer(m("CONTACT"), FROM, dv_contact(_parentcustomerid_value=parent), bc_contact(), RESOLVED_FROM,
                 inserting=False)
    assert r.errors == ["The contact cannot be synchronized because the company does not exist."]


def test_company_link_clear_value_on_failed_sync():
    contact = m("CONTACT")
    link = field_mapping(contact, "companyNumber")
    mapping = with_fields(contact, replace(link, clear_value_on_failed_sync=True), field_mapping(contact, "email"))
    r = transfer(mapping, TO, bc_contact(companyNumber="CT000999"), dv_contact(), RESOLVED_TO, inserting=False)
    assert r.ok and r.changes == {"parentcustomerid_account@odata.bind": None}
    r = transfer(mapping, FROM, dv_contact(_parentcustomerid_value=None), bc_contact(), RESOLVED_FROM,
                 inserting=False)
    assert r.ok and r.changes == {"companyNumber": ""}


# --- create values --------------------------------------------------------------------------------------------------
def test_create_values_on_insert_only():
    ins = transfer(m("CUSTOMER"), TO, bc_customer(), None, RESOLVED_TO, inserting=True)
    assert ins.changes["customertypecode"] == 3
    assert "customertypecode" in ins.changed_fields
    mod = transfer(m("CUSTOMER"), TO, bc_customer(), dv_account(customertypecode=1), RESOLVED_TO, inserting=False)
    assert "customertypecode" not in mod.changes
    item = transfer(m("ITEM-PRODUCT"), TO, bc_item(), None, RESOLVED_TO, inserting=True)
    assert item.changes["producttypecode"] == 1
    vendor = transfer(m("VENDOR"), TO, bc_vendor(), None, RESOLVED_TO, inserting=True)
    assert vendor.changes["customertypecode"] == 11


def test_create_values_win_over_mapped_values():
    to_map = replace(m("CUSTOMER"), create_values_dataverse={"name": "From template", "customertypecode": 3})
    r = transfer(to_map, TO, bc_customer(), None, RESOLVED_TO, inserting=True)
    assert r.changes["name"] == "From template"
    assert r.changed_fields.count("name") == 1
    assert ("displayName", "name") not in r.bidirectional_fields
    from_map = replace(m("CUSTOMER"), create_values_bc={"displayName": "Template name", "blocked": "_x0020_"})
    r = transfer(from_map, FROM, dv_account(), None, RESOLVED_FROM, inserting=True)
    assert r.changes["displayName"] == "Template name" and r.changes["blocked"] == "_x0020_"


def test_insert_writes_every_mapped_value_but_no_null_to_dataverse():
    r = transfer(m("CUSTOMER"), TO, bc_customer(addressLine2="", website="", shipmentMethodId=ZERO_GUID), None,
                 RESOLVED_TO, inserting=True)
    assert "address1_line2" not in r.changes and "websiteurl" not in r.changes
    assert "address1_freighttermscode" not in r.changes
    assert r.changes["name"] == "Adatum Corporation" and r.changes["creditlimit"] == 2000
    # BC has no null: blanks are written as BC's typed blanks
    b = transfer(m("CUSTOMER"), FROM, dv_account(address1_line2=None, paymenttermscode=None), None,
                 RESOLVED_FROM, inserting=True)
    assert b.changes["addressLine2"] == "" and b.changes["paymentTermsId"] == ZERO_GUID
    assert b.changes["currencyCode"] == ""


# --- only-modified semantics and normalisation ----------------------------------------------------------------------
def test_only_modified_fields_are_written_and_nothing_when_equal():
    r = transfer(m("CUSTOMER"), TO, bc_customer(phoneNumber="+1 425 555 0199"), dv_account(), RESOLVED_TO,
                 inserting=False)
    assert r.changes == {"telephone1": "+1 425 555 0199"}
    assert r.changed_fields == ["telephone1"]
    assert r.bidirectional_fields == [("phoneNumber", "telephone1")] and r.bidirectional_changed
    none = transfer(m("CUSTOMER"), TO, bc_customer(), dv_account(), RESOLVED_TO, inserting=False)
    assert none.ok and none.changes == {} and none.changed_fields == [] and not none.has_changes


def test_one_way_field_change_is_not_a_bidirectional_change():
    r = transfer(m("CUSTOMER"), TO, bc_customer(creditLimit=5000), dv_account(), RESOLVED_TO, inserting=False)
    assert r.changes == {"creditlimit": 5000} and not r.bidirectional_changed


@pytest.mark.parametrize("bc_value,dv_value,changed", [
    ("Atlanta", " Atlanta  ", False),          # trimmed
    ("", None, False),                          # blank == null
    (None, "", False),
    ("atlanta", "Atlanta", True),              # text is case-sensitive, like BC
    ("Atlanta", None, True),
    ("", "Atlanta", True),
])
def test_text_normalisation_to(bc_value, dv_value, changed):
    r = transfer(m("CUSTOMER"), TO, bc_customer(city=bc_value), dv_account(address1_city=dv_value), RESOLVED_TO,
                 inserting=False)
    assert ("address1_city" in r.changes) is changed


@pytest.mark.parametrize("bc_value,dv_value,changed", [
    (1000.8, 1000.80, False), (2000, 2000.0, False), (2000, "2000.00", False), (0, None, False),
    (0.1, "0.10", False),    # Decimal vs float: compared as decimals, not as binary floats
    (0.1 + 0.2, 0.3, True),  # no float fuzz: 0.30000000000000004 is not 0.3
    (2000, 2000.01, True), (None, 5, True),
])
def test_numbers_compare_numerically(bc_value, dv_value, changed):
    r = transfer(m("CUSTOMER"), TO, bc_customer(creditLimit=bc_value), dv_account(creditlimit=dv_value),
                 RESOLVED_TO, inserting=False)
    assert ("creditlimit" in r.changes) is changed


def test_guid_normalisation_zero_guid_is_blank():
    # BC zero GUID vs Dataverse null; upper-case / braced GUIDs equal
    base = m("CUSTOMER")
    assert transfer(base, TO, bc_customer(shipmentMethodId=ZERO_GUID),
                    dv_account(address1_freighttermscode=None), RESOLVED_TO, inserting=False).changes == {}
    assert transfer(base, FROM, dv_account(paymenttermscode=None), bc_customer(paymentTermsId=ZERO_GUID),
                    RESOLVED_FROM, inserting=False).changes == {}
    assert transfer(base, FROM, dv_account(paymenttermscode=1),
                    bc_customer(paymentTermsId="{" + BC_PT_10D.upper() + "}"), RESOLVED_FROM,
                    inserting=False).changes == {}
    item = m("ITEM-PRODUCT")
    assert transfer(item, FROM, dv_product(_defaultuomscheduleid_value=None), bc_item(baseUnitOfMeasureId=ZERO_GUID),
                    RESOLVED_FROM, inserting=False).changes == {}


def test_bc_code_fields_are_upper_cased_and_trimmed_from_dataverse():
    r = transfer(m("CUSTOMER"), FROM, dv_account(address1_postalcode=" ab1 2cd ", address1_country="gb"),
                 bc_customer(postalCode="31772", country="US"), RESOLVED_FROM, inserting=False)
    assert r.changes == {"postalCode": "AB1 2CD", "country": "GB"}
    same = transfer(m("CUSTOMER"), FROM, dv_account(address1_postalcode="ab1 2cd", address1_country="gb"),
                    bc_customer(postalCode="AB1 2CD", country="GB"), RESOLVED_FROM, inserting=False)
    assert same.changes == {}
    # but BC text fields (City) stay case-sensitive
    city = transfer(m("CUSTOMER"), FROM, dv_account(address1_city="ATLANTA"), bc_customer(city="Atlanta"),
                    RESOLVED_FROM, inserting=False)
    assert city.changes == {"city": "ATLANTA"}


def test_truncation_to_the_bc_field_length():
    long_name = "Adatum Corporation International Holdings " * 4  # 168 characters, BC displayName holds 100
    r = transfer(m("CUSTOMER"), FROM, dv_account(name=long_name), bc_customer(), RESOLVED_FROM, inserting=False)
    assert r.changes == {"displayName": long_name[:100]}
    same = transfer(m("CUSTOMER"), FROM, dv_account(name=long_name), bc_customer(displayName=long_name[:100]),
                    RESOLVED_FROM, inserting=False)
    assert same.changes == {}
    country = transfer(m("CUSTOMER"), FROM, dv_account(address1_country="United Kingdom"), bc_customer(),
                       RESOLVED_FROM, inserting=False)
    assert country.changes == {"country": "UNITED KIN"}  # Country/Region Code is Code[10]


def test_truncation_to_the_dataverse_column_length():
    first = "Wolfeschlegelsteinhausenbergerdorffwelchevoralternwarengewissenhaft"  # 67 > firstname's 50
    r = transfer(m("CONTACT"), TO, bc_contact(displayName=f"{first} Dyke"), dv_contact(), RESOLVED_TO,
                 inserting=False)
    assert r.changes["firstname"] == first[:50]
    written = apply_dataverse(m("CONTACT"), dv_contact(), r.changes)
    assert transfer(m("CONTACT"), TO, bc_contact(displayName=f"{first} Dyke"), written, RESOLVED_TO,
                    inserting=False).changes == {}


# --- read-only, create-only, update-only ----------------------------------------------------------------------------
def test_create_only_dataverse_columns_are_written_on_insert_only():
    ins = transfer(m("CURRENCY"), TO, bc_currency(), None, RESOLVED_TO, inserting=True)
    assert ins.changes["isocurrencycode"] == "CAD"
    mod = transfer(m("CURRENCY"), TO, bc_currency(code="CAD"), dv_currency(isocurrencycode="CAX"), RESOLVED_TO,
                   inserting=False)
    assert "isocurrencycode" not in mod.changes
    uom = transfer(m("UNIT OF MEASURE"), TO, bc_uom(code="CARTON"), dv_uomschedule(), RESOLVED_TO, inserting=False)
    assert uom.changes == {"name": "CARTON"}  # baseuomname is create-only


def test_read_only_fields_are_never_written():
    contact = m("CONTACT")
    fullname = FieldMapping("displayName", "fullname", TO)
    mapping = with_fields(contact, fullname, field_mapping(contact, "email"))
    for inserting, dest in ((True, None), (False, dv_contact(fullname="Someone Else"))):
        r = transfer(mapping, TO, bc_contact(), dest, RESOLVED_TO, inserting=inserting)
        assert "fullname" not in r.changes
    item = m("ITEM-PRODUCT")
    inventory = FieldMapping("inventory", "quantityonhand", FROM)
    mapping = with_fields(item, inventory, field_mapping(item, "displayName"))
    for inserting, dest in ((True, None), (False, bc_item(inventory=1))):
        r = transfer(mapping, FROM, dv_product(quantityonhand=99), dest, RESOLVED_FROM, inserting=inserting)
        assert "inventory" not in r.changes


def test_update_only_dataverse_columns_are_not_written_on_insert():
    state = FieldMapping("blocked", "statecode", TO, option_values=OptionValueMap(((False, 0), (True, 1))))
    mapping = with_fields(m("ITEM-PRODUCT"), state, field_mapping(m("ITEM-PRODUCT"), "number"))
    assert "statecode" not in transfer(mapping, TO, bc_item(blocked=True), None, None, inserting=True).changes
    assert transfer(mapping, TO, bc_item(blocked=True), dv_product(), None, inserting=False).changes == \
        {"statecode": 1}


def test_results_are_json_and_never_hold_etags_or_ids():
    for name, direction, source, destination in ECHO_CASES:
        for inserting in (True, False):
            r = transfer(m(name), direction, source, None if inserting else destination, _resolved(direction),
                         inserting=inserting)
            text = json.dumps(r.to_json())
            assert "@odata.etag" not in text
            assert "lastModifiedDateTime" not in r.changes and "modifiedon" not in r.changes
            assert "id" not in r.changes and m(name).dataverse_primary_id not in r.changes


# --- per-table rules, option mappings, errors -----------------------------------------------------------------------
def test_empty_currency_symbol_is_sent_as_the_iso_code():
    r = transfer(m("CURRENCY"), TO, bc_currency(symbol=""), None, RESOLVED_TO, inserting=True)
    assert r.changes["currencysymbol"] == "CAD"
    assert transfer(m("CURRENCY"), TO, bc_currency(symbol=""), dv_currency(currencysymbol="CAD"), RESOLVED_TO,
                    inserting=False).changes == {}


def test_option_mapping_writes_the_option_label():
    ins = transfer(m("PAYMENT TERMS"), TO, bc_payment_term(), None, RESOLVED_TO, inserting=True)
    assert ins.changes == {OPTION_LABEL: "10 DAYS"}
    mod = transfer(m("PAYMENT TERMS"), TO, bc_payment_term(code="14 DAYS"), option(1, "10 DAYS"), RESOLVED_TO,
                   inserting=False)
    assert mod.changes == {OPTION_LABEL: "14 DAYS"} and mod.changed_fields == ["paymenttermscode"]


def test_a_pass_without_field_mappings_fails_with_bcs_message():
    r = transfer(m("CURRENCY"), FROM, dv_currency(), bc_currency(), RESOLVED_FROM, inserting=False)
    assert r.errors == ["There are no field mapping rows for the Integration Table Mapping Name CURRENCY in the "
                        "Integration Field Mapping table"]


def test_disabled_field_mappings_are_ignored():
    # customer number -> accountnumber is disabled by default
    r = transfer(m("CUSTOMER"), TO, bc_customer(), dv_account(accountnumber="OTHER"), RESOLVED_TO, inserting=False)
    assert "accountnumber" not in r.changes
    enabled = replace(m("CUSTOMER"), field_mappings=tuple(
        replace(f, enabled=True) if f.dataverse_column == "accountnumber" else f for f in m("CUSTOMER").field_mappings))
    assert transfer(enabled, TO, bc_customer(), dv_account(accountnumber="OTHER"), RESOLVED_TO,
                    inserting=False).changes == {"accountnumber": "NA0007"}


def test_bad_calls_raise():
    with pytest.raises(ValueError):
        transfer(m("CUSTOMER"), Direction.BIDIRECTIONAL, bc_customer(), dv_account(), RESOLVED_TO, inserting=False)
    with pytest.raises(ValueError):
        transfer(m("CUSTOMER"), TO, bc_customer(), None, RESOLVED_TO, inserting=False)


def test_transfer_does_not_mutate_its_inputs():
    source, dest = bc_customer(displayName="New"), dv_account()
    before = (dict(source), dict(dest))
    transfer(m("CUSTOMER"), TO, source, dest, RESOLVED_TO, inserting=False)
    assert (source, dest) == before


def test_a_lookup_through_a_custom_mapping_uses_its_name():
    base = m("VENDOR")
    owner = FieldMapping("number", "ownerid", TO, lookup=Lookup("SALESPEOPLE", bc_key="code",
                                                                bind_property="ownerid",
                                                                target_entity_set="systemusers"))
    mapping = with_fields(base, owner)
    resolved = LookupResolution({("SALESPEOPLE", "V10000"): DV_USER_JR}, lcy_code=LCY)
    assert lookup_needs(mapping, [bc_vendor()], TO, lcy_code=LCY) == {"SALESPEOPLE": {"V10000"}}
    assert transfer(mapping, TO, bc_vendor(), dv_vendor_account(), resolved, inserting=False).changes == \
        {"ownerid@odata.bind": f"/systemusers({DV_USER_JR})"}


def test_transformation_and_a_pass_without_field_mappings():
    first = FieldMapping("displayName", "firstname", TO, transformation=Transformation.FIRST_NAME)
    mapping = with_fields(m("CONTACT"), first)
    assert transfer(mapping, TO, bc_contact(displayName="Ann Lee"), dv_contact(firstname=None), None,
                    inserting=False).changes == {"firstname": "Ann"}
    # the From pass of this mapping has no field mapping at all
    assert transfer(mapping, FROM, dv_contact(), bc_contact(), None, inserting=False).errors[0].startswith(
        "There are no field mapping rows")
