"""Table/field mappings as data: filters, BC's validation rules, PATCH, overrides, JSON, dependency order."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sync import mappings as M
from sync.errors import RequestError, Unprocessable
from sync.mapping_defaults import default_mappings, effective_mappings
from sync.mappings import (Condition, DeletionConflictResolution, Direction, FieldMapping, Filter, Lookup,
                           MatchCriterion, OptionValueMap, Transformation, UpdateConflictResolution)

GUID = "6C3A7E1C-1234-4D2B-9A77-00AABBCCDDEE"


def d(name: str):
    return default_mappings()[name]


def names():
    return set(default_mappings())


def bc_filter(entity, conds):
    return Filter.from_json(conds, service="bc", entity=entity)


def dv_filter(entity, conds):
    return Filter.from_json(conds, service="dataverse", entity=entity)


def bad_request(fn, *args, **kw) -> RequestError:
    """The call raises a 400-type RequestError (not the 422 Unprocessable subclass)."""
    with pytest.raises(RequestError) as info:
        fn(*args, **kw)
    assert type(info.value) is RequestError, f"expected a plain RequestError, got {type(info.value).__name__}"
    return info.value


def unprocessable(fn, *args, **kw) -> Unprocessable:
    with pytest.raises(Unprocessable) as info:
        fn(*args, **kw)
    return info.value


# --- enums --------------------------------------------------------------------------------------------------------
def test_enum_values_are_bcs_names():
    assert [m.value for m in Direction] == ["Bidirectional", "ToIntegrationTable", "FromIntegrationTable"]
    assert [m.value for m in UpdateConflictResolution] == ["None", "SendUpdateToIntegration",
                                                           "GetUpdateFromIntegration"]
    assert [m.value for m in DeletionConflictResolution] == ["None", "RestoreRecords", "RemoveCoupling"]
    assert json.dumps(Direction.TO_INTEGRATION_TABLE) == '"ToIntegrationTable"'


def test_direction_passes_and_includes():
    to, frm, bi = Direction.TO_INTEGRATION_TABLE, Direction.FROM_INTEGRATION_TABLE, Direction.BIDIRECTIONAL
    assert bi.passes == (to, frm) and to.passes == (to,) and frm.passes == (frm,)
    assert bi.includes(to) and bi.includes(frm) and to.includes(to)
    assert not to.includes(frm) and not frm.includes(to)


def test_bc_enum_member_escaping():
    assert M.decode_bc_enum_member("_x0020_") == " "
    assert M.decode_bc_enum_member("Non_x002D_Inventory") == "Non-Inventory"
    assert M.bc_enum_member("customerBlocked", " ") == "_x0020_"
    assert M.bc_enum_member("customerBlocked", "_x0020_") == "_x0020_"
    assert M.bc_enum_member("itemType", "Non-Inventory") == "Non_x002D_Inventory"
    assert M.bc_enum_member("customerBlocked", "Payment") is None  # a vendorBlocked member only


# --- filters: in memory ---------------------------------------------------------------------------------------------
def test_bc_text_eq_is_case_sensitive_dataverse_is_not():
    bc = bc_filter("customer", [{"field": "displayName", "op": "eq", "value": "Contoso"}])
    assert bc.matches({"displayName": "Contoso"})
    assert not bc.matches({"displayName": "CONTOSO"})
    dv = dv_filter("account", [{"field": "name", "op": "eq", "value": "Contoso"}])
    assert dv.matches({"name": "CONTOSO"})
    assert not dv.matches({"name": "Contoso Ltd"})


def test_failing_conditions_name_exactly_the_failing_ones():
    f = d("CUSTOMER").integration_table_filter
    assert f.failing_conditions({"statecode": 0, "customertypecode": 3}) == []
    failing = f.failing_conditions({"statecode": 0, "customertypecode": 11})
    assert failing == [Condition("customertypecode", "eq", 3)]
    assert len(f.failing_conditions({"statecode": 1, "customertypecode": 1})) == 2
    assert f.describe_failures({"statecode": 0, "customertypecode": 11}) == "customertypecode = 3 (Customer)"
    assert f.describe_failures({"statecode": 0, "customertypecode": 3}) == ""
    assert not f.matches({"statecode": 0})  # missing value doesn't pass


def test_blank_enum_member_matches_serialized_or_decoded():
    f = d("CUSTOMER").table_filter
    assert f.matches({"blocked": "_x0020_"})
    assert f.matches({"blocked": " "})
    assert not f.matches({"blocked": "Ship"})
    assert f.failing_conditions({"blocked": "All"}) == [Condition("blocked", "eq", "_x0020_")]


def test_ne_and_bc_text_never_null():
    f = d("CONTACT").table_filter  # type eq 'Person' and companyNumber ne ''
    assert f.matches({"type": "Person", "companyNumber": "C0001"})
    assert not f.matches({"type": "Person", "companyNumber": ""})
    assert not f.matches({"type": "Person"})  # BC text absent = blank, not "something"
    assert not f.matches({"type": "Company", "companyNumber": "C0001"})


def test_in_null_bool_and_guid_matching():
    f = dv_filter("account", [{"field": "customertypecode", "op": "in", "value": [3, 11]},
                              {"field": "primarycontactid", "op": "eq", "value": None},
                              {"field": "transactioncurrencyid", "op": "ne", "value": GUID},
                              {"field": "donotemail", "op": "eq", "value": False}])
    row = {"customertypecode": 11, "_primarycontactid_value": None,
           "_transactioncurrencyid_value": "00000000-0000-0000-0000-000000000001", "donotemail": False}
    assert f.matches(row)
    assert not f.matches({**row, "customertypecode": 1})
    assert not f.matches({**row, "_transactioncurrencyid_value": GUID.lower()})  # GUIDs compare case-insensitively
    assert not f.matches({**row, "_primarycontactid_value": GUID})
    assert not f.matches({**row, "donotemail": 0})  # 0 is not false


def test_fields_lists_what_matches_reads():
    f = dv_filter("account", [{"field": "_transactioncurrencyid_value", "op": "eq", "value": GUID},
                              {"field": "statecode", "op": "eq", "value": 0}])
    assert f.fields() == ("_transactioncurrencyid_value", "statecode")
    assert f.conditions[0].field == "transactioncurrencyid"  # canonical column name


# --- filters: text and OData ----------------------------------------------------------------------------------------
def test_describe_names_fields_and_expected_values():
    assert d("CUSTOMER").integration_table_filter.describe() == \
        "statecode = 0 (Active) and customertypecode = 3 (Customer)"
    assert d("CUSTOMER").table_filter.describe() == "blocked = ' ' (blank)"
    assert d("CONTACT").table_filter.describe() == "type = 'Person' and companyNumber <> ''"
    f = bc_filter("customer", [{"field": "country", "op": "in", "value": ["US", "CA"]}])
    assert f.describe() == "country is one of 'US', 'CA'"
    assert f.describe_condition(f.conditions[0]) == "country is one of 'US', 'CA'"
    assert Filter("bc", "customer").describe() == "(no filter)"


def test_to_odata_literals():
    f = bc_filter("customer", [{"field": "displayName", "op": "eq", "value": "O'Brien's"},
                               {"field": "id", "op": "ne", "value": GUID},
                               {"field": "taxLiable", "op": "eq", "value": True},
                               {"field": "creditLimit", "op": "ne", "value": 1000.5},
                               {"field": "lastModifiedDateTime", "op": "eq", "value": "2024-01-31T12:00:00.250Z"}])
    assert f.to_odata("bc") == ("displayName eq 'O''Brien''s' and id ne 6c3a7e1c-1234-4d2b-9a77-00aabbccddee "
                                "and taxLiable eq true and creditLimit ne 1000.5 "
                                "and lastModifiedDateTime eq 2024-01-31T12:00:00.250Z")


def test_to_odata_in_lookup_and_null_on_dataverse():
    f = dv_filter("account", [{"field": "name", "op": "in", "value": ["A'1", "B"]},
                              {"field": "transactioncurrencyid", "op": "eq", "value": GUID},
                              {"field": "primarycontactid", "op": "ne", "value": None}])
    assert f.to_odata() == ("(name eq 'A''1' or name eq 'B') and _transactioncurrencyid_value eq "
                            "6c3a7e1c-1234-4d2b-9a77-00aabbccddee and _primarycontactid_value ne null")
    single = dv_filter("account", [{"field": "customertypecode", "op": "in", "value": [3]}])
    assert single.to_odata() == "customertypecode eq 3"


def test_to_odata_empty_and_wrong_service():
    assert Filter("dataverse", "account").to_odata() == ""
    with pytest.raises(ValueError):
        d("CUSTOMER").table_filter.to_odata("dataverse")


def test_filter_json_round_trip():
    for m in default_mappings().values():
        for f in (m.table_filter, m.integration_table_filter):
            assert Filter.from_json(json.loads(json.dumps(f.to_json())), service=f.service, entity=f.entity) == f
    assert d("CUSTOMER").integration_table_filter.to_json() == [
        {"field": "statecode", "op": "eq", "value": 0}, {"field": "customertypecode", "op": "eq", "value": 3}]


@pytest.mark.parametrize("conds", [
    {"field": "statecode", "op": "eq", "value": 0},                          # not a list
    ["statecode eq 0"],                                                      # item not an object
    [{"field": "statecode", "op": "eq"}],                                    # missing value
    [{"field": "statecode", "op": "eq", "value": 0, "x": 1}],                # extra key
    [{"field": "statecode", "op": "gt", "value": 0}],                        # unsupported op
    [{"field": "", "op": "eq", "value": 0}],                                 # empty field
    [{"field": "statecode", "op": "eq", "value": "0"}],                      # string for a choice
    [{"field": "donotemail", "op": "eq", "value": "true"}],                  # string for a boolean
    [{"field": "numberofemployees", "op": "eq", "value": True}],             # bool for an integer
    [{"field": "_transactioncurrencyid_value", "op": "eq", "value": "nope"}],  # not a GUID
    [{"field": "customertypecode", "op": "in", "value": 3}],                 # in without a list
    [{"field": "customertypecode", "op": "in", "value": []}],                # in with nothing
    [{"field": "customertypecode", "op": "eq", "value": [3]}],               # eq with a list
    [{"field": "modifiedon", "op": "eq", "value": "2024-01-31T12:00:00"}],   # no offset
])
def test_malformed_filters_are_bad_requests(conds):
    bad_request(Filter.from_json, conds, service="dataverse", entity="account", key="integrationTableFilter")


def test_bc_filters_have_no_null():
    bad_request(Filter.from_json, [{"field": "displayName", "op": "eq", "value": None}], service="bc",
                entity="customer")


@pytest.mark.parametrize("service,entity,cond,text", [
    ("dataverse", "account", {"field": "bcbi_company", "op": "eq", "value": 1}, "not a field"),
    ("dataverse", "account", {"field": "customertypecode", "op": "eq", "value": 99}, "not an option value"),
    ("dataverse", "account", {"field": "accountnumber", "op": "eq", "value": "x" * 21}, "longer than"),
    ("bc", "customer", {"field": "blocked", "op": "eq", "value": "Payment"}, "not a member"),
    ("bc", "customer", {"field": "statecode", "op": "eq", "value": 0}, "not a field of BC entity 'customer'"),
    ("bc", "vendor", {"field": "number", "op": "in", "value": ["A", "x" * 21]}, "longer than"),
])
def test_filters_the_schema_refuses_are_unprocessable(service, entity, cond, text):
    exc = unprocessable(Filter.from_json, [cond], service=service, entity=entity, key="k", mapping="CUSTOMER")
    assert text in exc.message
    assert exc.details["mapping"] == "CUSTOMER" and exc.details["setting"] == "k"


# --- validation -----------------------------------------------------------------------------------------------------
def test_option_mapping_cannot_be_bidirectional():
    m = replace(d("PAYMENT TERMS"), direction=Direction.BIDIRECTIONAL)
    exc = unprocessable(M.validate_table_mapping, m, names())
    assert exc.message.startswith("Option mappings can only synchronize from integration table or to integration "
                                  "table.")


def test_direction_needs_an_enabled_field_mapping_of_that_direction():
    exc = unprocessable(M.validate_table_mapping, replace(d("CURRENCY"), direction="FromIntegrationTable"))
    assert exc.message == ("You must set the direction of at least one enabled integration field mapping to "
                           "'FromIntegrationTable'.")
    # SALESPEOPLE's Bidirectional fields are disabled, so Bidirectional isn't allowed either
    exc = unprocessable(M.validate_table_mapping, replace(d("SALESPEOPLE"), direction=Direction.BIDIRECTIONAL))
    assert "'Bidirectional'" in exc.message
    # and a From field doesn't count for To
    M.validate_table_mapping(d("SALESPEOPLE"))
    only_from = replace(d("CUSTOMER"), field_mappings=(FieldMapping("displayName", "name",
                                                                    Direction.FROM_INTEGRATION_TABLE),),
                        match_criteria=())
    unprocessable(M.validate_table_mapping, replace(only_from, direction=Direction.TO_INTEGRATION_TABLE))
    M.validate_table_mapping(replace(only_from, direction=Direction.FROM_INTEGRATION_TABLE))


@pytest.mark.parametrize("criterion,text", [
    (MatchCriterion("displayName", "telephone1"), "is not a field mapping"),
    (MatchCriterion("number", "accountnumber"), "disabled"),
    (MatchCriterion("currencyCode", "transactioncurrencyid"), "different types"),
    (MatchCriterion("paymentTermsId", "paymenttermscode"), "different types"),
    (MatchCriterion("displayName", "name", -1), "0 or more"),
    (MatchCriterion("displayName", "name", True), "0 or more"),
])
def test_match_criteria_rules(criterion, text):
    m = replace(d("CUSTOMER"), match_criteria=(criterion,))
    assert text in unprocessable(M.validate_table_mapping, m).message


def test_match_criteria_constant_and_duplicates():
    m = replace(d("CONTACT"), match_criteria=(MatchCriterion("type", None),))
    assert "constant" in unprocessable(M.validate_table_mapping, m).message
    twice = (MatchCriterion("displayName", "name", 0), MatchCriterion("displayName", "name", 1))
    assert "twice" in unprocessable(M.validate_table_mapping, replace(d("CUSTOMER"), match_criteria=twice)).message


def test_dependencies_must_be_known_and_not_self():
    m = replace(d("CONTACT"), dependencies=("CUSTOMER", "NOPE"))
    assert "unknown table mapping 'NOPE'" in unprocessable(M.validate_table_mapping, m, names()).message
    M.validate_table_mapping(m)  # without all_names the names can't be checked
    m = replace(d("CONTACT"), dependencies=("CONTACT",))
    assert "itself" in unprocessable(M.validate_table_mapping, m).message


def test_lookup_through_unknown_mapping_is_refused():
    fm = FieldMapping("currencyCode", "transactioncurrencyid",
                      lookup=Lookup("MONEY", "code", "transactioncurrencyid", "transactioncurrencies"))
    m = replace(d("VENDOR"), field_mappings=d("VENDOR").field_mappings + (fm,))
    assert "unknown table mapping 'MONEY'" in unprocessable(M.validate_table_mapping, m, names()).message


@pytest.mark.parametrize("fm,text", [
    (FieldMapping("displayName", "nosuch"), "not a column"),
    (FieldMapping("nosuch", "name"), "not a field of BC entity"),
    (FieldMapping(None, None), "neither"),
    (FieldMapping("displayName", None), "no source field"),
    (FieldMapping("displayName", "name", constant="x"), "constant value needs the source side to be empty"),
    (FieldMapping(None, "customertypecode", Direction.FROM_INTEGRATION_TABLE, constant=3), "must have direction"),
    (FieldMapping(None, "customertypecode", Direction.TO_INTEGRATION_TABLE, constant=99), "not an option value"),
    (FieldMapping("blocked", None, Direction.FROM_INTEGRATION_TABLE, constant="Payment"), "not a member"),
    (FieldMapping(None, "name", Direction.TO_INTEGRATION_TABLE, constant="x" * 161), "longer than"),
    (FieldMapping("email", "emailaddress2", not_null=True), "only apply to lookups"),
    (FieldMapping("salespersonCode", "ownerid", Direction.TO_INTEGRATION_TABLE, not_null=True,
                  clear_value_on_failed_sync=True,
                  lookup=Lookup("SALESPEOPLE", "code", "ownerid", "systemusers")), "can't both be set"),
    (FieldMapping("email", "emailaddress2", transformation=Transformation.SURNAME), "one direction"),
    (FieldMapping("salespersonCode", "ownerid", lookup=Lookup("SALESPEOPLE", "code", "ownerid")), "both its bind"),
    (FieldMapping("email", "emailaddress2", lookup=Lookup("SALESPEOPLE", "code", "ownerid", "systemusers")),
     "needs a lookup column"),
    (FieldMapping("email", "address2_freighttermscode", option_values=OptionValueMap((("a", 7),))),
     "not an option value"),
    (FieldMapping("displayName", "name"), "appears twice"),
])
def test_field_mapping_rules(fm, text):
    base = d("CUSTOMER")
    m = replace(base, field_mappings=base.field_mappings + (fm,))
    assert text in unprocessable(M.validate_table_mapping, m, names()).message


def test_company_contact_lookup_is_validated():
    contact = d("CONTACT")
    link = contact.field_mapping("companyNumber", "parentcustomerid")
    assert link.lookup.is_company_contact and link.lookup.mappings == ("CUSTOMER", "VENDOR")
    assert link.dataverse_read_property == "_parentcustomerid_value"
    assert link.dataverse_write_property == "parentcustomerid_account@odata.bind"
    assert link.lookup.bind_value(GUID) == "/accounts(6c3a7e1c-1234-4d2b-9a77-00aabbccddee)"
    assert contact.bc_select()[-1] == "number"  # BC's company-link error names the contact
    assert "number" not in d("CUSTOMER").bc_select()
    M.validate_table_mapping(contact, names())

    def refused(lookup, m=contact, fm=None):
        fm = fm or replace(link, lookup=lookup)
        changed = replace(m, field_mappings=tuple(fm if f is link else f for f in m.field_mappings)
                          if fm.bc_field == "companyNumber" and m is contact else m.field_mappings + (fm,))
        return unprocessable(M.validate_table_mapping, changed, names()).message

    assert "only a company-contact lookup" in refused(replace(link.lookup, bc_key="number"))
    assert "unknown table mapping 'SUPPLIER'" in refused(replace(link.lookup, mapping="CUSTOMER|SUPPLIER"))
    assert "twice" in refused(replace(link.lookup, mapping="CUSTOMER|CUSTOMER"))
    assert "its own table mapping" in refused(replace(link.lookup, mapping="CUSTOMER|CONTACT"))
    assert "both its bind" in refused(replace(link.lookup, target_entity_set=None))
    on_product = FieldMapping("displayName2", "description", lookup=link.lookup)
    assert "company-contact lookup maps a contact's companyNumber" in refused(None, d("ITEM-PRODUCT"), on_product)
    # JSON round trip (GET /api/mappings)
    assert M.from_json(json.loads(json.dumps(M.to_json(contact)))) == contact
    assert M.to_json(contact)["fieldMappings"][-1]["lookup"] == {
        "mapping": "CUSTOMER|VENDOR", "bcKey": "companyContact", "bindProperty": "parentcustomerid_account",
        "targetEntitySet": "accounts", "lcyIsoColumn": None, "bindKey": "parentcustomerid_account@odata.bind"}


def test_create_new_if_no_match_needs_a_direction_that_creates_dataverse_rows():
    m = replace(d("SALESPEOPLE"), create_new_if_no_match=True)
    assert "createNewIfNoMatch" in unprocessable(M.validate_table_mapping, m).message


def test_create_values_and_filters_are_validated():
    assert "not an option value" in unprocessable(
        M.validate_table_mapping, replace(d("CUSTOMER"), create_values_dataverse={"customertypecode": 42})).message
    assert "not a field" in unprocessable(
        M.validate_table_mapping, replace(d("CUSTOMER"), create_values_bc={"nosuch": 1})).message
    wrong_side = replace(d("CUSTOMER"), table_filter=d("CUSTOMER").integration_table_filter)
    assert "must be a filter on BC entity 'customer'" in unprocessable(M.validate_table_mapping, wrong_side).message
    uncanonical = replace(d("CUSTOMER"), table_filter=Filter("bc", "customer", (Condition("blocked", "eq", " "),)))
    assert "canonical" in unprocessable(M.validate_table_mapping, uncanonical).message


# --- dependency order -----------------------------------------------------------------------------------------------
def test_dependency_order_of_the_defaults():
    order = M.dependency_order(default_mappings())
    pos = {n: i for i, n in enumerate(order)}
    for first in ("SALESPEOPLE", "CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD", "UNIT OF MEASURE"):
        for later in ("CUSTOMER", "VENDOR", "ITEM-PRODUCT"):
            assert pos[first] < pos[later], (first, later)
    assert pos["CUSTOMER"] < pos["CONTACT"] and pos["VENDOR"] < pos["CONTACT"]
    assert order == M.validate_mappings(default_mappings())
    assert order[0] == "SALESPEOPLE"


def test_dependency_cycle_is_detected_and_named():
    ms = default_mappings()
    ms["CURRENCY"] = replace(ms["CURRENCY"], dependencies=("CONTACT",))
    exc = unprocessable(M.dependency_order, ms)
    assert "cycle" in exc.message
    cycle = exc.details["cycle"]
    assert cycle[0] == cycle[-1] and {"CURRENCY", "CONTACT", "CUSTOMER"} <= set(cycle)
    unprocessable(M.validate_mappings, ms)


def test_dependency_order_unknown_dependency_and_user_mappings():
    ms = default_mappings()
    ms["EXTRA"] = replace(ms["CONTACT"], name="EXTRA", dependencies=("GHOST",))
    assert "GHOST" in unprocessable(M.dependency_order, ms).message
    ms["EXTRA"] = replace(ms["CONTACT"], name="EXTRA", dependencies=("ITEM-PRODUCT",))
    assert M.dependency_order(ms)[-1] == "EXTRA"


# --- PATCH ------------------------------------------------------------------------------------------------------
def test_patch_accepts_every_table_level_setting():
    base = d("CUSTOMER")
    patched = M.apply_patch(base, {
        "direction": "ToIntegrationTable",
        "syncOnlyCoupledRecords": False,
        "updateConflictResolution": "Send Update to Integration",  # BC's AL spelling works too
        "deletionConflictResolution": "RemoveCoupling",
        "tableFilter": [{"field": "blocked", "op": "in", "value": ["_x0020_", "Ship"]}],
        "integrationTableFilter": [{"field": "customertypecode", "op": "eq", "value": 3}],
        "matchCriteria": [{"bcField": "email", "caseSensitive": True}, {"dataverseColumn": "name", "priority": 2}],
        "syncAfterMatchCoupling": True,
        "createNewIfNoMatch": True,
    }, all_names=names())
    assert patched.direction is Direction.TO_INTEGRATION_TABLE
    assert patched.sync_only_coupled_records is False
    assert patched.update_conflict_resolution is UpdateConflictResolution.SEND_UPDATE_TO_INTEGRATION
    assert patched.deletion_conflict_resolution is DeletionConflictResolution.REMOVE_COUPLING
    assert patched.table_filter.to_odata() == "(blocked eq '_x0020_' or blocked eq 'Ship')"
    assert patched.integration_table_filter.to_odata() == "customertypecode eq 3"
    assert patched.match_criteria == (MatchCriterion("email", "emailaddress1", 0, True),
                                      MatchCriterion("displayName", "name", 2, False))
    assert patched.sync_after_match_coupling and patched.create_new_if_no_match
    assert patched.field_mappings == base.field_mappings
    assert base == d("CUSTOMER") and base.sync_only_coupled_records is True  # not mutated


def test_patch_empty_body_is_a_no_op_and_filters_can_be_cleared():
    assert M.apply_patch(d("CUSTOMER"), {}) == d("CUSTOMER")
    cleared = M.apply_patch(d("CUSTOMER"), {"tableFilter": []})
    assert cleared.table_filter.is_empty and cleared.table_filter.to_odata() == ""


@pytest.mark.parametrize("patch,text", [
    ([], "JSON object"),
    ({"name": "X"}, "can't be changed"),
    ({"fieldMappings": []}, "can't be changed"),
    ({"colour": "blue"}, "Unknown setting 'colour'"),
    ({"syncOnlyCoupledRecords": "true"}, "JSON boolean"),
    ({"syncOnlyCoupledRecords": 1}, "JSON boolean"),
    ({"createNewIfNoMatch": None}, "JSON boolean"),
    ({"direction": 0}, "must be a string"),
    ({"direction": "Sideways"}, "must be one of"),
    ({"updateConflictResolution": "Overwrite"}, "must be one of"),
    ({"deletionConflictResolution": True}, "must be a string"),
    ({"tableFilter": "blocked eq '_x0020_'"}, "list of conditions"),
    ({"integrationTableFilter": [{"field": "statecode", "op": "eq", "value": "0"}]}, "expects an integer"),
    ({"matchCriteria": {"bcField": "email"}}, "must be a list"),
    ({"matchCriteria": [{"bcField": "email", "priority": "0"}]}, "'priority' must be an integer"),
    ({"matchCriteria": [{"bcField": "email", "caseSensitive": "yes"}]}, "JSON boolean"),
    ({"matchCriteria": [{"bcField": "email", "weight": 1}]}, "unknown key"),
    ({"matchCriteria": [{}]}, "bcField and/or dataverseColumn"),
    ({"matchCriteria": [{"bcField": 5}]}, "non-empty string"),
])
def test_patch_malformed_bodies_are_bad_requests(patch, text):
    assert text in bad_request(M.apply_patch, d("CUSTOMER"), patch).message


@pytest.mark.parametrize("name,patch,text", [
    ("CUSTOMER", {"tableFilter": [{"field": "nosuch", "op": "eq", "value": 1}]}, "not a field of BC entity"),
    ("CUSTOMER", {"integrationTableFilter": [{"field": "nosuch", "op": "eq", "value": 1}]}, "not a field"),
    ("CUSTOMER", {"integrationTableFilter": [{"field": "customertypecode", "op": "eq", "value": 0}]},
     "not an option value"),
    ("CUSTOMER", {"matchCriteria": [{"bcField": "nosuch"}]}, "not a field of BC entity"),
    ("CUSTOMER", {"matchCriteria": [{"dataverseColumn": "nosuch"}]}, "not a column"),
    ("CUSTOMER", {"matchCriteria": [{"bcField": "balanceDue"}]}, "not a field mapping"),
    ("CUSTOMER", {"matchCriteria": [{"bcField": "number"}]}, "disabled"),
    ("CUSTOMER", {"matchCriteria": [{"bcField": "currencyCode"}]}, "different types"),
    ("CUSTOMER", {"matchCriteria": [{"bcField": "email", "priority": -1}]}, "0 or more"),
    ("ITEM-PRODUCT", {"matchCriteria": [{"bcField": "unitCost"}]}, "several field mappings"),
    ("PAYMENT TERMS", {"direction": "Bidirectional"}, "Option mappings can only synchronize"),
    ("SALESPEOPLE", {"direction": "ToIntegrationTable"}, "'ToIntegrationTable'"),
    ("SALESPEOPLE", {"createNewIfNoMatch": True}, "createNewIfNoMatch"),
    ("PAYMENT TERMS", {"direction": "FromIntegrationTable", "createNewIfNoMatch": True}, "createNewIfNoMatch"),
])
def test_patch_settings_bc_refuses_are_unprocessable(name, patch, text):
    exc = unprocessable(M.apply_patch, d(name), patch, all_names=names())
    assert text in exc.message
    assert exc.details["mapping"] == name


def test_patch_option_mapping_direction_moves_its_field_and_create_new():
    base = d("PAYMENT TERMS")
    assert base.create_new_if_no_match
    patched = M.apply_patch(base, {"direction": "FromIntegrationTable"})
    assert patched.direction is Direction.FROM_INTEGRATION_TABLE
    assert [f.direction for f in patched.field_mappings] == [Direction.FROM_INTEGRATION_TABLE]
    assert patched.create_new_if_no_match is False
    back = M.apply_patch(patched, {"direction": "ToIntegrationTable"})
    assert [f.direction for f in back.field_mappings] == [Direction.TO_INTEGRATION_TABLE]


def test_patch_criteria_resolve_to_the_field_mapping():
    patch = {"matchCriteria": [{"bcField": "unitCost", "dataverseColumn": "standardcost"}]}
    m = M.apply_patch(d("ITEM-PRODUCT"), patch)
    assert m.match_criteria == (MatchCriterion("unitCost", "standardcost"),)
    m = M.apply_patch(d("CUSTOMER"), {"matchCriteria": []})
    assert m.match_criteria == ()


# --- overrides ----------------------------------------------------------------------------------------------------
def test_overrides_from_patch_are_canonical_and_layer_back_onto_the_defaults():
    base = d("CUSTOMER")
    patch = {"updateConflictResolution": "get update from integration",
             "matchCriteria": [{"bcField": "email"}],
             "integrationTableFilter": [{"field": "_transactioncurrencyid_value", "op": "ne", "value": GUID}]}
    patched = M.apply_patch(base, patch)
    stored = M.overrides_from_patch(patched, patch, previous={"syncOnlyCoupledRecords": False, "junk": 1})
    assert stored == {
        "syncOnlyCoupledRecords": False,
        "updateConflictResolution": "GetUpdateFromIntegration",
        "integrationTableFilter": [{"field": "transactioncurrencyid", "op": "ne", "value": GUID.lower()}],
        "matchCriteria": [{"bcField": "email", "dataverseColumn": "emailaddress1", "priority": 0,
                           "caseSensitive": False}],
    }
    json.dumps(stored)
    again = M.apply_overrides(base, json.loads(json.dumps(stored)))
    assert again == replace(patched, sync_only_coupled_records=False)


def test_overrides_store_implicit_changes():
    base = d("SHIPMENT METHOD")
    patched = M.apply_patch(base, {"direction": "FromIntegrationTable"})
    stored = M.overrides_from_patch(patched, {"direction": "FromIntegrationTable"})
    assert stored == {"direction": "FromIntegrationTable", "createNewIfNoMatch": False}
    assert M.apply_overrides(base, stored) == patched


def test_apply_overrides_ignores_what_no_longer_applies():
    base = d("CUSTOMER")
    m, ignored = M.apply_overrides_report(base, {
        "syncOnlyCoupledRecords": False,
        "direction": "Sideways",
        "integrationTableFilter": [{"field": "gone_column", "op": "eq", "value": 1}],
        "colour": "blue"})
    assert m == replace(base, sync_only_coupled_records=False)
    assert len(ignored) == 3
    assert any("'colour'" in line for line in ignored)
    assert any("'direction'" in line and "Sideways" in line for line in ignored)
    assert any("'integrationTableFilter'" in line for line in ignored)
    assert all(line.startswith("CUSTOMER:") for line in ignored)


def test_apply_overrides_together_first_then_key_by_key():
    base = d("PAYMENT TERMS")
    together = {"direction": "FromIntegrationTable", "createNewIfNoMatch": False}
    assert M.apply_overrides(base, together).direction is Direction.FROM_INTEGRATION_TABLE
    m, ignored = M.apply_overrides_report(base, {"syncOnlyCoupledRecords": False, "direction": "Bidirectional"})
    assert m == replace(base, sync_only_coupled_records=False)
    assert len(ignored) == 1 and "Option mappings" in ignored[0]


@pytest.mark.parametrize("stored", [None, {}, "garbage", ["direction"], 42])
def test_apply_overrides_never_raises_on_garbage(stored):
    m, ignored = M.apply_overrides_report(d("VENDOR"), stored)
    assert m == d("VENDOR")
    assert bool(ignored) == (stored not in (None, {}))


def test_effective_mappings_layer_stored_overrides():
    mappings, ignored = effective_mappings({"VENDOR": {"syncOnlyCoupledRecords": False},
                                            "GHOST": {"direction": "ToIntegrationTable"},
                                            "CONTACT": "nonsense"})
    assert mappings["VENDOR"].sync_only_coupled_records is False
    assert mappings["CUSTOMER"] == d("CUSTOMER")
    assert mappings["CONTACT"] == d("CONTACT")
    assert any("GHOST" in line for line in ignored) and any("CONTACT" in line for line in ignored)
    assert effective_mappings(None) == (default_mappings(), [])


# --- JSON -----------------------------------------------------------------------------------------------------------
TOP_KEYS = ["name", "bcEntitySet", "bcEntityType", "dataverseTable", "dataverseEntitySet", "dataversePrimaryId",
            "dataversePrimaryName", "dataverseModifiedOn", "optionSet", "direction", "syncOnlyCoupledRecords",
            "updateConflictResolution", "deletionConflictResolution", "tableFilter", "tableFilterOData",
            "integrationTableFilter", "integrationTableFilterOData", "matchCriteria", "syncAfterMatchCoupling",
            "createNewIfNoMatch", "createValuesBc", "createValuesDataverse", "dependencies", "webhookCapable",
            "fieldMappings"]


@pytest.mark.parametrize("name", sorted(default_mappings()))
def test_to_json_round_trip(name):
    m = d(name)
    j = M.to_json(m)
    assert list(j) == TOP_KEYS
    text = json.dumps(j)
    assert json.dumps(M.to_json(d(name))) == text  # stable
    back = M.from_json(json.loads(text))
    assert back == m
    M.validate_table_mapping(back, names())
    assert set(M.PATCHABLE_KEYS) <= set(j)


def test_to_json_shows_what_the_engine_needs():
    j = M.to_json(d("CUSTOMER"))
    assert j["tableFilterOData"] == "blocked eq '_x0020_'"
    currency = next(f for f in j["fieldMappings"] if f["bcField"] == "currencyCode")
    assert currency["lookup"] == {"mapping": "CURRENCY", "bcKey": "code", "bindProperty": "transactioncurrencyid",
                                  "targetEntitySet": "transactioncurrencies", "lcyIsoColumn": "isocurrencycode",
                                  "bindKey": "transactioncurrencyid@odata.bind"}
    assert currency["dataverseReadProperty"] == "_transactioncurrencyid_value"
    assert currency["dataverseWriteProperty"] == "transactioncurrencyid@odata.bind"
    owner = next(f for f in j["fieldMappings"] if f["dataverseColumn"] == "ownerid")
    assert owner["notNull"] and owner["direction"] == "ToIntegrationTable"
    pt = M.to_json(d("PAYMENT TERMS"))
    assert pt["optionSet"]["column"] == "paymenttermscode" and "PicklistAttributeMetadata" in pt["optionSet"][
        "metadataPath"]


@pytest.mark.parametrize("mutate", [
    lambda j: "not a dict",
    lambda j: {k: v for k, v in j.items() if k != "name"},
    lambda j: {**j, "syncOnlyCoupledRecords": "true"},
    lambda j: {**j, "fieldMappings": [{**j["fieldMappings"][0], "enabled": 1}]},
    lambda j: {**j, "matchCriteria": ["displayName"]},
    lambda j: {**j, "direction": "Up"},
])
def test_from_json_rejects_malformed(mutate):
    with pytest.raises(RequestError):
        M.from_json(mutate(M.to_json(d("CUSTOMER"))))


# --- lookups, LCY, option values, transformations, helpers -----------------------------------------------------------
def test_lcy_rule():
    assert M.is_lcy("", "USD") and M.is_lcy(None, "USD") and M.is_lcy("usd ", "USD")
    assert not M.is_lcy("EUR", "USD")
    with pytest.raises(ValueError):
        M.is_lcy("EUR", "")
    lookup = d("CUSTOMER").field_mapping("currencyCode").lookup
    assert lookup.is_lcy("", "EUR") and not lookup.is_lcy("USD", "EUR")
    assert not d("CUSTOMER").field_mapping("paymentTermsId").lookup.is_lcy("", "EUR")


def test_lookup_binding():
    owner = d("CUSTOMER").field_mapping("salespersonCode", "ownerid")
    assert owner.dataverse_write_property == "ownerid@odata.bind"
    assert owner.lookup.bind_value(GUID) == "/systemusers(6c3a7e1c-1234-4d2b-9a77-00aabbccddee)"
    uom = d("ITEM-PRODUCT").field_mapping("baseUnitOfMeasureId").lookup
    assert uom.bind_value(GUID).startswith("/uomschedules(")
    option = d("CUSTOMER").field_mapping("shipmentMethodId").lookup
    assert option.is_option and option.bind_key is None
    with pytest.raises(ValueError):
        option.bind_value(GUID)


def test_option_value_table():
    ovm = d("ITEM-PRODUCT").field_mapping("blocked", "statecode").option_values
    assert ovm.to_bc(0) is False and ovm.to_bc(1) is True and ovm.to_bc(3) is True
    assert ovm.to_dataverse(False) == 0 and ovm.to_dataverse(True) == 1
    assert "no option mapping" in unprocessable(ovm.to_bc, 9).message
    enum_map = OptionValueMap((("_x0020_", 0), ("All", 1)))
    assert enum_map.to_dataverse(" ") == 0 and enum_map.to_bc(1) == "All"
    unprocessable(enum_map.to_dataverse, "Ship")


@pytest.mark.parametrize("name,first,middle,surname", [
    ("Anna Smith", "Anna", "", "Smith"),
    ("Anna Maria Smith", "Anna", "Maria", "Smith"),
    ("Anna Maria  de Smith", "Anna Maria", "de", "Smith"),
    ("Cher", "Cher", "", ""),
    ("", "", "", ""),
])
def test_contact_name_breakdown_like_bc(name, first, middle, surname):
    contact = d("CONTACT")
    got = [contact.field_mapping("displayName", col).transform(name) for col in ("firstname", "middlename", "lastname")]
    assert got == [first, middle, surname]
    assert Transformation.SURNAME.apply(None) is None


def test_field_mappings_for_a_pass():
    to, frm = Direction.TO_INTEGRATION_TABLE, Direction.FROM_INTEGRATION_TABLE
    assert len(d("CURRENCY").field_mappings_for(to)) == 3 and d("CURRENCY").field_mappings_for(frm) == ()
    sp = d("SALESPEOPLE").field_mappings_for(frm)
    assert [f.bc_field for f in sp] == ["email", "displayName", "phoneNo"]  # disabled Bidirectional rows excluded
    customer_to = {f.dataverse_column for f in d("CUSTOMER").field_mappings_for(to)}
    assert "ownerid" in customer_to and "accountnumber" not in customer_to
    contact_from = {f.label for f in d("CONTACT").field_mappings_for(frm)}
    assert "(constant \"Person\") <- (constant \"Person\")" not in contact_from
    assert 'type <- (constant "Person")' in contact_from and "displayName <- fullname" in contact_from


def test_match_groups_and_selects():
    groups = d("CUSTOMER").match_groups()
    assert [p for p, _ in groups] == [0, 1]
    assert groups[0][1] == (MatchCriterion("displayName", "name", 0),)
    assert d("PAYMENT TERMS").dataverse_select() == ()
    sel = d("CUSTOMER").dataverse_select()
    assert sel[:2] == ("accountid", "modifiedon") and "_transactioncurrencyid_value" in sel
    assert "customertypecode" in sel and "accountnumber" not in sel
    contact = d("CONTACT").bc_select()
    assert contact[:2] == ("id", "lastModifiedDateTime") and "companyNumber" in contact
