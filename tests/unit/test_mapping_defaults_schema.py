"""The default mappings against the reference schema files (BC API v2.0 $metadata, Dataverse columns).

Every name and value the defaults use is checked against the files themselves, not against the copy embedded in
``sync.mappings``; the embedded copy is checked against the files separately.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sync import mappings as M
from sync.mapping_defaults import BC_WEBHOOK_ENTITY_SETS, MAPPING_NAMES, default_mappings
from sync.mappings import Direction

SCHEMA_DIR = Path(__file__).resolve().parents[2].parent / "shared/reference/schema"

ENTITY_SETS = {  # apis.md C2: entity set -> entity type
    "customers": "customer", "vendors": "vendor", "contacts": "contact", "items": "item", "currencies": "currency",
    "unitsOfMeasure": "unitOfMeasure", "paymentTerms": "paymentTerm", "shipmentMethods": "shipmentMethod",
    "salespeoplePurchasers": "salespersonPurchaser",
}
WEBHOOK_SETS = {"customers", "vendors", "items", "currencies", "unitsOfMeasure", "paymentTerms", "shipmentMethods",
                "paymentMethods", "countriesRegions", "itemCategories"}  # apis.md C2 / C10
BC_READ_ONLY = {"id", "lastModifiedDateTime", "balanceDue", "balance", "inventory", "taxAreaDisplayName",
                "contactBusinessRelation", "companyName"}  # apis.md C3
COMPATIBLE = {  # plain (untranslated) field mappings: BC Edm type -> Dataverse column types
    "Edm.String": {"String", "Memo"},
    "Edm.Decimal": {"Money", "Decimal", "Double"},
    "Edm.Boolean": {"Boolean"},
}

ALL = default_mappings()
NAMES = sorted(ALL)


def _file(name: str) -> Path:
    path = SCHEMA_DIR / name
    if not path.is_file():
        pytest.fail(f"reference schema file missing: {path} (expected the shared reference next to the repo, "
                    "at <repo>/../shared/reference/schema)")
    return path


@pytest.fixture(scope="module")
def bc_props() -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    with _file("bc-api-v2-properties.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["entityType"], {})[row["property"]] = row
    return out


@pytest.fixture(scope="module")
def bc_enums() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with _file("bc-api-v2-enums.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["enumType"], []).append(row["member"])
    return out


@pytest.fixture(scope="module")
def dv() -> dict:
    return json.loads(_file("dataverse-columns.json").read_text())


def _bc(bc_props, m, name) -> dict:
    props = bc_props[m.bc_entity_type]
    assert name in props, f"{m.name}: '{name}' is not a property of BC entity type {m.bc_entity_type}"
    return props[name]


def _dv(dv, m, name) -> dict:
    cols = dv[m.dataverse_table]["columns"]
    assert name in cols, f"{m.name}: '{name}' is not a column of Dataverse table {m.dataverse_table}"
    return cols[name]


def _enum(row: dict) -> str | None:
    return row["type"].removeprefix("Microsoft.NAV.") if row["type"].startswith("Microsoft.NAV.") else None


def _check_bc_value(bc_props, bc_enums, m, name, value, what):
    row = _bc(bc_props, m, name)
    enum = _enum(row)
    if enum:
        assert value in bc_enums[enum], f"{m.name} {what}: {value!r} is not a member of {enum} {bc_enums[enum]}"
    elif row["type"] == "Edm.Boolean":
        assert isinstance(value, bool), f"{m.name} {what}: {name} is Boolean, got {value!r}"
    elif row["type"] == "Edm.String":
        assert isinstance(value, str), f"{m.name} {what}: {name} is a string, got {value!r}"
        if row["maxLength"]:
            assert len(value) <= int(row["maxLength"]), f"{m.name} {what}: {value!r} longer than {name}"
    elif row["type"] == "Edm.Guid":
        assert isinstance(value, str) and len(value) == 36
    else:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{m.name} {what}: {value!r}"


def _check_dv_value(dv, m, name, value, what):
    col = _dv(dv, m, name)
    if "options" in col:
        assert isinstance(value, int) and not isinstance(value, bool) and str(value) in col["options"], \
            f"{m.name} {what}: {value!r} is not an option of {m.dataverse_table}.{name} {col['options']}"
    elif col["type"] == "Boolean":
        assert isinstance(value, bool), f"{m.name} {what}: {name} is Boolean, got {value!r}"
    elif col["type"] in ("String", "Memo"):
        assert isinstance(value, str)
        if "max" in col:
            assert len(value) <= col["max"], f"{m.name} {what}: {value!r} longer than {name} ({col['max']})"
    elif col["type"] in ("Lookup", "Owner", "Customer", "Uniqueidentifier"):
        assert isinstance(value, str) and len(value) == 36
    else:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{m.name} {what}: {value!r}"


# --- the embedded copy ------------------------------------------------------------------------------------------
def test_shipped_bc_properties_are_the_file():
    assert M._schema_text("bc-api-v2-properties.csv").strip() == _file("bc-api-v2-properties.csv").read_text().strip()


def test_shipped_bc_enums_are_the_file_for_every_enum_the_properties_use(bc_props, bc_enums):
    used = {_enum(row) for props in bc_props.values() for row in props.values()} - {None}
    embedded: dict[str, list[str]] = {}
    for row in csv.DictReader(M._schema_text("bc-api-v2-enums.csv").splitlines()):
        embedded.setdefault(row["enumType"], []).append(row["member"])
    assert set(embedded) == used
    for enum in used:
        assert embedded[enum] == bc_enums[enum], enum
        assert list(M.bc_enum_members(enum)) == bc_enums[enum]
    file_lines = set(_file("bc-api-v2-enums.csv").read_text().splitlines())
    assert set(M._schema_text("bc-api-v2-enums.csv").strip().splitlines()) <= file_lines


def test_shipped_dataverse_columns_are_the_file(dv):
    assert json.loads(M._schema_text("dataverse-columns.json")) == dv


def test_schema_accessors_read_the_embedded_copy(bc_props, dv):
    for entity, props in bc_props.items():
        parsed = M.bc_properties(entity)
        assert set(parsed) == set(props)
        for name, row in props.items():
            p = parsed[name]
            assert p.edm_type == row["type"]
            assert p.nullable == (row["nullable"] != "false")
            assert p.max_length == (int(row["maxLength"]) if row["maxLength"] else None)
    for table, info in dv.items():
        t = M.dataverse_table(table)
        assert (t.entity_set, t.primary_id, t.primary_name) == (info["set"], info["pk"], info["primary_name"])
        for name, col in info["columns"].items():
            c = t.columns[name]
            assert (c.type, c.max_length, c.access) == (col["type"], col.get("max"), col.get("access"))
            assert dict(c.options) == {int(k): v for k, v in col.get("options", {}).items()}
            assert c.targets == tuple(col.get("targets", ()))


def test_every_schema_type_has_a_filter_kind(bc_props, dv):
    """Filters and validation handle every field of every entity, not just the ones the defaults use."""
    for props in bc_props.values():
        for row in props.values():
            assert _enum(row) or row["type"] in M._BC_KINDS, row
    for info in dv.values():
        for col in info["columns"].values():
            assert col["type"] in M._DV_KINDS, col


# --- the defaults ---------------------------------------------------------------------------------------------
def test_the_nine_default_mappings_with_bcs_directions():
    assert set(ALL) == set(MAPPING_NAMES) == {"CUSTOMER", "VENDOR", "CONTACT", "CURRENCY", "SALESPEOPLE",
                                               "ITEM-PRODUCT", "UNIT OF MEASURE", "PAYMENT TERMS", "SHIPMENT METHOD"}
    directions = {n: m.direction for n, m in ALL.items()}
    assert directions == {
        "CUSTOMER": Direction.BIDIRECTIONAL, "VENDOR": Direction.BIDIRECTIONAL, "CONTACT": Direction.BIDIRECTIONAL,
        "ITEM-PRODUCT": Direction.BIDIRECTIONAL, "CURRENCY": Direction.TO_INTEGRATION_TABLE,
        "UNIT OF MEASURE": Direction.TO_INTEGRATION_TABLE, "PAYMENT TERMS": Direction.TO_INTEGRATION_TABLE,
        "SHIPMENT METHOD": Direction.TO_INTEGRATION_TABLE, "SALESPEOPLE": Direction.FROM_INTEGRATION_TABLE}
    assert all(m.sync_only_coupled_records for m in ALL.values())
    assert ALL["CUSTOMER"].create_values_dataverse == {"customertypecode": 3}
    assert ALL["VENDOR"].create_values_dataverse == {"customertypecode": 11}


def test_default_mappings_pass_validation():
    order = M.validate_mappings(ALL)
    assert sorted(order) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_entities_and_keys(name, bc_props, dv):
    m = ALL[name]
    assert ENTITY_SETS.get(m.bc_entity_set) == m.bc_entity_type, m.bc_entity_set
    assert m.bc_entity_type in bc_props
    table = dv[m.dataverse_table]
    assert m.dataverse_entity_set == table["set"]
    if m.is_option_mapping:
        assert m.option_set.table == m.dataverse_table
        assert table["columns"][m.option_set.column]["type"] == "Picklist"
        assert m.dataverse_primary_id == m.option_set.column
        assert m.dataverse_modified_on is None and m.dataverse_primary_name is None
        assert "code" in bc_props[m.bc_entity_type]
    else:
        assert m.dataverse_primary_id == table["pk"]
        assert m.dataverse_primary_name == table["primary_name"]
        assert m.dataverse_modified_on == "modifiedon"
        assert table["columns"]["modifiedon"]["type"] == "DateTime"
    assert m.webhook_capable == (m.bc_entity_set in WEBHOOK_SETS)
    assert BC_WEBHOOK_ENTITY_SETS == WEBHOOK_SETS


def test_webhook_capability_follows_bc():
    assert {n for n, m in ALL.items() if not m.webhook_capable} == {"CONTACT", "SALESPEOPLE"}


@pytest.mark.parametrize("name", NAMES)
def test_every_field_mapping_names_real_fields_and_writable_targets(name, bc_props, dv):
    m = ALL[name]
    assert m.field_mappings
    for fm in m.field_mappings:
        bc = _bc(bc_props, m, fm.bc_field) if fm.bc_field else None
        col = _dv(dv, m, fm.dataverse_column) if fm.dataverse_column else None
        if col is not None and fm.direction is not Direction.FROM_INTEGRATION_TABLE:
            assert col.get("access") != "Read", f"{name}: {fm.label} writes read-only column {fm.dataverse_column}"
        if bc is not None and fm.direction is not Direction.TO_INTEGRATION_TABLE:
            assert fm.bc_field not in BC_READ_ONLY, f"{name}: {fm.label} writes read-only BC field"
        if bc is None or col is None or fm.lookup or fm.option_values or m.is_option_mapping:
            continue
        assert col["type"] in COMPATIBLE.get(bc["type"], set()), \
            f"{name}: {fm.label} maps {bc['type']} to {col['type']}"


@pytest.mark.parametrize("name", NAMES)
def test_lookups_name_the_right_columns_sets_and_mappings(name, bc_props, dv):
    m = ALL[name]
    for fm in (f for f in m.field_mappings if f.lookup):
        lk = fm.lookup
        col = _dv(dv, m, fm.dataverse_column)
        bc = _bc(bc_props, m, fm.bc_field)
        if lk.is_company_contact:
            # a contact's company (a contact number) <-> a polymorphic Customer column, bound to its account target
            # (parentcustomerid_account@odata.bind), through mappings whose Dataverse table is that target
            assert (m.bc_entity_type, fm.bc_field, bc["type"]) == ("contact", "companyNumber", "Edm.String")
            assert bc["maxLength"] == bc_props["contact"]["number"]["maxLength"]
            assert col["type"] == "Customer" and "account" in col["targets"]
            assert len(lk.mappings) > 1 and all(ALL[r].dataverse_table == "account" for r in lk.mappings)
            assert lk.bind_property == f"{fm.dataverse_column}_account"
            assert lk.target_entity_set == dv["account"]["set"]
            assert fm.dataverse_read_property == f"_{fm.dataverse_column}_value"
            assert fm.dataverse_write_property == f"{fm.dataverse_column}_account@odata.bind"
            assert not lk.lcy_iso_column and not lk.is_option
            continue
        target = ALL[lk.mapping]
        if lk.is_option:
            assert target.is_option_mapping and target.option_set.table == m.dataverse_table
            assert target.option_set.column == fm.dataverse_column and col["type"] == "Picklist"
            assert lk.bc_key == "id" and bc["type"] == "Edm.Guid"
            assert fm.dataverse_read_property == fm.dataverse_write_property == fm.dataverse_column
        else:
            assert col["type"] in ("Lookup", "Owner") and target.dataverse_table in col["targets"]
            assert lk.bind_property == fm.dataverse_column
            assert lk.target_entity_set == target.dataverse_entity_set == dv[target.dataverse_table]["set"]
            assert fm.dataverse_read_property == f"_{fm.dataverse_column}_value"
            assert fm.dataverse_write_property == f"{fm.dataverse_column}@odata.bind"
            if lk.bc_key == "id":
                assert bc["type"] == "Edm.Guid"
            else:
                assert bc["type"] == "Edm.String" and lk.bc_key in bc_props[target.bc_entity_type]
        if lk.lcy_iso_column:
            assert lk.lcy_iso_column in dv[target.dataverse_table]["columns"]


@pytest.mark.parametrize("name", NAMES)
def test_lookup_targets_are_synchronized_first(name):
    m = ALL[name]
    before: set[str] = set()
    todo = list(m.dependencies)
    while todo:
        dep = todo.pop()
        if dep not in before:
            before.add(dep)
            todo.extend(ALL[dep].dependencies)
    for fm in m.field_mappings:
        if fm.lookup:
            for ref in fm.lookup.mappings:
                assert ref in before, f"{name}: {fm.label} looks up {ref}, not a dependency"


@pytest.mark.parametrize("name", NAMES)
def test_option_values_constants_and_create_values_exist(name, bc_props, bc_enums, dv):
    m = ALL[name]
    for fm in m.field_mappings:
        if fm.option_values:
            for bc_value, dv_value in fm.option_values.pairs:
                _check_bc_value(bc_props, bc_enums, m, fm.bc_field, bc_value, f"option value of {fm.label}")
                _check_dv_value(dv, m, fm.dataverse_column, dv_value, f"option value of {fm.label}")
        if fm.constant is not None:
            if fm.dataverse_column is None:
                _check_bc_value(bc_props, bc_enums, m, fm.bc_field, fm.constant, f"constant of {fm.label}")
            else:
                _check_dv_value(dv, m, fm.dataverse_column, fm.constant, f"constant of {fm.label}")
    for key, value in m.create_values_bc.items():
        _check_bc_value(bc_props, bc_enums, m, key, value, "create value")
    for key, value in m.create_values_dataverse.items():
        _check_dv_value(dv, m, key, value, "create value")


@pytest.mark.parametrize("name", NAMES)
def test_filters_and_match_criteria_use_real_fields_and_values(name, bc_props, bc_enums, dv):
    m = ALL[name]
    for c in m.table_filter.conditions:
        for v in c.values:
            _check_bc_value(bc_props, bc_enums, m, c.field, v, f"table filter on {c.field}")
    for c in m.integration_table_filter.conditions:
        assert c.field != "bcbi_companyid", "the company filter is a documented simplification, not a default"
        for v in c.values:
            _check_dv_value(dv, m, c.field, v, f"integration table filter on {c.field}")
    for c in m.match_criteria:
        _bc(bc_props, m, c.bc_field)
        _dv(dv, m, c.dataverse_column)


def test_default_filters_are_bcs():
    def od(name, service):
        return ALL[name].filter_for(service).to_odata()

    assert od("CUSTOMER", "bc") == od("VENDOR", "bc") == "blocked eq '_x0020_'"
    assert od("CUSTOMER", "dataverse") == "statecode eq 0 and customertypecode eq 3"
    assert od("VENDOR", "dataverse") == "statecode eq 0 and customertypecode eq 11"
    assert od("CONTACT", "bc") == "type eq 'Person' and companyNumber ne ''"
    assert od("CONTACT", "dataverse") == "statecode eq 0"
    assert od("ITEM-PRODUCT", "bc") == "blocked eq false"
    assert od("ITEM-PRODUCT", "dataverse") == "producttypecode eq 1 and statecode eq 0"
    assert od("SALESPEOPLE", "dataverse") == "isdisabled eq false and islicensed eq true and isintegrationuser eq false"
    assert od("CURRENCY", "bc") == od("CURRENCY", "dataverse") == ""


SECTION_10 = {  # bc-integration-semantics section 10, restricted to BC API v2.0 fields (see mapping_defaults)
    "SALESPEOPLE": ["email <- internalemailaddress", "displayName <- fullname", "phoneNo <- mobilephone",
                    "jobTitle <-> jobtitle (disabled)", "email2 <-> personalemailaddress (disabled)"],
    "CURRENCY": ["code -> isocurrencycode", "symbol -> currencysymbol", "displayName -> currencyname"],
    "PAYMENT TERMS": ["code -> paymenttermscode"],
    "SHIPMENT METHOD": ["code -> address1_freighttermscode"],
    "UNIT OF MEASURE": ["code -> name", "code -> baseuomname"],
    "CUSTOMER": ["salespersonCode -> ownerid", "displayName <-> name", "addressLine1 <-> address1_line1",
                 "addressLine2 <-> address1_line2", "postalCode <-> address1_postalcode", "city <-> address1_city",
                 "country <-> address1_country", "state <-> address1_stateorprovince",
                 "currencyCode <-> transactioncurrencyid", "email <-> emailaddress1", "website <-> websiteurl",
                 "phoneNumber <-> telephone1", "paymentTermsId <-> paymenttermscode",
                 "shipmentMethodId <-> address1_freighttermscode", "creditLimit -> creditlimit",
                 "number -> accountnumber (disabled)"],
    "VENDOR": ["displayName <-> name", "addressLine1 <-> address1_line1", "addressLine2 <-> address1_line2",
               "postalCode <-> address1_postalcode", "city <-> address1_city", "country <-> address1_country",
               "state <-> address1_stateorprovince", "currencyCode <-> transactioncurrencyid",
               "email <-> emailaddress1", "website <-> websiteurl", "phoneNumber <-> telephone1",
               "paymentTermsId <-> paymenttermscode", "number -> accountnumber (disabled)"],
    "CONTACT": ["displayName -> firstname", "displayName -> middlename", "displayName -> lastname",
                "displayName <- fullname", "addressLine1 <-> address1_line1", "addressLine2 <-> address1_line2",
                "postalCode <-> address1_postalcode", "city <-> address1_city", "country <-> address1_country",
                "state <-> address1_stateorprovince", "email <-> emailaddress1", "website <-> websiteurl",
                "mobilePhoneNumber <-> mobilephone", "phoneNumber <-> telephone1", 'type <- (constant "Person")',
                "companyNumber <-> parentcustomerid"],  # the company link (10.4; BC does it in subscribers)
    "ITEM-PRODUCT": ["number -> productnumber", "displayName <-> name", "unitPrice -> price",
                     "unitCost -> standardcost", "unitCost -> currentcost", "inventory -> quantityonhand",
                     "baseUnitOfMeasureId <-> defaultuomscheduleid", "blocked <- statecode"],
}
LOOKUPS = {  # (mapping, BC field) -> (mapping translated through, bc_key, not_null)
    ("CUSTOMER", "salespersonCode"): ("SALESPEOPLE", "code", True),
    ("CUSTOMER", "currencyCode"): ("CURRENCY", "code", False),
    ("CUSTOMER", "paymentTermsId"): ("PAYMENT TERMS", "id", False),
    ("CUSTOMER", "shipmentMethodId"): ("SHIPMENT METHOD", "id", False),
    ("VENDOR", "currencyCode"): ("CURRENCY", "code", False),
    ("VENDOR", "paymentTermsId"): ("PAYMENT TERMS", "id", False),
    ("ITEM-PRODUCT", "baseUnitOfMeasureId"): ("UNIT OF MEASURE", "id", False),
    ("CONTACT", "companyNumber"): ("CUSTOMER|VENDOR", "companyContact", False),
}


@pytest.mark.parametrize("name", NAMES)
def test_field_mappings_are_bcs_section_10(name):
    got = [f.label + ("" if f.enabled else " (disabled)") for f in ALL[name].field_mappings]
    assert got == SECTION_10[name]


def test_lookups_are_bcs():
    got = {(n, f.bc_field): (f.lookup.mapping, f.lookup.bc_key, f.not_null)
           for n, m in ALL.items() for f in m.field_mappings if f.lookup}
    assert got == LOOKUPS
    currency_lookups = [f.lookup for m in ALL.values() for f in m.field_mappings
                        if f.lookup and f.lookup.mapping == "CURRENCY"]
    assert currency_lookups and all(lk.lcy_iso_column == "isocurrencycode" for lk in currency_lookups)
    assert all(not f.lookup.lcy_iso_column for m in ALL.values() for f in m.field_mappings
               if f.lookup and f.lookup.mapping != "CURRENCY")
