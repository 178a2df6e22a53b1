"""Resolve the lookups a page of records needs (service layer: reads couplings and, for codes, BC records).

``sync.transfer.lookup_needs`` says which values of which referenced mappings a page needs; this module finds
them in bulk - a few requests per page, never one per record - and returns the ``LookupResolution`` that
``transfer``/``decide`` consume.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from coupling.model import option_value_id, option_value_of

from . import errors, odata
from .mappings import Direction, Lookup, TableMapping
from .transfer import LookupResolution, lookup_key, lookup_needs

TO = Direction.TO_INTEGRATION_TABLE
CHUNK = 100


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


async def resolve(rt: Any, mappings: Mapping[str, TableMapping], mapping: TableMapping,
                  records: Iterable[Mapping[str, Any]], direction: Direction | str) -> LookupResolution:
    """Everything ``transfer`` needs to translate the lookups of ``records`` in one pass direction."""
    d = Direction(direction)
    records = list(records)
    lcy_code, lcy_currency = await rt.lcy()
    needs = lookup_needs(mapping, records, d, lcy_code=lcy_code, lcy_dataverse_currency_id=lcy_currency)
    lookups = _lookups_by_mapping(mapping, d)
    values: dict[tuple[str, Any], Any] = {}
    for ref_name, wanted in needs.items():
        ref = mappings.get(ref_name)
        if ref is None:
            raise errors.ConfigurationError("table mappings", f"{mapping.name} looks up through unknown mapping "
                                                              f"{ref_name}")
        lk = lookups[ref_name]
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
