"""Resolve the lookups a page of records needs (service layer: reads couplings and, for codes, BC records).

``sync.transfer.lookup_needs`` says which values of which referenced mappings a page needs; this module finds
them in bulk - a few requests per page, never one per record - and returns the ``LookupResolution`` that
``transfer``/``decide`` consume.

Company-contact lookups (CONTACT's ``companyNumber <-> parentcustomerid`` through CUSTOMER then VENDOR): BC API v2.0
exposes a company contact's business relations only through ``customers({id})/contactsInformation`` and
``vendors({id})/contactsInformation`` (the related contact, contactType Company, and its persons), so:

* To (company contact numbers -> accounts): one read of those company contacts (name, ``contactBusinessRelation``);
  for those related to a customer / vendor (``Customer``, ``Vendor`` or ``Multiple``), one read of the customers /
  vendors *named like them* (BC keeps a company contact's name equal to its customer's) with
  ``$expand=contactsInformation``, each link checked on the contact number; companies still unmatched (renamed
  on one side) fall back to a paged read of all customers / vendors with that expand, done once per pass
  (``PassCache``). Then the couplings, customer first (BC's FindParentCRMAccountForContact).
* From (accounts -> company contact numbers): the CUSTOMER couplings of the accounts, then VENDOR's for the rest;
  the coupled records by id with ``$expand=contactsInformation``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from coupling.model import option_value_id, option_value_of

from . import errors, odata
from .mappings import Direction, Lookup, TableMapping
from .transfer import LookupResolution, lookup_key, lookup_needs

TO = Direction.TO_INTEGRATION_TABLE
CHUNK = 100
URL_BUDGET = 6000
"""Characters of ``$filter`` per request when filtering on text values of varying length (contact names)."""
CONTACTS_INFORMATION = "contactsInformation($select=contactNumber,contactType)"
"""The ``$expand`` that links a customer / vendor to its company contact (BC page 30072)."""
_RELATION_OF_SET = {"customers": "Customer", "vendors": "Vendor"}
"""contactBusinessRelation members meaning "related to a record of this entity set" (besides ``Multiple``)."""


@dataclass
class PassCache:
    """What one pass reads at most once for all its pages: for company-contact lookups, the company contact number
    -> record id of every customer / vendor (the fallback full read), by table mapping name."""

    company_contacts: dict[str, dict[str, str]] = field(default_factory=dict)


def _lookups_by_mapping(mapping: TableMapping, direction: Direction) -> dict[str, Lookup]:
    return {fm.lookup.mapping: fm.lookup for fm in mapping.field_mappings_for(direction) if fm.lookup is not None}


async def _bc_ids_by_code(rt: Any, ref: TableMapping, codes: Iterable[str]) -> dict[str, str]:
    """BC code (upper-case) -> SystemId, for the referenced entity set (e.g. currencies by code)."""
    out: dict[str, str] = {}
    codes = sorted(codes)
    for start in range(0, len(codes), CHUNK):
        flt = odata.any_of("code", codes[start:start + CHUNK])
        async for page in rt.bc.iter_pages(ref.bc_entity_set, filter=flt, select=["id", "code"]):
            for rec in page:
                out[lookup_key(rec["code"])] = str(rec["id"]).lower()
    return out


async def _bc_codes_by_id(rt: Any, ref: TableMapping, ids: Iterable[str]) -> dict[str, str]:
    found = await rt.bc.get_many(ref.bc_entity_set, list(ids), select=["id", "code"])
    return {bc_id: rec["code"] for bc_id, rec in found.items()}


def _referenced(mappings: Mapping[str, TableMapping], mapping: TableMapping, name: str) -> TableMapping:
    ref = mappings.get(name)
    if ref is None:
        raise errors.ConfigurationError("table mappings", f"{mapping.name} looks up through unknown mapping {name}")
    return ref


def _text_chunks(name: str, values: Iterable[str], budget: int = URL_BUDGET) -> list[list[str]]:
    """``values`` in groups whose ``name eq v1 or name eq v2 ...`` filter stays within ``budget`` characters once
    percent-encoded (names vary in length, unlike GUIDs)."""
    chunks: list[list[str]] = []
    size = 0
    for value in sorted(set(values)):
        term = len(odata.query_string({"": odata.eq(name, value)})) + len("%20or%20")
        if chunks and size + term <= budget and len(chunks[-1]) < CHUNK:
            chunks[-1].append(value)
            size += term
        else:
            chunks.append([value])
            size = term
    return chunks


def _company_numbers(record: Mapping[str, Any]) -> list[str]:
    """The company contact numbers in a customer / vendor read with ``CONTACTS_INFORMATION``."""
    return [lookup_key(i["contactNumber"]) for i in record.get("contactsInformation") or ()
            if i.get("contactType") == "Company" and i.get("contactNumber")]


async def _company_contacts(rt: Any, numbers: set[str]) -> dict[str, dict]:
    """Company contact number -> the contact's ``displayName`` and ``contactBusinessRelation``."""
    out: dict[str, dict] = {}
    for chunk in _text_chunks("number", numbers):
        async for page in rt.bc.iter_pages("contacts", filter=odata.any_of("number", chunk),
                                           select=["number", "type", "displayName", "contactBusinessRelation"]):
            for rec in page:
                if rec.get("type") == "Company":
                    out[lookup_key(rec["number"])] = rec
    return out


async def _related_by_name(rt: Any, ref: TableMapping, companies: Mapping[str, dict]) -> dict[str, str]:
    """Company contact number -> id of the ``ref`` record (customer / vendor) related to it, among the records named
    like those companies; the link itself is checked through ``contactsInformation``."""
    out: dict[str, str] = {}
    names = {c["displayName"] for c in companies.values() if c.get("displayName")}
    for chunk in _text_chunks("displayName", names):
        async for page in rt.bc.iter_pages(ref.bc_entity_set, filter=odata.any_of("displayName", chunk),
                                           select=["id"], expand=CONTACTS_INFORMATION):
            for rec in page:
                for number in _company_numbers(rec):
                    if number in companies:
                        out.setdefault(number, str(rec["id"]).lower())  # BC: the first relation (No. order)
    return out


async def _all_related(rt: Any, ref: TableMapping, cache: PassCache) -> dict[str, str]:
    """Company contact number -> related ``ref`` record id, for every record (read once per pass)."""
    index = cache.company_contacts.get(ref.name)
    if index is None:
        index = {}
        async for page in rt.bc.iter_pages(ref.bc_entity_set, select=["id"], expand=CONTACTS_INFORMATION):
            for rec in page:
                for number in _company_numbers(rec):
                    index.setdefault(number, str(rec["id"]).lower())
        cache.company_contacts[ref.name] = index
    return index


async def _company_links_to(rt: Any, refs: list[TableMapping], numbers: set[str],
                            cache: PassCache) -> dict[str, str]:
    """Company contact number -> the account coupled to its customer, else to its vendor (To)."""
    companies = await _company_contacts(rt, numbers)
    related: dict[str, dict[str, str]] = {}
    for ref in refs:
        kind = _RELATION_OF_SET.get(ref.bc_entity_set)
        candidates = {n: c for n, c in companies.items() if c.get("contactBusinessRelation") in (kind, "Multiple")}
        if not candidates:
            continue
        found = await _related_by_name(rt, ref, candidates)
        missing = [n for n in candidates if n not in found]
        if missing:
            index = await _all_related(rt, ref, cache)
            found.update({n: index[n] for n in missing if n in index})
        related[ref.name] = found
    out: dict[str, str] = {}
    for ref in refs:  # in the lookup's order: a coupled customer wins over a coupled vendor
        found = related.get(ref.name)
        if not found:
            continue
        couplings = await rt.couplings.get_many_by_bc(ref.name, sorted(set(found.values())))
        for number, bc_id in found.items():
            c = couplings.get(bc_id)
            if c is not None and number not in out:
                out[number] = c.dataverse_id
    return out


async def _company_links_from(rt: Any, refs: list[TableMapping], account_ids: set[str]) -> dict[str, str]:
    """Account id -> the company contact of the customer coupled to it, else of the vendor (From)."""
    out: dict[str, str] = {}
    remaining = set(account_ids)
    for ref in refs:
        if not remaining:
            break
        couplings = await rt.couplings.get_many_by_dataverse(ref.name, sorted(remaining))
        if not couplings:
            continue
        bc_ids = {account: c.bc_id for account, c in couplings.items()}
        records = await rt.bc.get_many(ref.bc_entity_set, set(bc_ids.values()), select=["id"],
                                       expand=CONTACTS_INFORMATION)
        for account, bc_id in bc_ids.items():
            numbers = _company_numbers(records.get(bc_id) or {})
            if numbers:
                out[account] = numbers[0]
                remaining.discard(account)
    return out


async def resolve(rt: Any, mappings: Mapping[str, TableMapping], mapping: TableMapping,
                  records: Iterable[Mapping[str, Any]], direction: Direction | str,
                  cache: PassCache | None = None) -> LookupResolution:
    """Everything ``transfer`` needs to translate the lookups of ``records`` in one pass direction. ``cache``:
    one per pass (the engine's), so what every page would read again is read once."""
    d = Direction(direction)
    records = list(records)
    lcy_code, lcy_currency = await rt.lcy()
    needs = lookup_needs(mapping, records, d, lcy_code=lcy_code, lcy_dataverse_currency_id=lcy_currency)
    lookups = _lookups_by_mapping(mapping, d)
    values: dict[tuple[str, Any], Any] = {}
    for ref_name, wanted in needs.items():
        lk = lookups[ref_name]
        if lk.is_company_contact:
            refs = [_referenced(mappings, mapping, name) for name in lk.mappings]
            links = await (_company_links_to(rt, refs, wanted, cache or PassCache()) if d is TO
                           else _company_links_from(rt, refs, wanted))
            values.update({(ref_name, source): target for source, target in links.items()})
            continue
        ref = _referenced(mappings, mapping, ref_name)
        if d is TO:
            # BC value (code or SystemId) -> BC SystemId -> coupling -> Dataverse id (or option value)
            by_id = {v: v for v in wanted} if lk.bc_key == "id" else await _bc_ids_by_code(rt, ref, wanted)
            couplings = await rt.couplings.get_many_by_bc(ref_name, list(by_id.values()))
            for source, bc_id in by_id.items():
                c = couplings.get(bc_id)
                if c is not None:
                    option = option_value_of(c.dataverse_id)
                    values[(ref_name, source)] = option if lk.is_option else c.dataverse_id
        else:
            # Dataverse id (or option value) -> coupling -> BC SystemId (-> code)
            keys = {(option_value_id(v) if lk.is_option else v): v for v in wanted}
            couplings = await rt.couplings.get_many_by_dataverse(ref_name, list(keys))
            bc_ids = {keys[k]: c.bc_id for k, c in couplings.items()}
            if lk.bc_key == "id":
                values.update({(ref_name, src): bc_id for src, bc_id in bc_ids.items()})
            else:
                codes = await _bc_codes_by_id(rt, ref, bc_ids.values())
                values.update({(ref_name, src): codes[bc_id] for src, bc_id in bc_ids.items() if bc_id in codes})
    return LookupResolution(values, lcy_code=lcy_code, lcy_dataverse_currency_id=lcy_currency)
