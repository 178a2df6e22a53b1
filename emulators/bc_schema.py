"""Entity types of the emulated Business Central API v2.0: properties in the order of the real ``$metadata``.

Names, Edm types, nullability and max lengths come from the BC 26.0 ``$metadata`` condensed in
``reference/schema/bc-api-v2-properties.csv`` (enums from ``bc-api-v2-enums.csv``); which properties are
read-only, which are ``Code`` fields (stored upper-case by BC) and each set's key and number series follow
apis.md C3. Pure data, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
BLANK_DATE = "0001-01-01"
"""How BC serializes an empty Date."""

# Enum members as the API spells them (JSON names, ``_x0020_`` = space, ``_x002D_`` = hyphen), in ordinal order.
ENUMS: dict[str, tuple[tuple[str, int], ...]] = {
    "contactType": (("Company", 0), ("Person", 1)),
    "customerBlocked": (("_x0020_", 0), ("Ship", 1), ("Invoice", 2), ("All", 3)),
    "vendorBlocked": (("_x0020_", 0), ("Payment", 1), ("All", 2)),
    "itemType": (("Inventory", 0), ("Service", 1), ("Non_x002D_Inventory", 2)),
    "contactBusinessRelation": (("_x0020_", 0), ("Customer", 1), ("Vendor", 2), ("Bank_x0020_Account", 3),
                                ("Employee", 4), ("None", 100), ("Other", 101), ("Multiple", 102)),
    "contactBusinessRelationLinkToTable": (("_x0020_", 0), ("Customer", 1), ("Vendor", 2),
                                           ("Bank_x0020_Account", 3), ("Employee", 4)),
}


def decode_member(name: str) -> str:
    """``Non_x002D_Inventory`` -> ``Non-Inventory``, ``_x0020_`` -> `` `` (the AL option caption)."""
    out, i = [], 0
    while i < len(name):
        if name.startswith("_x", i) and i + 7 <= len(name) and name[i + 6] == "_":
            try:
                out.append(chr(int(name[i + 2:i + 6], 16)))
                i += 7
                continue
            except ValueError:
                pass
        out.append(name[i])
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class Prop:
    name: str
    type: str
    """``Edm.String``, ``Edm.Guid``, ``Edm.Decimal``, ``Edm.Boolean``, ``Edm.Date``, ``Edm.DateTimeOffset``,
    ``Edm.Int64`` or an enum name of ``ENUMS``."""
    max_length: int | None = None
    nullable: bool = True
    read_only: bool = False
    code: bool = False
    """A BC ``Code`` field: stored upper-case."""

    @property
    def edm(self) -> str:
        return self.type if self.type.startswith("Edm.") else f"Microsoft.NAV.{self.type}"

    @property
    def members(self) -> tuple[tuple[str, int], ...] | None:
        return ENUMS.get(self.type)


@dataclass(frozen=True)
class NumberSeries:
    prefix: str
    start: int
    increment: int
    width: int

    def format(self, n: int) -> str:
        return f"{self.prefix}{n:0{self.width}d}"


@dataclass(frozen=True)
class EntitySpec:
    entity_set: str
    entity_type: str
    table_caption: str
    """The AL table caption used in messages (``The Customer already exists. ...``)."""
    key: str
    """The BC primary key as an API property (``number`` or ``code``): unique, default sort order."""
    key_caption: str
    props: tuple[Prop, ...]
    series: NumberSeries | None = None
    name_required: bool = False
    """``displayName`` must be given on insert and can't be blanked."""
    company_scoped: bool = True
    writable: bool = True
    defaults: dict = field(default_factory=dict)
    id_field: str = "id"
    """The OData key (``ODataKeyFields``): ``id`` (SystemId) everywhere but contactInformation (``contactId``)."""
    by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "by_name", {p.name: p for p in self.props})

    @property
    def qualified_type(self) -> str:
        return f"Microsoft.NAV.{self.entity_type}"

    def blank_record(self) -> dict:
        """Field values of a new record before anything is set (what BC's ``Init`` gives)."""
        out = {}
        for p in self.props:
            if p.name in self.defaults:
                out[p.name] = self.defaults[p.name]
            elif p.type == "Edm.String":
                out[p.name] = ""
            elif p.type == "Edm.Guid":
                out[p.name] = ZERO_GUID
            elif p.type in ("Edm.Decimal", "Edm.Int64"):
                out[p.name] = 0
            elif p.type == "Edm.Boolean":
                out[p.name] = False
            elif p.type == "Edm.Date":
                out[p.name] = BLANK_DATE
            elif p.type == "Edm.DateTimeOffset":
                out[p.name] = None
            elif p.members:
                out[p.name] = p.members[0][0]
            else:  # pragma: no cover - schema error
                raise ValueError(p)
        return out


def _p(name, type_="Edm.String", max_length=None, *, nullable=True, ro=False, code=False) -> Prop:
    return Prop(name, type_, max_length, nullable, ro, code)


S, G, D, B = "Edm.String", "Edm.Guid", "Edm.Decimal", "Edm.Boolean"
DTO, DATE = "Edm.DateTimeOffset", "Edm.Date"


def _id() -> Prop:
    return _p("id", G, nullable=False, ro=True)


def _modified() -> Prop:
    return _p("lastModifiedDateTime", DTO, ro=True)


CUSTOMER = EntitySpec(
    "customers", "customer", "Customer", "number", "No.",
    (
        _id(), _p("number", S, 20, code=True), _p("displayName", S, 100, nullable=False),
        _p("type", "contactType"), _p("addressLine1", S, 100), _p("addressLine2", S, 50), _p("city", S, 30),
        _p("state", S, 30), _p("country", S, 10, code=True), _p("postalCode", S, 20, code=True),
        _p("phoneNumber", S, 30), _p("email", S, 80), _p("website", S, 80),
        _p("salespersonCode", S, 20, code=True), _p("balanceDue", D, ro=True), _p("creditLimit", D),
        _p("taxLiable", B), _p("taxAreaId", G), _p("taxAreaDisplayName", S, ro=True),
        _p("taxRegistrationNumber", S), _p("currencyId", G), _p("currencyCode", S, code=True),
        _p("paymentTermsId", G), _p("shipmentMethodId", G), _p("paymentMethodId", G),
        _p("blocked", "customerBlocked"), _modified(),
    ),
    series=NumberSeries("C", 10, 10, 5), name_required=True,
)

VENDOR = EntitySpec(
    "vendors", "vendor", "Vendor", "number", "No.",
    (
        _id(), _p("number", S, 20, code=True), _p("displayName", S, 100), _p("addressLine1", S, 100),
        _p("addressLine2", S, 50), _p("city", S, 30), _p("state", S, 30), _p("country", S, 10, code=True),
        _p("postalCode", S, 20, code=True), _p("phoneNumber", S, 30), _p("email", S, 80), _p("website", S, 80),
        _p("taxRegistrationNumber", S), _p("currencyId", G), _p("currencyCode", S, code=True),
        _p("irs1099Code", S, code=True), _p("paymentTermsId", G), _p("paymentMethodId", G), _p("taxLiable", B),
        _p("blocked", "vendorBlocked"), _p("balance", D, ro=True), _modified(),
    ),
    series=NumberSeries("V", 10, 10, 5), name_required=True,
)

CONTACT = EntitySpec(
    "contacts", "contact", "Contact", "number", "No.",
    (
        _id(), _p("number", S, 20, code=True), _p("type", "contactType"),
        _p("displayName", S, 100, nullable=False), _p("jobTitle", S, 30, nullable=False),
        _p("companyNumber", S, 20, code=True), _p("companyName", S, 100),
        _p("contactBusinessRelation", "contactBusinessRelation", ro=True), _p("addressLine1", S, 100),
        _p("addressLine2", S, 50), _p("city", S, 30), _p("state", S, 30), _p("country", S, 10, code=True),
        _p("postalCode", S, 20, code=True), _p("phoneNumber", S, 30), _p("mobilePhoneNumber", S, 30),
        _p("email", S, 80), _p("website", S, 80), _p("searchName", S, 100, code=True),
        _p("privacyBlocked", B), _p("taxRegistrationNumber", S), _p("lastInteractionDate", DATE, ro=True),
        _modified(),
    ),
    series=NumberSeries("CT", 10, 10, 6), name_required=True,
    defaults={"contactBusinessRelation": "None"},
)

ITEM = EntitySpec(
    "items", "item", "Item", "number", "No.",
    (
        _id(), _p("number", S, 20, code=True), _p("displayName", S, 100), _p("displayName2", S, 50),
        _p("type", "itemType"), _p("itemCategoryId", G), _p("itemCategoryCode", S, 20, code=True),
        _p("blocked", B), _p("gtin", S, 14, code=True), _p("inventory", D, ro=True), _p("unitPrice", D),
        _p("priceIncludesTax", B), _p("unitCost", D), _p("taxGroupId", G), _p("taxGroupCode", S, 20, code=True),
        _p("baseUnitOfMeasureId", G), _p("baseUnitOfMeasureCode", S, 10, code=True),
        _p("generalProductPostingGroupId", G), _p("generalProductPostingGroupCode", S, 20, code=True),
        _p("inventoryPostingGroupId", G), _p("inventoryPostingGroupCode", S, 20, code=True), _modified(),
    ),
    series=NumberSeries("", 70000, 10, 5), name_required=True,
)

CURRENCY = EntitySpec(
    "currencies", "currency", "Currency", "code", "Code",
    (
        _id(), _p("code", S, 10, nullable=False, code=True), _p("displayName", S, 30), _p("symbol", S, 10),
        _p("amountDecimalPlaces", S, 5, nullable=False), _p("amountRoundingPrecision", D), _modified(),
    ),
    defaults={"amountDecimalPlaces": "2:2", "amountRoundingPrecision": 0.01},
)

UNIT_OF_MEASURE = EntitySpec(
    "unitsOfMeasure", "unitOfMeasure", "Unit of Measure", "code", "Code",
    (
        _id(), _p("code", S, 10, nullable=False, code=True), _p("displayName", S, 50),
        _p("internationalStandardCode", S, 10, code=True), _p("symbol", S, 10), _modified(),
    ),
)

PAYMENT_TERM = EntitySpec(
    "paymentTerms", "paymentTerm", "Payment Terms", "code", "Code",
    (
        _id(), _p("code", S, 10, nullable=False, code=True), _p("displayName", S, 100),
        _p("dueDateCalculation", S), _p("discountDateCalculation", S), _p("discountPercent", D),
        _p("calculateDiscountOnCreditMemos", B), _modified(),
    ),
)

SHIPMENT_METHOD = EntitySpec(
    "shipmentMethods", "shipmentMethod", "Shipment Method", "code", "Code",
    (_id(), _p("code", S, 10, nullable=False, code=True), _p("displayName", S, 100), _modified()),
)

PAYMENT_METHOD = EntitySpec(
    "paymentMethods", "paymentMethod", "Payment Method", "code", "Code",
    (_id(), _p("code", S, 10, nullable=False, code=True), _p("displayName", S, 100), _modified()),
)

SALESPERSON = EntitySpec(
    "salespeoplePurchasers", "salespersonPurchaser", "Salesperson/Purchaser", "code", "Code",
    (
        _id(), _p("code", S, 20, nullable=False, code=True), _p("displayName", S, 50), _p("email", S, 80),
        _p("email2", S, 80), _p("phoneNo", S, 30), _p("jobTitle", S, 30), _p("commisionPercent", D),
        _p("privacyBlocked", B), _p("blocked", B), _modified(),
    ),
)

COMPANY = EntitySpec(
    "companies", "company", "Company", "name", "Name",
    (
        _id(), _p("systemVersion", S, ro=True), _p("timestamp", "Edm.Int64", ro=True), _p("name", S, 30, ro=True),
        _p("displayName", S, 250, ro=True), _p("businessProfileId", S, 250, ro=True),
        _p("systemCreatedAt", DTO, ro=True), _p("systemCreatedBy", G, ro=True),
        _p("systemModifiedAt", DTO, ro=True), _p("systemModifiedBy", G, ro=True),
    ),
    company_scoped=False, writable=False,
)

COMPANY_INFORMATION = EntitySpec(
    "companyInformation", "companyInformation", "Company Information", "id", "Primary Key",
    (_id(), _p("displayName", S, 100, ro=True), _p("addressLine1", S, 100, ro=True), _p("city", S, 30, ro=True),
     _p("country", S, 10, ro=True), _p("currencyCode", S, 10, ro=True), _modified()),
    writable=False,
)
"""One read-only record per company; ``currencyCode`` is the local currency (LCY) code."""

CONTACT_INFORMATION = EntitySpec(
    "contactsInformation", "contactInformation", "Contact Information", "contactId", "Contact Id",
    (
        _p("contactId", G, nullable=False, ro=True), _p("contactNumber", S, 20, nullable=False, ro=True),
        _p("contactName", S, 100, ro=True), _p("contactType", "contactType", ro=True),
        _p("relatedId", G, nullable=False, ro=True), _p("relatedType", "contactBusinessRelationLinkToTable", ro=True),
    ),
    writable=False, id_field="contactId",
)
"""Page 30072 "APIV2 - Contacts Information" (temporary table 5049 "Contact Information Buffer", key "Contact Id"):
read-only, served only under ``customers({id})/contactsInformation`` and ``vendors({id})/contactsInformation`` (and
their ``$expand``). Rows are computed from the business relations at each read, like the AL page does."""

ENTITY_SPECS: dict[str, EntitySpec] = {s.entity_set: s for s in (
    CUSTOMER, VENDOR, CONTACT, ITEM, CURRENCY, UNIT_OF_MEASURE, PAYMENT_TERM, SHIPMENT_METHOD, PAYMENT_METHOD,
    SALESPERSON, COMPANY_INFORMATION)}
"""Company-scoped entity sets served by the emulator."""
