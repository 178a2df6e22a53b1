"""Business Central's default table and field mappings, restricted to what BC API v2.0 exposes.

Source: bc-integration-semantics.md section 10 (CDS Setup Defaults / CRM Setup Defaults). Field names come from
``schema/bc-api-v2-properties.csv``, columns and option values from ``schema/dataverse-columns.json``;
``tests/unit/test_mapping_defaults_schema.py`` checks every name and value here against those files.

Where this differs from BC, and why:

* **Fields BC maps but the API doesn't expose** are left out: Customer Contact, Fax No., Shipping Agent Code,
  Primary Contact No., Mobile Phone No. (customer/vendor); Purchaser Code and Shipment Method (vendor); Pager,
  Fax No., Salutation, Currency Code, Salesperson Code (contact); Unit Volume, Gross Weight, Vendor No. / Item No.
  (item). BC's disabled extras are kept where the API has the field (SALESPEOPLE ``jobTitle``, ``email2``; customer
  and vendor ``number -> accountnumber``). No SHIPPING AGENT or RESOURCE-PRODUCT mapping (no entity set in the API).
* **Contact names**: the API has ``displayName`` only (no First/Middle/Surname). To Dataverse it is split exactly as
  BC's ``Contact.NameBreakdown`` does (transformations FirstName / MiddleName / Surname into ``firstname`` /
  ``middlename`` / ``lastname``); from Dataverse, ``fullname`` (read-only, computed from those) fills it.
* **Ownership model = Person**: ``salespersonCode -> ownerid`` (through SALESPEOPLE, Not Null) is enabled, and the
  SALESPEOPLE mapping exists, as in BC's Person model. A blank salesperson writes nothing (Not Null); a salesperson
  that isn't coupled fails the record, as BC does ("... must be coupled to a Dataverse row"): couple salespeople
  first (SALESPEOPLE has an e-mail match criterion for match-based coupling). ``owneridtype`` needs no constant:
  the Web API binds ``ownerid@odata.bind`` to ``/systemusers(<id>)``.
* **Company filter**: BC's integration filters also test ``bcbi_companyid`` (a lookup to ``cdm_company``, which the
  emulator doesn't model); the defaults leave it out - a known simplification. A single BC company per Dataverse
  environment is assumed.
* **CONTACT's company link** (BC does it in event subscribers, not with a field mapping): here it is the field
  mapping ``companyNumber <-> parentcustomerid``, a *company-contact lookup* through CUSTOMER then VENDOR (see
  ``Lookup``). To: the account coupled to the customer (else the vendor) the contact's company has a business
  relation with, written as ``parentcustomerid_account@odata.bind``; else BC's "The contact <No.> must have a contact
  company that has a business relation to a customer or vendor.". From: the company contact of the customer (else
  vendor) coupled to ``parentcustomerid``; else "The contact cannot be synchronized because the company does not
  exist.". The BC API exposes business relations only through ``customers/vendors({id})/contactsInformation``, which
  ``sync.lookups`` reads in bulk. BC's integration filter on ``parentcustomerid`` / ``parentcustomeridtype`` is not
  a default filter (``parentcustomeridtype`` isn't in the schema): a coupled contact without an account parent fails
  From with the message above; the filter here is ``statecode = 0``. BC's scheduled To pass *ignores* contacts
  whose company has no customer / vendor relation (a query post-filter) and fills an empty ``parentcustomerid`` of
  unchanged contacts (a separate job); here such contacts fail like any failed lookup, and an unchanged contact gets
  its parent at its next change or Synchronize Now.
* **Match criteria**: BC pre-sets them only for CURRENCY (code <-> isocurrencycode) and the option mappings (code <->
  option label). Match-based coupling is a headline feature here, so the defaults add: CUSTOMER and VENDOR
  ``displayName <-> name`` (priority 0) then ``phoneNumber <-> telephone1`` (priority 1); CONTACT ``email <->
  emailaddress1`` then ``displayName <-> fullname``; ITEM-PRODUCT ``number <-> productnumber``; SALESPEOPLE
  ``email <-> internalemailaddress``; UNIT OF MEASURE ``code <-> name``. All case-insensitive.
* **Option mappings** (PAYMENT TERMS, SHIPMENT METHOD) use the upgraded BC configuration: table and field direction
  ToIntegrationTable, Synch. Only Coupled Records true.
* **UNIT OF MEASURE** names the unit group after the code (BC prefixes "NAV ") and writes ``code`` to ``baseuomname``
  (create-only column) as BC does; only active unit groups are considered (BC errors on inactive ones).

Left to the engine (behaviour, not data): currency ``exchangerate`` / ``currencyprecision``; product
``defaultuomid``, ``transactioncurrencyid`` = LCY, price list and ``statecode`` on insert; new salespeople's codes
(``SP NO. 00001``); account inactive -> customer Blocked = All. (Contacts' company link is a field mapping, above.)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from .mappings import (BC, DATAVERSE, Direction, FieldMapping, Filter, Lookup, MatchCriterion, OptionSet,
                       OptionValueMap, TableMapping, Transformation, apply_overrides_report)

__all__ = [
    "CUSTOMER", "VENDOR", "CONTACT", "CURRENCY", "SALESPEOPLE", "ITEM_PRODUCT", "UNIT_OF_MEASURE", "PAYMENT_TERMS",
    "SHIPMENT_METHOD", "MAPPING_NAMES", "BC_WEBHOOK_ENTITY_SETS", "default_mappings", "effective_mappings",
]

CUSTOMER = "CUSTOMER"
VENDOR = "VENDOR"
CONTACT = "CONTACT"
CURRENCY = "CURRENCY"
SALESPEOPLE = "SALESPEOPLE"
ITEM_PRODUCT = "ITEM-PRODUCT"
UNIT_OF_MEASURE = "UNIT OF MEASURE"
PAYMENT_TERMS = "PAYMENT TERMS"
SHIPMENT_METHOD = "SHIPMENT METHOD"
MAPPING_NAMES = (SALESPEOPLE, CURRENCY, PAYMENT_TERMS, SHIPMENT_METHOD, UNIT_OF_MEASURE, CUSTOMER, VENDOR, CONTACT,
                 ITEM_PRODUCT)

BC_WEBHOOK_ENTITY_SETS = frozenset({
    "customers", "vendors", "items", "currencies", "unitsOfMeasure", "paymentTerms", "shipmentMethods",
    "paymentMethods", "countriesRegions", "itemCategories"})
"""BC API v2.0 entity sets that accept webhook subscriptions (apis.md C2/C10): not contacts nor
salespeoplePurchasers."""

BI = Direction.BIDIRECTIONAL
TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

_CURRENCY_LOOKUP = Lookup(CURRENCY, bc_key="code", bind_property="transactioncurrencyid",
                          target_entity_set="transactioncurrencies", lcy_iso_column="isocurrencycode")
_SALESPERSON_LOOKUP = Lookup(SALESPEOPLE, bc_key="code", bind_property="ownerid", target_entity_set="systemusers")
_PAYMENT_TERMS_LOOKUP = Lookup(PAYMENT_TERMS, bc_key="id")
_SHIPMENT_METHOD_LOOKUP = Lookup(SHIPMENT_METHOD, bc_key="id")
_UOM_LOOKUP = Lookup(UNIT_OF_MEASURE, bc_key="id", bind_property="defaultuomscheduleid",
                     target_entity_set="uomschedules")
_COMPANY_LOOKUP = Lookup(f"{CUSTOMER}|{VENDOR}", bc_key=Lookup.COMPANY_CONTACT,
                         bind_property="parentcustomerid_account", target_entity_set="accounts")
"""A contact's company <-> its ``parentcustomerid`` account, through the customer / vendor couplings."""


def _filter(service: str, entity: str, conditions: list[dict]) -> Filter:
    return Filter.from_json(conditions, service=service, entity=entity, key="default filter")


def _fm(bc: str | None, dv: str | None, direction: Direction = BI, **kw: Any) -> FieldMapping:
    return FieldMapping(bc, dv, direction, **kw)


def _account_fields() -> list[FieldMapping]:
    """Fields CUSTOMER and VENDOR share (section 10.2/10.3, those the API exposes)."""
    return [
        _fm("displayName", "name"),
        _fm("addressLine1", "address1_line1"),
        _fm("addressLine2", "address1_line2"),
        _fm("postalCode", "address1_postalcode"),
        _fm("city", "address1_city"),
        _fm("country", "address1_country"),
        _fm("state", "address1_stateorprovince"),
        _fm("currencyCode", "transactioncurrencyid", lookup=_CURRENCY_LOOKUP),
        _fm("email", "emailaddress1"),
        _fm("website", "websiteurl"),
        _fm("phoneNumber", "telephone1"),
        _fm("paymentTermsId", "paymenttermscode", lookup=_PAYMENT_TERMS_LOOKUP),
    ]


_ACCOUNT_MATCH = (MatchCriterion("displayName", "name", 0), MatchCriterion("phoneNumber", "telephone1", 1))
_ACCOUNT_DEPENDENCIES = (SALESPEOPLE, CURRENCY, PAYMENT_TERMS, SHIPMENT_METHOD)


def _account_mapping(name: str, bc_set: str, bc_type: str, customertypecode: int,
                     fields: list[FieldMapping]) -> TableMapping:
    return TableMapping(
        name=name, bc_entity_set=bc_set, bc_entity_type=bc_type,
        dataverse_table="account", dataverse_entity_set="accounts", dataverse_primary_id="accountid",
        dataverse_primary_name="name", direction=BI, field_mappings=tuple(fields),
        table_filter=_filter(BC, bc_type, [{"field": "blocked", "op": "eq", "value": "_x0020_"}]),
        integration_table_filter=_filter(DATAVERSE, "account", [
            {"field": "statecode", "op": "eq", "value": 0},
            {"field": "customertypecode", "op": "eq", "value": customertypecode}]),
        dependencies=_ACCOUNT_DEPENDENCIES, match_criteria=_ACCOUNT_MATCH,
        create_values_dataverse={"customertypecode": customertypecode},
        webhook_capable=bc_set in BC_WEBHOOK_ENTITY_SETS)


def _customer() -> TableMapping:
    fields = [_fm("salespersonCode", "ownerid", TO, lookup=_SALESPERSON_LOOKUP, not_null=True)]
    fields += _account_fields()
    fields += [
        _fm("shipmentMethodId", "address1_freighttermscode", lookup=_SHIPMENT_METHOD_LOOKUP),
        _fm("creditLimit", "creditlimit", TO),
        _fm("number", "accountnumber", TO, enabled=False),
    ]
    return _account_mapping(CUSTOMER, "customers", "customer", 3, fields)


def _vendor() -> TableMapping:
    fields = _account_fields() + [_fm("number", "accountnumber", TO, enabled=False)]
    return _account_mapping(VENDOR, "vendors", "vendor", 11, fields)


def _contact() -> TableMapping:
    fields = [
        _fm("displayName", "firstname", TO, transformation=Transformation.FIRST_NAME),
        _fm("displayName", "middlename", TO, transformation=Transformation.MIDDLE_NAME),
        _fm("displayName", "lastname", TO, transformation=Transformation.SURNAME),
        _fm("displayName", "fullname", FROM),
        _fm("addressLine1", "address1_line1"),
        _fm("addressLine2", "address1_line2"),
        _fm("postalCode", "address1_postalcode"),
        _fm("city", "address1_city"),
        _fm("country", "address1_country"),
        _fm("state", "address1_stateorprovince"),
        _fm("email", "emailaddress1"),
        _fm("website", "websiteurl"),
        _fm("mobilePhoneNumber", "mobilephone"),
        _fm("phoneNumber", "telephone1"),
        _fm("type", None, FROM, constant="Person"),
        _fm("companyNumber", "parentcustomerid", lookup=_COMPANY_LOOKUP),
    ]
    return TableMapping(
        name=CONTACT, bc_entity_set="contacts", bc_entity_type="contact",
        dataverse_table="contact", dataverse_entity_set="contacts", dataverse_primary_id="contactid",
        dataverse_primary_name="fullname", direction=BI, field_mappings=tuple(fields),
        table_filter=_filter(BC, "contact", [{"field": "type", "op": "eq", "value": "Person"},
                                             {"field": "companyNumber", "op": "ne", "value": ""}]),
        integration_table_filter=_filter(DATAVERSE, "contact", [{"field": "statecode", "op": "eq", "value": 0}]),
        dependencies=(CUSTOMER, VENDOR),
        match_criteria=(MatchCriterion("email", "emailaddress1", 0), MatchCriterion("displayName", "fullname", 1)),
        webhook_capable="contacts" in BC_WEBHOOK_ENTITY_SETS)


def _currency() -> TableMapping:
    return TableMapping(
        name=CURRENCY, bc_entity_set="currencies", bc_entity_type="currency",
        dataverse_table="transactioncurrency", dataverse_entity_set="transactioncurrencies",
        dataverse_primary_id="transactioncurrencyid", dataverse_primary_name="currencyname", direction=TO,
        field_mappings=(_fm("code", "isocurrencycode", TO), _fm("symbol", "currencysymbol", TO),
                        _fm("displayName", "currencyname", TO)),
        match_criteria=(MatchCriterion("code", "isocurrencycode", 0),),
        sync_after_match_coupling=True, create_new_if_no_match=True,
        webhook_capable="currencies" in BC_WEBHOOK_ENTITY_SETS)


def _salespeople() -> TableMapping:
    return TableMapping(
        name=SALESPEOPLE, bc_entity_set="salespeoplePurchasers", bc_entity_type="salespersonPurchaser",
        dataverse_table="systemuser", dataverse_entity_set="systemusers", dataverse_primary_id="systemuserid",
        dataverse_primary_name="fullname", direction=FROM,
        field_mappings=(
            _fm("email", "internalemailaddress", FROM),
            _fm("displayName", "fullname", FROM),
            _fm("phoneNo", "mobilephone", FROM),
            _fm("jobTitle", "jobtitle", BI, enabled=False),
            _fm("email2", "personalemailaddress", BI, enabled=False),
        ),
        integration_table_filter=_filter(DATAVERSE, "systemuser", [
            {"field": "isdisabled", "op": "eq", "value": False},
            {"field": "islicensed", "op": "eq", "value": True},
            {"field": "isintegrationuser", "op": "eq", "value": False}]),
        match_criteria=(MatchCriterion("email", "internalemailaddress", 0),),
        webhook_capable="salespeoplePurchasers" in BC_WEBHOOK_ENTITY_SETS)


def _option_mapping(name: str, bc_set: str, bc_type: str, column: str) -> TableMapping:
    return TableMapping(
        name=name, bc_entity_set=bc_set, bc_entity_type=bc_type,
        dataverse_table="account", dataverse_entity_set="accounts", dataverse_primary_id=column,
        dataverse_primary_name=None, dataverse_modified_on=None, option_set=OptionSet("account", column),
        direction=TO, field_mappings=(_fm("code", column, TO),),
        match_criteria=(MatchCriterion("code", column, 0),),
        sync_after_match_coupling=True, create_new_if_no_match=True,
        webhook_capable=bc_set in BC_WEBHOOK_ENTITY_SETS)


def _unit_of_measure() -> TableMapping:
    return TableMapping(
        name=UNIT_OF_MEASURE, bc_entity_set="unitsOfMeasure", bc_entity_type="unitOfMeasure",
        dataverse_table="uomschedule", dataverse_entity_set="uomschedules", dataverse_primary_id="uomscheduleid",
        dataverse_primary_name="name", direction=TO,
        field_mappings=(_fm("code", "name", TO), _fm("code", "baseuomname", TO)),
        integration_table_filter=_filter(DATAVERSE, "uomschedule", [{"field": "statecode", "op": "eq", "value": 0}]),
        match_criteria=(MatchCriterion("code", "name", 0),),
        sync_after_match_coupling=True, create_new_if_no_match=True,
        webhook_capable="unitsOfMeasure" in BC_WEBHOOK_ENTITY_SETS)


def _item_product() -> TableMapping:
    return TableMapping(
        name=ITEM_PRODUCT, bc_entity_set="items", bc_entity_type="item",
        dataverse_table="product", dataverse_entity_set="products", dataverse_primary_id="productid",
        dataverse_primary_name="name", direction=BI,
        field_mappings=(
            _fm("number", "productnumber", TO),
            _fm("displayName", "name"),
            _fm("unitPrice", "price", TO),
            _fm("unitCost", "standardcost", TO),
            _fm("unitCost", "currentcost", TO),
            _fm("inventory", "quantityonhand", TO),
            _fm("baseUnitOfMeasureId", "defaultuomscheduleid", lookup=_UOM_LOOKUP),
            # BC: Item.Blocked := product statecode <> Active (From only).
            _fm("blocked", "statecode", FROM,
                option_values=OptionValueMap(((False, 0), (True, 1), (True, 2), (True, 3)))),
        ),
        table_filter=_filter(BC, "item", [{"field": "blocked", "op": "eq", "value": False}]),
        integration_table_filter=_filter(DATAVERSE, "product", [
            {"field": "producttypecode", "op": "eq", "value": 1},
            {"field": "statecode", "op": "eq", "value": 0}]),
        dependencies=(UNIT_OF_MEASURE,),
        match_criteria=(MatchCriterion("number", "productnumber", 0),),
        create_values_dataverse={"producttypecode": 1},
        webhook_capable="items" in BC_WEBHOOK_ENTITY_SETS)


@lru_cache(maxsize=1)
def _defaults() -> tuple[TableMapping, ...]:
    return (_salespeople(), _currency(),
            _option_mapping(PAYMENT_TERMS, "paymentTerms", "paymentTerm", "paymenttermscode"),
            _option_mapping(SHIPMENT_METHOD, "shipmentMethods", "shipmentMethod", "address1_freighttermscode"),
            _unit_of_measure(), _customer(), _vendor(), _contact(), _item_product())


def default_mappings() -> dict[str, TableMapping]:
    """The default table mappings by name (a new dict each call; the mappings themselves are immutable)."""
    return {m.name: m for m in _defaults()}


def effective_mappings(stored_overrides: Mapping[str, Any] | None) -> tuple[dict[str, TableMapping], list[str]]:
    """Defaults with each mapping's stored overrides (``{name: {setting: value}}``) layered on.

    Never raises: overrides for unknown mappings, unknown settings and values that no longer validate are ignored
    and reported (one log-friendly line each).
    """
    mappings = default_mappings()
    ignored: list[str] = []
    stored = stored_overrides or {}
    if not isinstance(stored, Mapping):
        return mappings, [f"stored overrides are not a JSON object ({type(stored).__name__}); ignored"]
    for name, overrides in stored.items():
        if name not in mappings:
            ignored.append(f"overrides for unknown table mapping '{name}' ignored")
            continue
        mappings[name], lines = apply_overrides_report(mappings[name], overrides, all_names=mappings.keys())
        ignored.extend(lines)
    return mappings, ignored
