"""Business Central API v2.0 emulator (apis.md Part C; Part E "BC" (1)-(9)).

Serves ``/v2.0/{tenant}/{environment}/api/v2.0/companies({cid})/<entitySet>`` for customers, vendors, contacts,
items, currencies, salespeoplePurchasers, unitsOfMeasure, paymentTerms, shipmentMethods and paymentMethods, plus
``companies`` and the JSON ``$batch`` endpoint, with BC's envelopes, ETags, error bodies and rules.

Business relations: a new customer or vendor gets its company contact (same name and address) linked by a Contact
Business Relation, as BC does; contacts carry the resulting ``contactBusinessRelation`` (Customer / Vendor /
Multiple / None); ``customers({id})/contactsInformation`` and ``vendors({id})/contactsInformation`` (read-only) and
``$expand=contactsInformation`` on customers and vendors (nested ``$select`` only) list the related company contact
and its persons. No other ``$expand`` is served (400).

One code path: the HTTP handlers and the direct data API (``create/update/delete/get/all``, used by tests and by
other emulation) both go through ``_insert/_modify/_remove``, which validate like BC does.

Records are stored as immutable dicts already shaped like the API serializes them (``@odata.etag`` first, then
the properties in ``$metadata`` order); a write replaces the dict, so a page can be serialized outside the lock.
Each set keeps a sorted index ``(key, id)`` on its BC primary key (``number``/``code``): the default order and
the keyset cursor of ``$skiptoken``, stable under concurrent inserts.

Webhooks: ``handle_subscriptions`` answers the ``subscriptions`` routes and ``on_change`` receives every committed
change; both hand over to ``emulators/bc_subscriptions.py`` (``self.webhooks``).
"""
from __future__ import annotations

import base64
import bisect
import functools
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable
from urllib.parse import unquote, unquote_plus, urlsplit

from .bc_query import QueryError, compile_filter, parse_orderby, parse_select
from .bc_schema import (COMPANY, CONTACT_INFORMATION, ENTITY_SPECS, ZERO_GUID, EntitySpec, Prop, decode_member)
from .server import CaseInsensitiveDict, EmulatorServer, RateLimit, Request, Response, _fmt_seconds

ODATA_JSON = "application/json; odata.metadata=minimal; odata.streaming=true"
ERROR_JSON = "application/json"
MAX_PAGE_SIZE = 20000
"""BC online: 20,000 entities per page; a larger ``odata.maxpagesize`` is refused with 413."""
MAX_BATCH_OPERATIONS = 100
LCY_CODE = "USD"
COMPANY_NAME = "CRONUS USA, Inc."

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEGMENT_RE = re.compile(r"^([A-Za-z$][A-Za-z0-9]*)(?:\((.*)\))?$")
_EMAIL_RE = re.compile(r"^[^@\s;,<>\"]+@[^@\s;,<>\"]+$")
_MAXPAGESIZE_RE = re.compile(r"odata\.maxpagesize\s*=\s*([^,;\s]*)", re.I)
_LIST_OPTIONS = {"$filter", "$select", "$orderby", "$top", "$skip", "$skiptoken", "$count", "$schemaversion",
                 "$expand", "$format"}
_WRITE_METHODS = {"POST", "PATCH", "DELETE"}
_BATCH_HEADERS = {"location", "content-type", "odata-version", "preference-applied", "retry-after"}
_SKIP_IF_MATCH = object()
"""``if_match`` of the direct data API: a person's edit in BC has no concurrency token."""

_FIELD_CAPTIONS = {"salespersonCode": "Salesperson Code", "companyNumber": "Company No."}
_RELATED = {"customers": "Customer", "vendors": "Vendor"}
"""Entity sets whose records get a company contact and a business relation (the relation's "Link to Table")."""
_CONTACT_FIELDS_FROM_PARENT = ("displayName", "addressLine1", "addressLine2", "city", "state", "country", "postalCode",
                               "phoneNumber", "email", "website")
"""What BC copies from a new customer / vendor onto the company contact it creates (CustCont-Update / VendCont-Update
InsertNewContact, restricted to the API's fields)."""
_EXPANDABLE = {"customers": {"contactsInformation"}, "vendors": {"contactsInformation"}}
"""Navigation properties the emulator expands (apis.md C3 lists more for BC; those answer 400 here)."""
_BC_NAVIGATIONS = {
    "customers": {"customerFinancialDetails", "picture", "defaultDimensions", "agedAccountsReceivables",
                  "contactsInformation", "documentAttachments", "currency", "paymentTerm", "shipmentMethod",
                  "paymentMethod"},
    "vendors": {"picture", "defaultDimensions", "agedAccountsPayables", "contactsInformation",
                "documentAttachments", "currency", "paymentTerm", "paymentMethod"},
    "contacts": {"picture", "documentAttachments"},
    "contactsInformation": {"contacts"},
    "items": {"picture", "defaultDimensions", "itemVariants", "unitOfMeasure", "itemCategory",
              "inventoryPostingGroup", "generalProductPostingGroup", "documentAttachments"},
    "companies": set(ENTITY_SPECS),
}
_LOOKUP_LABELS = {"paymentTerms": "Payment Terms", "shipmentMethods": "Shipment Method",
                  "paymentMethods": "Payment Method", "currencies": "Currency", "unitsOfMeasure": "Unit of Measure"}


class BCError(Exception):
    """An error as BC answers it: HTTP status, BC error code, message (without the CorrelationId suffix)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict:
    """``{"error":{"code","message"}}`` with BC's ``  CorrelationId:  <guid>.`` suffix."""
    return {"error": {"code": code, "message": f"{message}  CorrelationId:  {uuid.uuid4()}."}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, error_body(code, message), headers, content_type=ERROR_JSON)


def _not_found(segment: str) -> BCError:
    return BCError(404, "BadRequest_ResourceNotFound", f"Resource not found for the segment '{segment}'.")


def _bad_key() -> BCError:
    return BCError(400, "BadRequest_NotFound", "Bad Request - Error in query syntax.")


@dataclass
class _Call:
    """One API request, from HTTP or from a ``$batch`` part. ``path`` is relative to ``.../api/v2.0/``."""
    method: str
    path: str
    raw_query: str
    headers: CaseInsensitiveDict
    body: bytes

    @functools.cached_property
    def query(self) -> dict[str, str]:
        """Query options decoded once; a raw ``+`` is a space (apis.md D), a real plus comes as ``%2B``."""
        out: dict[str, str] = {}
        for part in self.raw_query.split("&") if self.raw_query else []:
            name, _, value = part.partition("=")
            out[unquote_plus(name)] = unquote_plus(value)
        return out


@functools.total_ordering
class _Desc:
    """Sort-key component in descending order."""
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return self.v == other.v

    def __lt__(self, other):
        return other.v < self.v


def _sort_key(values: Iterable[Any], desc: Iterable[bool]) -> tuple:
    out = []
    for v, d in zip(values, desc):
        c = (0, "") if v is None else (1, v)
        out.append(_Desc(c) if d else c)
    return tuple(out)


class _Table:
    __slots__ = ("spec", "rows", "index", "by_key")

    def __init__(self, spec: EntitySpec):
        self.spec = spec
        self.rows: dict[str, dict] = {}
        """id -> stored record (never mutated; replaced on write)."""
        self.index: list[tuple[str, str]] = []
        """Sorted ``(key value, id)``."""
        self.by_key: dict[str, str] = {}

    def put(self, rec: dict, old: dict | None = None) -> None:
        key, rid = self.spec.key, rec[self.spec.id_field]
        if old is not None and old[key] != rec[key]:
            self._unindex(old)
            old = None
        if old is None:
            bisect.insort(self.index, (rec[key], rid))
            self.by_key[rec[key]] = rid
        self.rows[rid] = rec

    def drop(self, rec: dict) -> None:
        self._unindex(rec)
        del self.rows[rec[self.spec.id_field]]

    def _unindex(self, rec: dict) -> None:
        entry = (rec[self.spec.key], rec[self.spec.id_field])
        i = bisect.bisect_left(self.index, entry)
        if i < len(self.index) and self.index[i] == entry:
            del self.index[i]
        self.by_key.pop(rec[self.spec.key], None)


class _Relations:
    """Contact Business Relations (BC table 5054): a contact linked to a customer or a vendor, one contact per
    customer / vendor. Rows are ``{"contactId", "linkToTable", "relatedId"}``; ``put``/``drop`` have ``_Table``'s
    shape so that a snapshot ``$batch`` rolls them back with the records."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict] = {}
        """(linkToTable, related id) -> relation."""

    @staticmethod
    def _key(rel: dict) -> tuple[str, str]:
        return rel["linkToTable"], rel["relatedId"]

    def put(self, rel: dict, old: dict | None = None) -> None:
        if old is not None:
            self.rows.pop(self._key(old), None)
        self.rows[self._key(rel)] = rel

    def drop(self, rel: dict) -> None:
        self.rows.pop(self._key(rel), None)

    def get(self, link_to_table: str, related_id: str) -> dict | None:
        return self.rows.get((link_to_table, related_id))

    def of_contact(self, contact_id: str) -> list[dict]:
        return [r for r in self.rows.values() if r["contactId"] == contact_id]


class BCEmulator(EmulatorServer):
    """Business Central API v2.0 on loopback. See the module docstring."""

    service = "bc"

    def __init__(self, company_id: str, tenant: str = "cronus", environment: str = "sandbox", seed: bool = True,
                 **server_kwargs):
        if server_kwargs.get("rate_limit") is None:
            server_kwargs["rate_limit"] = RateLimit(queue_concurrent=True)
        super().__init__(**server_kwargs)
        if not _GUID_RE.match(company_id):
            raise ValueError(f"company_id must be a GUID, got {company_id!r}")
        self.company_id = company_id.lower()
        self.tenant = tenant
        self.environment = environment
        self.company_name = COMPANY_NAME
        self.lcy_code = LCY_CODE
        self._api_path = f"/v2.0/{tenant}/{environment}/api/v2.0"
        self._tables: dict[str, _Table] = {name: _Table(spec) for name, spec in ENTITY_SPECS.items()}
        self._companies = _Table(COMPANY)
        self._relations = _Relations()
        self._series_next: dict[str, int] = {}
        self._rowversion = 0
        self._etag_salt = random.Random(self.company_id).getrandbits(63)
        self._last_ts: datetime | None = None
        self._journal: list | None = None
        """Undo entries of the running snapshot ``$batch`` (``None`` outside one)."""
        self._txn_changes: list | None = None
        self._id_rng = random.Random(f"ids:{self.company_id}")
        """Seeded records get deterministic ids; afterwards ids are random like SystemIds."""
        created = self._utc(self.now()) - timedelta(days=400)
        stamp = _fmt_ts(created)
        self._companies.put({
            "id": self.company_id, "systemVersion": "26.0.30643.32100", "timestamp": 4006,
            "name": self.company_name, "displayName": self.company_name, "businessProfileId": "",
            "systemCreatedAt": stamp, "systemCreatedBy": "00000000-0000-0000-0000-000000000001",
            "systemModifiedAt": stamp, "systemModifiedBy": "00000000-0000-0000-0000-000000000001"})
        self._tables["companyInformation"].put({
            "@odata.etag": self._next_etag(), "id": str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4)),
            "displayName": self.company_name, "addressLine1": "7122 South Ashford Street", "city": "Atlanta",
            "country": "US", "currencyCode": self.lcy_code, "lastModifiedDateTime": stamp})
        if seed:
            from .bc_seed import seed_company

            seed_company(self)
        self._id_rng = random.Random()

    # -- URLs ---------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v2.0/{tenant}/{environment}/api/v2.0`` (the BC_API_BASE_URL setting)."""
        return f"{self.origin}{self._api_path}"

    @property
    def company_url(self) -> str:
        return f"{self.base_url}/companies({self.company_id})"

    def entity_url(self, entity_set: str, record_id: str | None = None) -> str:
        url = f"{self.company_url}/{entity_set}"
        return f"{url}({record_id})" if record_id else url

    def _context(self, tail: str) -> str:
        return f"{self.base_url}/$metadata#{tail}"

    # -- direct data API (thread-safe; same rules as the HTTP API) -----------------------------------------
    def create(self, entity_set: str, fields: dict) -> dict:
        """Create a record as a person would in BC: id, number (from the series when blank), timestamp, etag.
        Raises ``BCError`` on what BC would refuse."""
        with self.lock:
            return dict(self._insert(self._table(entity_set), fields))

    def update(self, entity_set: str, record_id: str, fields: dict) -> dict:
        """A person's edit: validated like a PATCH, no If-Match; bumps lastModifiedDateTime and the etag."""
        with self.lock:
            return dict(self._modify(self._table(entity_set), record_id.lower(), fields, _SKIP_IF_MATCH))

    def delete(self, entity_set: str, record_id: str) -> None:
        with self.lock:
            self._remove(self._table(entity_set), record_id.lower(), _SKIP_IF_MATCH)

    def get(self, entity_set: str, record_id: str) -> dict | None:
        """A copy of the record as the API serializes it (``@odata.etag`` first), or None."""
        with self.lock:
            rec = self._table(entity_set).rows.get(record_id.lower())
            return dict(rec) if rec is not None else None

    def get_by_key(self, entity_set: str, key: str) -> dict | None:
        """By BC primary key (``number`` or ``code``)."""
        with self.lock:
            table = self._table(entity_set)
            rid = table.by_key.get(key)
            return dict(table.rows[rid]) if rid else None

    def all(self, entity_set: str) -> list[dict]:
        """Copies of every record, in BC's default order (primary key)."""
        with self.lock:
            table = self._table(entity_set)
            return [dict(table.rows[rid]) for _, rid in table.index]

    def count(self, entity_set: str) -> int:
        with self.lock:
            return len(self._table(entity_set).rows)

    def company_contact(self, entity_set: str, record_id: str) -> dict | None:
        """The contact a customer or vendor is related to by its business relation (the company contact BC created
        with it), or None."""
        link = _link_to_table(entity_set)
        with self.lock:
            rel = self._relations.get(link, record_id.lower())
            rec = self._tables["contacts"].rows.get(rel["contactId"]) if rel else None
            return dict(rec) if rec is not None else None

    def contacts_information(self, entity_set: str, record_id: str) -> list[dict]:
        """What ``<entity_set>({record_id})/contactsInformation`` returns (copies)."""
        link = _link_to_table(entity_set)
        with self.lock:
            return [dict(r) for r in self._contacts_information(link, record_id.lower())]

    def relate(self, contact_id: str, entity_set: str, record_id: str) -> None:
        """Link a contact to a customer or vendor with a business relation (BC: the contact card's "Link with
        existing"). It replaces the record's previous relation; the contacts' ``contactBusinessRelation`` (the
        company's and its persons') follow, with new etags and timestamps as after a Modify."""
        link = _link_to_table(entity_set)
        with self.lock:
            contact_id, record_id = contact_id.lower(), record_id.lower()
            if contact_id not in self._tables["contacts"].rows:
                raise _not_found("contacts")
            if record_id not in self._tables[entity_set].rows:
                raise _not_found(entity_set)
            old = self._relations.get(link, record_id)
            if old is not None:
                self._put_relation(None, old)
                self._refresh_business_relation(old["contactId"])
            self._put_relation({"contactId": contact_id, "linkToTable": link, "relatedId": record_id}, None)
            self._refresh_business_relation(contact_id)

    def _table(self, entity_set: str) -> _Table:
        try:
            return self._tables[entity_set]
        except KeyError:
            raise KeyError(f"unknown BC entity set {entity_set!r}; known: {sorted(self._tables)}") from None

    # -- webhooks (emulators/bc_subscriptions.py) -----------------------------------------------------------
    @functools.cached_property
    def webhooks(self):
        """The ``subscriptions`` entity set and the notification sender (``SubscriptionHub``); tests configure it
        (``bc.webhooks.configure(delay=0.05, collection_threshold=5, sender=...)``)."""
        from .bc_subscriptions import SubscriptionHub

        return SubscriptionHub(self)

    def on_change(self, entity_set: str, record_id: str, change_type: str, at: str) -> None:
        """Called once per committed change (``created``/``updated``/``deleted``), under ``self.lock``;
        ``at`` is the record's new lastModifiedDateTime (or the deletion time)."""
        hub = self.__dict__.get("webhooks")  # no hub yet: nobody subscribed, nothing to notify
        if hub is not None:
            hub.on_change(entity_set, record_id, change_type, at)

    def handle_subscriptions(self, call: _Call, segments: list[str]) -> Response:
        """``.../api/v2.0/subscriptions`` routes."""
        return self.webhooks.handle(call, segments)

    # -- the write path ------------------------------------------------------------------------------------
    def _insert(self, table: _Table, fields: dict, *, system: dict | None = None,
                at: datetime | None = None) -> dict:
        """Validate and insert. ``system`` sets values no API caller can (FlowFields, relations; seeding only)."""
        spec = table.spec
        if not spec.writable:
            raise _method_not_allowed("POST", spec.entity_set, "EntitySet")
        values = self._coerce_body(spec, fields)
        rec = spec.blank_record()
        rec.update(values)
        key = spec.key
        next_no = None
        if spec.series and not rec[key]:
            rec[key], next_no = self._next_number(table)
        if spec.name_required and not rec.get("displayName"):
            raise BCError(400, "Application_DialogException", 'A "displayName" must be provided.')
        if not rec[key]:
            raise BCError(400, "Application_DialogException", f'A "{key}" must be provided.')
        if rec[key] in table.by_key:
            raise _already_exists(spec, rec[key])
        self._derive(table, rec, set(values), None)
        if system:
            rec.update(system)
        rec["id"] = str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
        rec["lastModifiedDateTime"] = self._next_timestamp(at)
        stored = {"@odata.etag": self._next_etag(), **rec}
        table.put(stored)
        if next_no is not None:
            self._series_next[spec.entity_set] = next_no
        self._log("insert", table, stored, None)
        if spec.entity_set in _RELATED:
            self._create_company_contact(spec.entity_set, stored, at)
        return stored

    # -- business relations (BC tables 5050 Contact / 5054 Contact Business Relation) --------------------------
    def _create_company_contact(self, entity_set: str, parent: dict, at: datetime | None) -> None:
        """BC's CustCont-Update / VendCont-Update ``InsertNewContact``: a new customer or vendor gets a contact with
        its name and address (a customer's Contact Type: Company unless the customer is a Person), linked to it by
        a business relation (Marketing Setup's "Bus. Rel. Code for Customers / Vendors", set in CRONUS)."""
        link = _RELATED[entity_set]
        fields = {name: parent[name] for name in _CONTACT_FIELDS_FROM_PARENT}
        fields["type"] = parent.get("type") or "Company"
        contact = self._insert(self._tables["contacts"], fields, system={"contactBusinessRelation": link}, at=at)
        self._put_relation({"contactId": contact["id"], "linkToTable": link, "relatedId": parent["id"]}, None)

    def _put_relation(self, new: dict | None, old: dict | None) -> None:
        """Insert (``old`` None) or delete (``new`` None) a business relation, undone with a failed snapshot batch."""
        if new is not None:
            self._relations.put(new, old)
        else:
            self._relations.drop(old)  # type: ignore[arg-type]
        if self._journal is not None:
            self._journal.append((self._relations, new, old))

    def _relation_kind(self, contact_id: str) -> str:
        """The contactBusinessRelation member of a contact with these relations (BC's UpdateBusinessRelation)."""
        rels = self._relations.of_contact(contact_id)
        if not rels:
            return "None"
        return rels[0]["linkToTable"] if len(rels) == 1 else "Multiple"

    def _refresh_business_relation(self, contact_id: str) -> None:
        """After a contact's relations changed: its contactBusinessRelation and its persons' (a Modify each)."""
        contacts = self._tables["contacts"]
        company = contacts.rows.get(contact_id)
        if company is None:
            return
        kind = self._relation_kind(contact_id)
        targets = [company]
        if company["type"] == "Company":
            targets += [r for r in contacts.rows.values()
                        if r["type"] == "Person" and r["companyNumber"] == company["number"]]
        for cur in targets:
            if cur["contactBusinessRelation"] != kind:
                self._system_modify(contacts, cur, {"contactBusinessRelation": kind})

    def _system_modify(self, table: _Table, cur: dict, values: dict) -> dict:
        """A write BC makes itself (no API validation): new values, timestamp and etag."""
        rec = {k: v for k, v in cur.items() if k != "@odata.etag"}
        rec.update(values)
        rec["lastModifiedDateTime"] = self._next_timestamp(None)
        stored = {"@odata.etag": self._next_etag(), **rec}
        table.put(stored, cur)
        self._log("update", table, stored, cur)
        return stored

    def _contacts_by_company(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for rec in self._tables["contacts"].rows.values():
            if rec["companyNumber"]:
                out.setdefault(rec["companyNumber"], []).append(rec)
        return out

    def _contacts_information(self, link: str, record_id: str,
                              by_company: dict[str, list[dict]] | None = None) -> list[dict]:
        """Rows of ``<customers|vendors>({record_id})/contactsInformation``, as AL's "Contact Information Buffer"
        ``LoadDataFromFilters`` builds them: the record's business relation -> its contact -> every contact whose
        Company No. is that contact's No. (the company contact itself and its persons), or that contact alone if
        there is none (a Person related directly). Ordered by the buffer's key, ``contactId``. No relation: none."""
        rel = self._relations.get(link, record_id)
        contacts = self._tables["contacts"]
        contact = contacts.rows.get(rel["contactId"]) if rel is not None else None
        if contact is None:
            return []
        if by_company is None:
            members = [r for r in contacts.rows.values() if r["companyNumber"] == contact["number"]]
        else:
            members = list(by_company.get(contact["number"], ()))
        rows = [{"contactId": c["id"], "contactNumber": c["number"], "contactName": c["displayName"],
                 "contactType": c["type"], "relatedId": record_id, "relatedType": link}
                for c in members or [contact]]
        rows.sort(key=lambda r: r["contactId"])
        return rows

    def _modify(self, table: _Table, record_id: str, fields: dict, if_match) -> dict:
        spec = table.spec
        cur = table.rows.get(record_id)
        if cur is None:
            raise _not_found(spec.entity_set)
        if not spec.writable:
            raise _method_not_allowed("PATCH", spec.entity_set, "Entity")
        self._check_if_match(if_match, cur)
        values = self._coerce_body(spec, fields)
        rec = {k: v for k, v in cur.items() if k != "@odata.etag"}
        rec.update(values)
        if spec.name_required and "displayName" in values and not rec["displayName"]:
            raise BCError(400, "Application_DialogException", 'The blank "displayName" is not allowed.')
        key = spec.key
        if rec[key] != cur[key]:  # BC renames the record
            if not rec[key]:
                raise BCError(400, "Application_DialogException", f'The blank "{key}" is not allowed.')
            if rec[key] in table.by_key:
                raise _already_exists(spec, rec[key])
        self._derive(table, rec, set(values), cur)
        rec["lastModifiedDateTime"] = self._next_timestamp(None)
        stored = {"@odata.etag": self._next_etag(), **rec}
        table.put(stored, cur)
        self._log("update", table, stored, cur)
        return stored

    def _remove(self, table: _Table, record_id: str, if_match) -> None:
        spec = table.spec
        cur = table.rows.get(record_id)
        if cur is None:
            raise _not_found(spec.entity_set)
        if not spec.writable:
            raise _method_not_allowed("DELETE", spec.entity_set, "Entity")
        self._check_if_match(if_match, cur)
        table.drop(cur)
        self._log("delete", table, None, cur)
        if spec.entity_set in _RELATED:  # BC deletes the business relation; the contact stays
            rel = self._relations.get(_RELATED[spec.entity_set], record_id)
            if rel is not None:
                self._put_relation(None, rel)
                self._refresh_business_relation(rel["contactId"])
        elif spec.entity_set == "contacts":
            for rel in self._relations.of_contact(record_id):
                self._put_relation(None, rel)

    def _log(self, kind: str, table: _Table, new: dict | None, old: dict | None) -> None:
        change = {"insert": "created", "update": "updated", "delete": "deleted"}[kind]
        rid = (new or old)["id"]
        at = new["lastModifiedDateTime"] if new else _fmt_ts(self._utc(self.now()))
        if self._journal is not None:
            self._journal.append((table, new, old))
            self._txn_changes.append((table.spec.entity_set, rid, change, at))
        else:
            self.on_change(table.spec.entity_set, rid, change, at)

    def _rollback(self) -> None:
        for table, new, old in reversed(self._journal or []):
            if new is not None:
                table.drop(new)
            if old is not None:
                table.put(old)

    @staticmethod
    def _check_if_match(if_match, cur: dict) -> None:
        if if_match is _SKIP_IF_MATCH:
            return
        if not if_match:
            raise BCError(400, "BadRequest_InvalidToken",
                          "Could not validate the client concurrency token required by the service. "
                          "Please provide a valid token in the client request.")
        token = if_match.strip()
        if token == "*":
            return
        if _strip_weak(token) != _strip_weak(cur["@odata.etag"]):
            raise BCError(409, "Request_EntityChanged", "Another user has already changed the record.")

    def _next_number(self, table: _Table) -> tuple[str, int]:
        series = table.spec.series
        n = self._series_next.get(table.spec.entity_set, series.start)
        while series.format(n) in table.by_key:
            n += series.increment
        return series.format(n), n + series.increment

    def _next_timestamp(self, at: datetime | None) -> str:
        """Millisecond UTC timestamp, strictly increasing across all writes of this emulator."""
        t = self._utc(at or self.now())
        t = t.replace(microsecond=t.microsecond // 1000 * 1000)
        if self._last_ts is not None and t <= self._last_ts:
            t = self._last_ts + timedelta(milliseconds=1)
        self._last_ts = t
        return _fmt_ts(t)

    def _next_etag(self) -> str:
        """``W/"<base64 of '<n>;<digits>;00;'>"`` like BC's, different after every write."""
        self._rowversion += 1
        digits = str((self._rowversion * 0x9E3779B97F4A7C15 + self._etag_salt) % (1 << 64))
        raw = f"'{len(digits) - 1};{digits};00;'"
        return 'W/"' + base64.b64encode(raw.encode("ascii")).decode("ascii") + '"'

    @staticmethod
    def _utc(t: datetime) -> datetime:
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)

    # -- validation ----------------------------------------------------------------------------------------
    def _coerce_body(self, spec: EntitySpec, body: Any) -> dict:
        if not isinstance(body, dict):
            raise BCError(400, "BadRequest", "Invalid Request Body")
        out: dict = {}
        for name, value in body.items():
            if name.startswith("@"):  # instance annotations such as @odata.etag are ignored
                continue
            prop = spec.by_name.get(name)
            if prop is None:
                raise BCError(400, "BadRequest",
                              f"The property '{name}' does not exist on type '{spec.qualified_type}'. "
                              "Make sure to only use property names that are defined by the type.")
            if prop.read_only:
                raise BCError(400, "BadRequest_InvalidOperation", f"Control '{name}' is read-only.")
            out[name] = _coerce(prop, value)
        return out

    def _derive(self, table: _Table, rec: dict, changed: set[str], cur: dict | None) -> None:
        """Field validations and derived values per entity (AL OnValidate of the APIV2 pages)."""
        es = table.spec.entity_set
        for name in ("email", "email2"):
            if name in changed and rec[name]:
                _check_email(rec[name])
        if es in ("customers", "vendors"):
            self._resolve_pair(rec, changed, "currencyId", "currencyCode", "currencies", lcy=self.lcy_code)
            self._resolve_id(rec, changed, "paymentTermsId", "paymentTerms")
            self._resolve_id(rec, changed, "paymentMethodId", "paymentMethods")
        if es == "customers":
            self._resolve_id(rec, changed, "shipmentMethodId", "shipmentMethods")
            if "salespersonCode" in changed and rec["salespersonCode"] \
                    and rec["salespersonCode"] not in self._tables["salespeoplePurchasers"].by_key:
                raise _invalid_relation("salespersonCode", "Customer", rec["salespersonCode"],
                                        "Salesperson/Purchaser")
        elif es == "items":
            self._resolve_pair(rec, changed, "baseUnitOfMeasureId", "baseUnitOfMeasureCode", "unitsOfMeasure")
        elif es == "contacts":
            self._derive_contact(table, rec, changed, cur)

    def _resolve_pair(self, rec, changed, id_field, code_field, target, lcy=None) -> None:
        """An ``xxxId``/``xxxCode`` pair pointing at one record of ``target`` (blank = zero GUID / LCY)."""
        label = _LOOKUP_LABELS[target]
        table = self._tables[target]
        by_id = by_code = None
        if id_field in changed and rec[id_field] != ZERO_GUID:
            by_id = table.rows.get(rec[id_field])
            if by_id is None:
                raise BCError(400, "Application_DialogException",
                              f'The "{id_field}" does not match to a {label}.')
        if code_field in changed:
            code = rec[code_field]
            if code and code != lcy:
                rid = table.by_key.get(code)
                if rid is None:
                    raise BCError(400, "Application_DialogException",
                                  f'The "{code_field}" does not match to a {label}.')
                by_code = table.rows[rid]
            if id_field in changed and by_id is not by_code:
                what = "currency" if target == "currencies" else "unit of measure"
                raise BCError(400, "Application_DialogException",
                              f"The {what} values do not match to a specific {label}.")
            final = by_code
        elif id_field in changed:
            final = by_id
        else:
            return
        rec[id_field] = final["id"] if final else ZERO_GUID
        rec[code_field] = final["code"] if final else (lcy or "")

    def _resolve_id(self, rec, changed, id_field, target) -> None:
        if id_field in changed and rec[id_field] != ZERO_GUID and rec[id_field] not in self._tables[target].rows:
            raise BCError(400, "Application_DialogException",
                          f'The "{id_field}" does not match to a {_LOOKUP_LABELS[target]}.')

    def _derive_contact(self, table: _Table, rec, changed, cur) -> None:
        if "displayName" in changed and "searchName" not in changed:
            old_name = (cur or {}).get("displayName", "")
            if not rec["searchName"] or rec["searchName"] == old_name.upper():
                rec["searchName"] = rec["displayName"].upper()[:100]
        if rec["type"] == "Company":
            rec["companyNumber"] = rec["number"]
            rec["companyName"] = rec["displayName"]
            return
        if cur is not None and cur["type"] == "Company" and rec["companyNumber"] == cur["number"]:
            rec["companyNumber"] = ""  # a company turned person no longer is its own company
            changed = changed | {"companyNumber"}
        if "companyNumber" in changed:
            number = rec["companyNumber"]
            if not number:
                rec["companyName"] = ""
                rec["contactBusinessRelation"] = "None"
                return
            rid = table.by_key.get(number)
            company = table.rows.get(rid) if rid else None
            if company is None or company["type"] != "Company":
                raise _invalid_relation("companyNumber", "Contact", number, "Contact")
            rec["companyName"] = company["displayName"]
            rec["contactBusinessRelation"] = company["contactBusinessRelation"]

    # -- HTTP -----------------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        path = req.path
        prefix = self._api_path
        if path.lower() != prefix.lower() and not path.lower().startswith(prefix.lower() + "/"):
            return error_response(404, "BadRequest_NotFound",
                                  f"No HTTP resource was found that matches the request URI '{req.target}'.")
        call = _Call(req.method.upper(), path[len(prefix) + 1:], urlsplit(req.target).query, req.headers,
                     req.body)
        if call.path == "$batch":
            return self._batch(call)
        resp = self._call(call)
        if call.method in _WRITE_METHODS and 200 <= resp.status < 300:
            self.count_write()
        return resp

    def _call(self, call: _Call) -> Response:
        try:
            return self._route(call)
        except BCError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except QueryError as exc:
            return error_response(400, exc.code, exc.message)

    def _route(self, call: _Call) -> Response:
        if call.path in ("", "/"):
            return self._service_document()
        segments = call.path.split("/")
        parsed = []
        for seg in segments:
            m = _SEGMENT_RE.match(seg)
            if not m:
                raise self._no_resource(call)
            parsed.append((m.group(1), m.group(2)))
        name, key = parsed[0]
        if name == "subscriptions":
            return self.handle_subscriptions(call, segments)
        if name == "$batch":
            raise BCError(400, "BadRequest", "A $batch request can't be nested in a $batch request.")
        if name == "companies":
            if key is None:
                if len(parsed) > 1:
                    raise self._no_resource(call)
                return self._collection(call, self._companies, "companies")
            if _parse_guid(key) != self.company_id:
                raise _not_found("companies")
            rest = parsed[1:]
        elif name in self._tables:
            self._company_from_request(call)
            rest = parsed
        else:
            raise self._no_resource(call)
        if not rest:
            return self._entity(call, self._companies, self.company_id, "companies")
        if len(rest) == 2 and rest[0][0] in _RELATED and rest[0][1] is not None \
                and rest[1][0] == "contactsInformation":
            return self._contacts_information_call(call, rest[0][0], _parse_guid(rest[0][1]), rest[1][1])
        if len(rest) > 1:
            raise self._no_resource(call)
        set_name, key = rest[0]
        table = self._tables.get(set_name)
        if table is None:
            raise self._no_resource(call)
        if key is None:
            return self._collection(call, table, f"companies({self.company_id})/{set_name}")
        return self._entity(call, table, _parse_guid(key), f"companies({self.company_id})/{set_name}")

    def _contacts_information_call(self, call: _Call, entity_set: str, record_id: str, key: str | None) -> Response:
        """``customers({id})/contactsInformation[({contactId})]`` (and vendors'): read-only, computed at each read."""
        context = f"companies({self.company_id})/{entity_set}({record_id})/contactsInformation"
        with self.lock:
            if record_id not in self._tables[entity_set].rows:
                raise _not_found(entity_set)
            table = _Table(CONTACT_INFORMATION)
            for row in self._contacts_information(_RELATED[entity_set], record_id):
                table.put(row)
        if key is None:
            return self._collection(call, table, context)
        return self._entity(call, table, _parse_guid(key), context)

    def _company_from_request(self, call: _Call) -> None:
        """Entity sets without ``companies(...)``: the company comes from ``?company=`` or a ``Company`` header
        (id or name), as in BC's docs."""
        value = call.query.get("company") or call.headers.get("Company")
        if not value:
            raise BCError(400, "BadRequest", "The company is not specified. Use companies({id})/... in the URL.")
        if value.lower() != self.company_id and value != self.company_name:
            raise BCError(400, "Internal_CompanyNotFound", f"Cannot open company {value}.")

    def _no_resource(self, call: _Call) -> BCError:
        return BCError(404, "BadRequest_NotFound",
                       f"No HTTP resource was found that matches the request URI '{self.base_url}/{call.path}'.")

    def _service_document(self) -> Response:
        sets = ["companies", *self._tables, "subscriptions"]
        return Response.json(200, {"@odata.context": self._context("").rstrip("#"),
                                   "value": [{"name": s, "kind": "EntitySet", "url": s} for s in sets]},
                             content_type=ODATA_JSON)

    # -- collections --------------------------------------------------------------------------------------
    def _collection(self, call: _Call, table: _Table, context: str) -> Response:
        if call.method == "GET":
            return self._list(call, table, context)
        if call.method == "POST" and table.spec.writable:
            body = _json_body(call)
            with self.lock:
                rec = self._insert(table, body)
            url = f"{self.base_url}/{context}({rec['id']})"
            return Response.json(201, {"@odata.context": self._context(f"{context}/$entity"), **rec},
                                 {"Location": url, "ETag": rec["@odata.etag"]}, content_type=ODATA_JSON)
        raise _method_not_allowed(call.method, table.spec.entity_set, "EntitySet")

    def _entity(self, call: _Call, table: _Table, record_id: str, context: str) -> Response:
        method = call.method
        if method == "GET":
            for opt in call.query:
                if opt.startswith("$") and opt not in ("$select", "$expand", "$format", "$schemaversion"):
                    raise BCError(400, "BadRequest", f"The query parameter '{opt}' is not supported.")
            expand = self._expand_option(call, table)
            select = self._select(call, table)
            with self.lock:
                rec = table.rows.get(record_id)
                expanded = self._expanded(table, [rec], expand)[0] if rec is not None and expand else None
            if rec is None:
                raise _not_found(table.spec.entity_set)
            return self._entity_response(200, rec, context, select, expand, expanded)
        if method == "PATCH" and table.spec.writable:
            body = _json_body(call)
            with self.lock:
                rec = self._modify(table, record_id, body, call.headers.get("If-Match"))
            return self._entity_response(200, rec, context, None)
        if method == "DELETE" and table.spec.writable:
            with self.lock:
                self._remove(table, record_id, call.headers.get("If-Match"))
            return Response.empty(204)
        raise _method_not_allowed(method, table.spec.entity_set, "Entity")

    def _entity_response(self, status: int, rec: dict, context: str, select: list[str] | None,
                         expand: list | None = None, expanded: dict | None = None) -> Response:
        body = {"@odata.context": self._context(f"{context}{_select_list(select, expand)}/$entity"),
                **_project(rec, select), **(expanded or {})}
        headers = {"ETag": rec["@odata.etag"]} if "@odata.etag" in rec else {}
        return Response.json(status, body, headers, content_type=ODATA_JSON)

    def _expand_option(self, call: _Call, table: _Table) -> list[tuple[str, list[str] | None]] | None:
        """``$expand``: ``[(navigation property, nested $select or None)]``. Only ``contactsInformation`` of customers
        and vendors is served (with a nested ``$select``); BC's other navigation properties answer 400 "not
        implemented", unknown names BC's "Could not find a property" error."""
        raw = call.query.get("$expand")
        if raw is None:
            return None
        spec = table.spec
        out: list[tuple[str, list[str] | None]] = []
        for item in _split_top_level(raw):
            m = _EXPAND_ITEM_RE.fullmatch(item)
            if not m:
                raise BCError(400, "BadRequest", f"Syntax error in $expand '{raw}'.")
            name, inner = m.group(1), m.group(2)
            if name not in _EXPANDABLE.get(spec.entity_set, ()):
                if name in _BC_NAVIGATIONS.get(spec.entity_set, ()):
                    raise BCError(400, "BadRequest_MethodNotImplemented",
                                  f"$expand of '{name}' is not implemented by the BC emulator.")
                raise BCError(400, "BadRequest",
                              f"Could not find a property named '{name}' on type '{spec.qualified_type}'.")
            nested = None
            for option in (inner or "").split(";"):
                if not option.strip():
                    continue
                opt, eq, value = option.partition("=")
                if opt.strip() != "$select" or not eq:
                    raise BCError(400, "BadRequest_MethodNotImplemented",
                                  f"The nested query option '{opt.strip()}' is not implemented by the BC emulator.")
                nested = parse_select(value, CONTACT_INFORMATION.by_name, CONTACT_INFORMATION.qualified_type)
            out.append((name, nested))
        return out

    def _expanded(self, table: _Table, rows: list[dict], expand: list) -> list[dict]:
        """The expanded navigation properties of each of ``rows`` (call under the lock)."""
        link = _RELATED[table.spec.entity_set]
        by_company = self._contacts_by_company()
        out = []
        for rec in rows:
            extra = {}
            for name, nested in expand:  # contactsInformation
                infos = self._contacts_information(link, rec["id"], by_company)
                extra[name] = [_project(r, nested) for r in infos] if nested else infos
            out.append(extra)
        return out

    def _select(self, call: _Call, table: _Table) -> list[str] | None:
        if "$select" not in call.query:
            return None
        return parse_select(call.query["$select"], table.spec.by_name, table.spec.qualified_type)

    def _list(self, call: _Call, table: _Table, context: str) -> Response:
        q = call.query
        spec = table.spec
        for opt in q:
            if opt.startswith("$") and opt not in _LIST_OPTIONS:
                raise BCError(400, "BadRequest", f"The query parameter '{opt}' is not supported.")
        expand = self._expand_option(call, table)
        pred = compile_filter(q["$filter"], spec.by_name, spec.qualified_type) if "$filter" in q else None
        select = self._select(call, table)
        orderby = parse_orderby(q["$orderby"], spec.by_name, spec.qualified_type) if "$orderby" in q else None
        top = _non_negative(q, "$top")
        skip = _non_negative(q, "$skip")
        count = _bool_option(q, "$count")
        prefer = call.headers.get("Prefer") or ""
        m = _MAXPAGESIZE_RE.search(prefer)
        requested = None
        if m:
            try:
                requested = int(m.group(1))
            except ValueError:
                raise BCError(400, "BadRequest", f"The odata.maxpagesize preference '{m.group(1)}' is not valid.")
            if requested > MAX_PAGE_SIZE:
                raise BCError(413, "RequestEntityTooLarge",
                              f"The requested page size {requested} exceeds the maximum page size of "
                              f"{MAX_PAGE_SIZE} entities.")
            if requested < 1:
                raise BCError(400, "BadRequest", f"The odata.maxpagesize preference '{requested}' is not valid.")
        token = _decode_token(q["$skiptoken"]) if "$skiptoken" in q else None
        if token is not None and token.get("o") != q.get("$orderby"):
            raise BCError(400, "BadRequest", "The skip token value is not valid for this request.")
        page_size = requested or (token or {}).get("n") or MAX_PAGE_SIZE
        served = (token or {}).get("s", 0)
        limit = page_size if top is None else max(0, min(page_size, top - served))
        with self.lock:
            page, more, last_key, total = self._page(table, pred, orderby, token, skip if token is None else 0,
                                                      limit, count)
            expanded = self._expanded(table, page, expand) if expand else None
        if top is not None and served + len(page) >= top:
            more = False
        body: dict = {"@odata.context": self._context(f"{context}{_select_list(select, expand)}")}
        if count:
            body["@odata.count"] = total
        body["value"] = [_project(r, select) for r in page] if select else page
        if expanded:
            body["value"] = [{**r, **e} for r, e in zip(body["value"], expanded)]
        if more and page:
            body["@odata.nextLink"] = self._next_link(call, {"k": last_key, "n": page_size,
                                                             "s": served + len(page), "o": q.get("$orderby")})
        headers = {"Preference-Applied": f"odata.maxpagesize={requested}"} if requested else {}
        return Response.json(200, body, headers, content_type=ODATA_JSON)

    def _page(self, table: _Table, pred, orderby, token, skip: int, limit: int, count: bool):
        """One page after the cursor. Returns (records, more, cursor of the last record, total or None)."""
        rows = table.rows
        key, id_field = table.spec.key, table.spec.id_field
        total = None
        if count:
            total = sum(1 for r in rows.values() if pred is None or pred(r))
        if orderby is None:
            index = table.index
            start = 0
            if token:
                k = token["k"]
                if len(k) != 2 or not all(isinstance(v, str) for v in k):
                    raise BCError(400, "BadRequest", "The skip token value is not valid for this request.")
                start = bisect.bisect_right(index, tuple(k))
            candidates = (rows[rid] for _, rid in _islice_from(index, start))
            make_key = lambda r: [r[key], r[id_field]]  # noqa: E731
        else:
            names = [n for n, _ in orderby] + list(dict.fromkeys([key, id_field]))
            desc = [d for _, d in orderby] + [False, False]
            keyed = sorted(((_sort_key([r[n] for n in names], desc), r) for r in rows.values()
                            if pred is None or pred(r)), key=lambda kr: kr[0])
            start = 0
            if token:
                try:
                    after = _sort_key(token["k"], desc)
                    start = bisect.bisect_right([k for k, _ in keyed], after)
                except (TypeError, ValueError):
                    raise BCError(400, "BadRequest", "The skip token value is not valid for this request.")
            candidates = (r for _, r in keyed[start:])
            pred = None
            make_key = lambda r: [r[n] for n in names]  # noqa: E731
        page: list[dict] = []
        more = False
        for rec in candidates:
            if pred is not None and not pred(rec):
                continue
            if skip:
                skip -= 1
                continue
            if len(page) >= limit:
                more = True
                break
            page.append(rec)
        return page, more, (make_key(page[-1]) if page else None), total

    def _next_link(self, call: _Call, state: dict) -> str:
        token = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
        parts = [p for p in call.raw_query.split("&") if p and unquote_plus(p.partition("=")[0]) != "$skiptoken"]
        parts.append(f"$skiptoken={token}")
        return f"{self.base_url}/{call.path}?{'&'.join(parts)}"

    # -- $batch ---------------------------------------------------------------------------------------------
    def _batch(self, call: _Call) -> Response:
        try:
            if call.method != "POST":
                raise _method_not_allowed(call.method, "$batch", "EntitySet")
            body = _json_body(call)
            requests = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
                raise BCError(400, "BadRequest", "Invalid Request Body: a JSON batch needs a \"requests\" array.")
            if len(requests) > MAX_BATCH_OPERATIONS:
                raise BCError(400, "BadRequest", f"The maximum number of '{MAX_BATCH_OPERATIONS}' operations per "
                                                 f"batch request was exceeded ({len(requests)} operations).")
        except BCError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        if len(requests) > 1 and not self.admit_operations(len(requests) - 1):
            with self._window_lock:
                self.stats.throttled += 1
            return self.throttled(Request(call.method, call.path, call.headers, call.body), reason="requests",
                                  retry_after=max(self.window_retry_after(), 0.05))
        snapshot = (call.headers.get("Isolation") or "").strip().lower() == "snapshot"
        responses = []
        writes = 0
        with self.lock:
            if snapshot:
                self._journal, self._txn_changes = [], []
                series = dict(self._series_next)
            try:
                for part in requests:
                    entry, wrote = self._batch_part(part)
                    responses.append(entry)
                    writes += wrote
                failed = snapshot and any(e["status"] >= 400 for e in responses)
            except BaseException:
                failed = snapshot
                raise
            finally:
                if failed:  # all or nothing: undo every change of the batch, number series included
                    self._rollback()
                    self._series_next = series
                    writes = 0
                elif snapshot:
                    for change in self._txn_changes:
                        self.on_change(*change)
                if snapshot:
                    self._journal = self._txn_changes = None
        if writes:
            self.count_write(writes)
        return Response.json(200, {"responses": responses}, content_type="application/json")

    def _batch_part(self, part: dict) -> tuple[dict, int]:
        rid = part.get("id")
        method = str(part.get("method") or "").upper()
        url = part.get("url")
        headers = CaseInsensitiveDict(part.get("headers") or {})
        if not method or not isinstance(url, str):
            resp = error_response(400, "BadRequest", "Each batch request needs a \"method\" and a \"url\".")
        else:
            body = part.get("body")
            raw = json.dumps(body).encode("utf-8") if body is not None else b""
            if body is not None and "Content-Type" not in headers:
                headers["Content-Type"] = "application/json"
            target = self._batch_target(url)
            if target is None:
                resp = error_response(404, "BadRequest_NotFound",
                                      f"No HTTP resource was found that matches the request URI '{url}'.")
            else:
                path, query = target
                resp = self._call(_Call(method, path, query, headers, raw))
        entry: dict = {"id": rid, "status": resp.status,
                       "headers": {k.lower(): v for k, v in resp.headers.items()
                                   if k.lower() in _BATCH_HEADERS and (resp.body or k.lower() == "location")}}
        if resp.body:
            entry["body"] = json.loads(resp.body)
        wrote = int(method in _WRITE_METHODS and 200 <= resp.status < 300)
        return entry, wrote

    def _batch_target(self, url: str) -> tuple[str, str] | None:
        """A part's url (relative to ``.../api/v2.0/``, or absolute) -> (decoded path, raw query)."""
        if "://" in url or url.startswith("/"):
            parts = urlsplit(url)
            path = unquote(parts.path)
            if path.lower().startswith(self._api_path.lower() + "/"):
                return path[len(self._api_path) + 1:], parts.query
            return None
        path, _, query = url.partition("?")
        return unquote(path), query

    # -- EmulatorServer error bodies -------------------------------------------------------------------------
    def unauthorized(self, req: Request) -> Response:
        return error_response(401, "Authentication_InvalidCredentials",
                              "The server has rejected the client credentials.",
                              {"WWW-Authenticate": f'Bearer authorization_uri="https://login.microsoftonline.com/'
                                                   f'{self.tenant}/oauth2/authorize"'})

    def throttled(self, req: Request, *, reason: str, retry_after: float) -> Response:
        rl = self.rate_limit
        if reason == "concurrency":
            maximum = (rl.max_concurrent or 0) + (rl.max_queued if rl.queue_concurrent else 0)
        else:
            maximum = rl.max_requests or 0
        return error_response(429, "Application_TooManyRequests",
                              f"Too many requests reached. Actual ({maximum + 1}). Maximum ({maximum}).",
                              {"Retry-After": _fmt_seconds(retry_after)})

    def fault_response(self, status: int, headers: dict[str, str], message: str | None = None) -> Response:
        code, default = _FAULTS.get(status, ("Unknown", "An error occurred while processing the request."))
        return error_response(status, code, message or default, headers)


_FAULTS = {
    408: ("RequestTimeout", "The operation timed out and the session was cancelled."),
    429: ("Application_TooManyRequests", "Too many requests reached."),
    500: ("Internal_ServerError", "An unexpected error occurred on the server."),
    502: ("BadGateway", "The service is temporarily unavailable. Please try again later."),
    503: ("Internal_ServiceUnavailable", "The service is temporarily unavailable. Please try again later."),
    504: ("GatewayTimeout", "The request timed out."),
}


# -- helpers -------------------------------------------------------------------------------------------------
def _fmt_ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _strip_weak(etag: str) -> str:
    return etag[2:] if etag.startswith(("W/", "w/")) else etag


def _parse_guid(key: str) -> str:
    if not _GUID_RE.match(key or ""):
        raise _bad_key()
    return key.lower()


def _islice_from(seq: list, start: int):
    for i in range(start, len(seq)):
        yield seq[i]


def _project(rec: dict, select: list[str] | None) -> dict:
    if not select:
        return rec
    out = {"@odata.etag": rec["@odata.etag"]} if "@odata.etag" in rec else {}
    for name in select:
        out[name] = rec[name]
    return out


def _json_body(call: _Call) -> Any:
    ctype = (call.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BCError(415, "UnsupportedMediaType",
                      f"The request's content type '{ctype or '(none)'}' is not supported; use application/json.")
    try:
        return json.loads(call.body.decode("utf-8")) if call.body else None
    except (UnicodeDecodeError, ValueError):
        raise BCError(400, "BadRequest", "Invalid Request Body") from None


_EXPAND_ITEM_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", re.S)


def _split_top_level(text: str) -> list[str]:
    """``a,b($select=x,y)`` -> ``["a", "b($select=x,y)"]`` (commas inside parentheses don't split)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _select_list(select: list[str] | None, expand: list | None) -> str:
    """The context URL's select list: ``(a,b)``, with expanded navigation properties as ``nav()`` or
    ``nav(x,y)`` (OData 4.0 part 1, 10.9-10.10); empty without ``$select`` and ``$expand``."""
    items = list(select or [])
    items += [f"{name}({','.join(nested or ())})" for name, nested in expand or ()]
    return f"({','.join(items)})" if items else ""


def _link_to_table(entity_set: str) -> str:
    try:
        return _RELATED[entity_set]
    except KeyError:
        raise KeyError(f"only customers and vendors have business relations, not {entity_set!r}") from None


def _non_negative(q: dict, name: str) -> int | None:
    if name not in q:
        return None
    raw = q[name]
    if not raw.isdigit():
        raise BCError(400, "BadRequest", f"Invalid value '{raw}' for {name} query option found. "
                                         f"The {name} query option requires a non-negative integer value.")
    return int(raw)


def _bool_option(q: dict, name: str) -> bool:
    raw = q.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise BCError(400, "BadRequest", f"'{raw}' is not a valid count option.")
    return raw == "true"


def _decode_token(raw: str) -> dict:
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8"))
        if not (isinstance(data, dict) and isinstance(data.get("k"), list) and isinstance(data.get("n"), int)
                and isinstance(data.get("s"), int) and 0 < data["n"] <= MAX_PAGE_SIZE):
            raise ValueError
        return data
    except (ValueError, UnicodeDecodeError, TypeError):
        raise BCError(400, "BadRequest", f"The skip token value '{raw}' is not valid.") from None


def _method_not_allowed(method: str, name: str, kind: str) -> BCError:
    return BCError(405, "BadRequest_MethodNotAllowed",
                   f"'{method}' requests for '{name}' of EdmType '{kind}' are not allowed within Microsoft "
                   "Dynamics NAV OData web services.")


def _already_exists(spec: EntitySpec, key: str) -> BCError:
    return BCError(400, "Internal_EntityWithSameKeyExists",
                   f"The {spec.table_caption} already exists. Identification fields and values: "
                   f"{spec.key_caption}='{key}'")


def _invalid_relation(prop: str, table_caption: str, value: str, related: str) -> BCError:
    caption = _FIELD_CAPTIONS.get(prop, prop)
    return BCError(400, "Internal_InvalidTableRelation",
                   f"The field {caption} of table {table_caption} contains a value ({value}) that cannot be found "
                   f"in the related table ({related}).")


def _check_email(value: str) -> None:
    for address in value.split(";"):
        address = address.strip()
        if address and not _EMAIL_RE.match(address):
            raise BCError(400, "Application_DialogException", f'The email address "{value}" is not valid.')


def _coerce(prop: Prop, value: Any) -> Any:
    """A JSON value -> the stored value of ``prop``, or the error BC's OData layer/AL would give."""
    t = prop.type
    if value is None:
        if t == "Edm.String" and prop.nullable:
            return ""
        raise BCError(400, "BadRequest",
                      f"A null value was found for the property named '{prop.name}', which has the expected type "
                      f"'{prop.edm}[Nullable=False]'. The expected type '{prop.edm}[Nullable=False]' does not "
                      "allow null values.")
    if t == "Edm.String":
        if not isinstance(value, str):
            raise _not_convertible(prop)
        if prop.code:
            value = value.upper()
        if prop.max_length is not None and len(value) > prop.max_length:
            raise BCError(400, "Application_StringExceededLength",
                          f"The length of the string is {len(value)}, but it must be less than or equal to "
                          f"{prop.max_length} characters. Value: {value}")
        return value
    if t == "Edm.Guid":
        if not isinstance(value, str) or not _GUID_RE.match(value):
            raise BCError(400, "BadRequest", f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid'.")
        return value.lower()
    if t == "Edm.Decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _not_convertible(prop)
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if t == "Edm.Boolean":
        if not isinstance(value, bool):
            raise _not_convertible(prop)
        return value
    members = prop.members
    if members:
        if isinstance(value, str):
            names = [m for m, _ in members]
            if value in names:
                return value
            for m in names:
                if decode_member(m) == value:
                    return m
        captions = ",".join(decode_member(m) for m, _ in members)
        raise BCError(400, "Unknown", f"'{value}' is not an option. The existing options are: {captions}")
    raise _not_convertible(prop)  # pragma: no cover - read-only types never reach here


def _not_convertible(prop: Prop) -> BCError:
    return BCError(400, "BadRequest", f"Cannot convert a primitive value to the expected type '{prop.edm}'. "
                                      "See the inner exception for more details.")
