"""Metadata of the emulated Dataverse tables: columns, navigation properties, keys, states, requirements.

Built from ``dataverse_columns.TABLES`` (reference schema) plus a few small tables the sync touches only
through lookups (teams, businessunits, cdm_companies) and ``tasks`` (used by Microsoft's documented ``$batch``
example). Everything here is pure data; the emulator (``dataverse.py``) interprets it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulators.dataverse_columns import TABLES as _GENERATED

LOOKUP_TYPES = frozenset({"Lookup", "Customer", "Owner"})
OPTION_TYPES = frozenset({"Picklist", "State", "Status"})
STRING_TYPES = frozenset({"String", "Memo"})
NUMBER_TYPES = frozenset({"Integer", "BigInt", "Money", "Decimal", "Double"})

EDM_TYPES = {
    "String": "Edm.String", "Memo": "Edm.String", "Integer": "Edm.Int32", "BigInt": "Edm.Int64",
    "Picklist": "Edm.Int32", "State": "Edm.Int32", "Status": "Edm.Int32", "Money": "Edm.Decimal",
    "Decimal": "Edm.Decimal", "Double": "Edm.Double", "Boolean": "Edm.Boolean", "DateTime": "Edm.DateTimeOffset",
    "Uniqueidentifier": "Edm.Guid", "Lookup": "Edm.Guid", "Customer": "Edm.Guid", "Owner": "Edm.Guid",
}
MEMO_DEFAULT_MAX = 1_048_576


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    max_length: int | None = None
    access: str | None = None
    """``None`` = read/write; ``"Read"`` = read-only (ignored on write); ``"Insert"`` = create only; ``"Modify"``."""
    options: dict[int, str] | None = None
    targets: tuple[str, ...] | None = None

    @property
    def is_lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def edm(self) -> str:
        return EDM_TYPES[self.type]

    @property
    def api_name(self) -> str:
        """The property name in Web API JSON (``_x_value`` for lookups)."""
        return f"_{self.name}_value" if self.is_lookup else self.name

    @property
    def writable_on_create(self) -> bool:
        return self.access in (None, "Insert", "Modify")

    @property
    def writable_on_update(self) -> bool:
        return self.access in (None, "Modify")


@dataclass(frozen=True)
class Nav:
    """A single-valued navigation property usable with ``@odata.bind``."""

    name: str
    column: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class CollectionNav:
    """A one-to-many navigation property (``accounts(<id>)/Account_Tasks``)."""

    name: str
    child: str
    """Logical name of the referencing table."""
    column: str
    """Lookup column of the child that points back."""


@dataclass
class Table:
    logical: str
    set: str
    pk: str
    primary_name: str
    ownership: str
    columns: dict[str, Column]
    navs: dict[str, Nav] = field(default_factory=dict)
    collections: dict[str, CollectionNav] = field(default_factory=dict)
    by_api_name: dict[str, Column] = field(default_factory=dict)
    state_of_status: dict[int, int] = field(default_factory=dict)
    default_status: dict[int, int] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    alternate_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cascade: frozenset[str] = frozenset()
    """Lookup columns whose referenced row's deletion deletes this row (parental); others are cleared."""

    @property
    def odata_type(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical}"


_STD = {
    "createdon": ("DateTime", None, "Read", None, None),
    "modifiedon": ("DateTime", None, "Read", None, None),
    "createdby": ("Lookup", None, "Read", None, ("systemuser",)),
    "modifiedby": ("Lookup", None, "Read", None, ("systemuser",)),
    "createdonbehalfby": ("Lookup", None, "Read", None, ("systemuser",)),
    "modifiedonbehalfby": ("Lookup", None, "Read", None, ("systemuser",)),
    "versionnumber": ("BigInt", None, "Read", None, None),
}
_ACTIVE = {0: "Active", 1: "Inactive"}
_ACTIVE_STATUS = {1: "Active", 2: "Inactive"}

_EXTRA: dict = {
    "team": {"set": "teams", "pk": "teamid", "primary_name": "name", "ownership": "business", "columns": {
        "teamid": ("Uniqueidentifier", None, "Insert", None, None),
        "name": ("String", 160, None, None, None),
        "teamtype": ("Picklist", None, None, {0: "Owner", 1: "Access", 2: "Security Group", 3: "Office Group"}, None),
        "businessunitid": ("Lookup", None, None, None, ("businessunit",)),
        "isdefault": ("Boolean", None, "Read", None, None),
        "description": ("Memo", 2000, None, None, None),
        "azureactivedirectoryobjectid": ("Uniqueidentifier", None, None, None, None),
        **_STD}},
    "businessunit": {"set": "businessunits", "pk": "businessunitid", "primary_name": "name",
                     "ownership": "business", "columns": {
        "businessunitid": ("Uniqueidentifier", None, "Insert", None, None),
        "name": ("String", 160, None, None, None),
        "parentbusinessunitid": ("Lookup", None, None, None, ("businessunit",)),
        "isdisabled": ("Boolean", None, "Read", None, None),
        **_STD}},
    "cdm_company": {"set": "cdm_companies", "pk": "cdm_companyid", "primary_name": "cdm_name",
                    "ownership": "organization", "columns": {
        "cdm_companyid": ("Uniqueidentifier", None, "Insert", None, None),
        "cdm_name": ("String", 100, None, None, None),
        "cdm_companycode": ("String", 10, None, None, None),
        "statecode": ("State", None, "Modify", dict(_ACTIVE), None),
        "statuscode": ("Status", None, None, dict(_ACTIVE_STATUS), None),
        **_STD}},
    "task": {"set": "tasks", "pk": "activityid", "primary_name": "subject", "ownership": "user", "columns": {
        "activityid": ("Uniqueidentifier", None, "Insert", None, None),
        "subject": ("String", 200, None, None, None),
        "description": ("Memo", 2000, None, None, None),
        "scheduledend": ("DateTime", None, None, None, None),
        "prioritycode": ("Picklist", None, None, {0: "Low", 1: "Normal", 2: "High"}, None),
        "regardingobjectid": ("Lookup", None, None, None, ("account", "contact")),
        "ownerid": ("Owner", None, None, None, ("systemuser", "team")),
        "owninguser": ("Lookup", None, "Read", None, ("systemuser",)),
        "owningteam": ("Lookup", None, "Read", None, ("team",)),
        "owningbusinessunit": ("Lookup", None, "Read", None, ("businessunit",)),
        "statecode": ("State", None, "Modify", {0: "Open", 1: "Completed", 2: "Canceled"}, None),
        "statuscode": ("Status", None, None, {2: "Not Started", 3: "In Progress", 4: "Waiting on someone else",
                                              7: "Deferred", 5: "Completed", 6: "Canceled"}, None),
        **_STD}},
}

# Status reason -> state (from the CDM option lists "1=Active (state 0); 2=Inactive (state 1)").
_STATUS_STATE = {
    "product": {1: 0, 2: 1, 0: 2, 3: 3},
    "task": {2: 0, 3: 0, 4: 0, 7: 0, 5: 1, 6: 2},
}
_DEFAULT_STATUS = {
    "product": {0: 1, 1: 2, 2: 0, 3: 3},
    "task": {0: 2, 1: 5, 2: 6},
}

# Columns enforced on create (ApplicationRequired/SystemRequired columns the emulator checks; see report).
_REQUIRED = {
    "account": ("name",),
    "contact": ("lastname",),
    "product": ("name", "productnumber", "defaultuomscheduleid", "defaultuomid"),
    "transactioncurrency": ("currencyname", "isocurrencycode", "exchangerate"),
    "uomschedule": ("name", "baseuomname"),
    "uom": ("name", "uomscheduleid"),
    "systemuser": ("lastname",),
    "team": ("name",),
    "businessunit": ("name",),
    "cdm_company": ("cdm_name",),
    "task": ("subject",),
}

DEFAULT_ALTERNATE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "account": {"accountnumber": ("accountnumber",)},
    "product": {"productnumber": ("productnumber",)},
    "transactioncurrency": {"isocurrencycode": ("isocurrencycode",)},
}
"""Alternate keys defined in the emulated org (logical key name -> columns)."""

# Custom (publisher-prefixed) lookups have SchemaName-cased navigation properties.
_CUSTOM_NAV_NAMES = {"bcbi_companyid": "bcbi_CompanyId", "nav_accountstatisticsid": "nav_AccountStatisticsId"}

_CASCADE = {"contact": {"parentcustomerid"}, "uom": {"uomscheduleid"}, "task": {"regardingobjectid"}}

_COLLECTIONS = {
    "account": [("contact_customer_accounts", "contact", "parentcustomerid"),
                ("Account_Tasks", "task", "regardingobjectid")],
    "contact": [("contact_customer_contacts", "contact", "parentcustomerid"),
                ("Contact_Tasks", "task", "regardingobjectid")],
    "uomschedule": [("UnitOfMeasureSchedule_UnitOfMeasure", "uom", "uomscheduleid")],
}


def _nav_names(table: str, col: Column) -> list[Nav]:
    if col.type == "Customer":
        return [Nav(f"{col.name}_{t}", col.name, (t,)) for t in col.targets or ()]
    if col.name == "regardingobjectid":
        return [Nav(f"{col.name}_{t}_{table}", col.name, (t,)) for t in col.targets or ()]
    name = _CUSTOM_NAV_NAMES.get(col.name, col.name)
    return [Nav(name, col.name, tuple(col.targets or ()))]


def build_tables(alternate_keys: dict[str, dict[str, tuple[str, ...]]] | None = None) -> dict[str, Table]:
    """All emulated tables by logical name (fresh objects: an emulator may define its own keys)."""
    keys = DEFAULT_ALTERNATE_KEYS if alternate_keys is None else alternate_keys
    tables: dict[str, Table] = {}
    for logical, spec in {**_GENERATED, **_EXTRA}.items():
        cols = {n: Column(n, *t) for n, t in spec["columns"].items()}
        t = Table(logical, spec["set"], spec["pk"], spec["primary_name"], spec["ownership"], cols)
        for col in cols.values():
            t.by_api_name[col.api_name] = col
            if col.is_lookup:
                for nav in _nav_names(logical, col):
                    t.navs[nav.name] = nav
        if "statuscode" in cols:
            t.state_of_status = dict(_STATUS_STATE.get(logical, {1: 0, 2: 1}))
            t.default_status = dict(_DEFAULT_STATUS.get(logical, {0: 1, 1: 2}))
        t.required = _REQUIRED.get(logical, ())
        t.alternate_keys = {k: tuple(v) for k, v in keys.get(logical, {}).items()}
        t.cascade = frozenset(_CASCADE.get(logical, ()))
        tables[logical] = t
    for logical, rels in _COLLECTIONS.items():
        for name, child, column in rels:
            tables[logical].collections[name] = CollectionNav(name, child, column)
    for t in tables.values():
        for k, cols in t.alternate_keys.items():
            for c in cols:
                if c not in t.columns:
                    raise ValueError(f"alternate key {t.logical}.{k}: unknown column {c}")
    return tables


class Ref(tuple):
    """A stored lookup value: ``(logical_name, id)`` of the referenced row."""

    __slots__ = ()

    def __new__(cls, logical: str, id: str):  # noqa: A002 - Dataverse vocabulary
        return tuple.__new__(cls, (logical, id))

    @property
    def logical(self) -> str:
        return self[0]

    @property
    def id(self) -> str:
        return self[1]
