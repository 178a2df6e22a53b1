"""A local emulator of the Dataverse Web API v9.2 (apis.md Part A and Part E "Dataverse" (1)-(12)).

Real HTTP on loopback (``EmulatorServer``). Tables: accounts, contacts, products, systemusers, transactioncurrencies,
uoms, uomschedules (columns from the reference schema) plus teams, businessunits, cdm_companies and tasks.
Reproduced: bearer check, 204/201 creates with ``OData-EntityId``, PATCH upsert with ``If-Match`` /
``If-None-Match``, global ``versionnumber`` ETags, ``modifiedon`` in whole UTC seconds, ``$select/$filter/$orderby/
$top/$count/$expand``, ``Prefer: odata.maxpagesize`` paging with an opaque ``$skiptoken`` (cursor on the sort key,
so paging is stable under concurrent inserts), ``@odata.bind`` lookups (polymorphic included) read back as
``_x_value`` with annotations on request, alternate keys, multipart ``$batch`` with atomic changesets, change
tracking with ``$deletedEntity`` and the service's error bodies and codes.

Besides HTTP, a direct data API (``create/update/delete/get/all``) lets tests and other emulation act "as a person"
through the same code path. Not deployed; tests and the sandbox only.
"""
from __future__ import annotations

import base64
import bisect
import functools
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from emulators import seed_data
from emulators import dataverse_webhook as wh
from emulators import dataverse_metadata
from emulators.dataverse_batch import (BatchFormatError, BatchRequest, Changeset, ChangesetResponse, PartResponse,
                                       format_batch_response, parse_batch)
from emulators.dataverse_query import (QueryError, Lit, compare_keys, compile_filter, not_found_property,
                                       parse_key_segment, parse_orderby, parse_select, sort_key_value)
from emulators.dataverse_schema import (MEMO_DEFAULT_MAX, NUMBER_TYPES, OPTION_TYPES, Column, Nav, Ref, Table,
                                        build_tables)
from emulators.server import CaseInsensitiveDict, EmulatorServer, Request, Response, _fmt_seconds

API_PREFIX = re.compile(r"^/api/data/(v9\.[012])(?:/|$)")
MAX_PAGE_SIZE = 5000
MAX_BATCH_REQUESTS = 1000
COUNT_LIMIT = 5000
_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?$", re.DOTALL)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MONEY_RANGE = (-922337203685477.0, 922337203685477.0)
_PRICE_RANGE = (0.0, 1_000_000_000_000.0)
_INT_RANGE = (-2**31, 2**31 - 1)
_PAYLOAD_HELP = ("Error identified in Payload provided by the user for Entity :'{set}', For more information on this "
                 "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
                 "InnerException : Microsoft.OData.ODataException: {inner}")


class DataverseError(Exception):
    """An error answer of the service: HTTP status + ``{"error":{"code","message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _payload_error(t: Table, inner: str) -> DataverseError:
    return DataverseError(400, "0x80048d19", _PAYLOAD_HELP.format(set=t.set, inner=inner))


def _does_not_exist(logical: str, row_id: str) -> DataverseError:
    return DataverseError(404, "0x80040217", f"{logical} With Id = {row_id} Does Not Exist")


def _fmt_dt(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_value(value: Any) -> Any:
    if isinstance(value, Ref):
        return value.id
    if isinstance(value, datetime):
        return _fmt_dt(value)
    return value


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    out, depth, quote_char, cur = [], 0, None, []
    for ch in text:
        if quote_char:
            if ch == quote_char:
                quote_char = None
        elif ch in "'\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


@dataclass
class Prefer:
    representation: bool = False
    annotations: list[str] | None = None
    maxpagesize: int | None = None
    track_changes: bool = False
    continue_on_error: bool = False
    raw_annotations: str | None = None

    @classmethod
    def parse(cls, header: str | None) -> "Prefer":
        p = cls()
        for item in _split_top(header or ""):
            name, _, value = item.partition("=")
            name, value = name.strip().lower(), value.strip()
            if name == "return" and value.lower() == "representation":
                p.representation = True
            elif name == "odata.include-annotations":
                p.raw_annotations = value
                p.annotations = [a.strip() for a in value.strip('"').split(",") if a.strip()]
            elif name == "odata.maxpagesize":
                try:
                    p.maxpagesize = int(value)
                except ValueError:
                    pass
            elif name == "odata.track-changes":
                p.track_changes = True
            elif name == "odata.continue-on-error":
                p.continue_on_error = True
        return p

    def wants(self, annotation: str) -> bool:
        for pattern in self.annotations or ():
            if pattern == "*" or pattern == annotation:
                return True
            if pattern.endswith(".*") and annotation.startswith(pattern[:-1]):
                return True
        return False


@dataclass
class _Call:
    """One API request being executed (top level or a ``$batch`` part)."""

    method: str
    path: str
    """Raw (still percent-encoded) path."""
    raw_query: str
    headers: CaseInsensitiveDict
    body: bytes
    caller: str
    content_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    in_changeset: bool = False

    @functools.cached_property
    def query(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in self.raw_query.split("&") if self.raw_query else []:
            name, _, value = part.partition("=")
            out[unquote_plus(name)] = unquote_plus(value)
        return out

    @functools.cached_property
    def prefer(self) -> Prefer:
        return Prefer.parse(self.headers.get("Prefer"))


@dataclass
class _Expand:
    nav: str
    select: str | None


class DataverseEmulator(EmulatorServer):
    """Dataverse Web API v9.2 on ``http://127.0.0.1:<port>/api/data/v9.2/``."""

    service = "dataverse"
    ORGANIZATION_ID = "6f2f5b7e-1d1c-4a4e-9b0e-5d7c1f0a0001"
    ORGANIZATION_NAME = "unqbcsyncemulator"
    ORG_HOST = "orgbcsync.crm4.dynamics.com"
    ROOT_BUSINESS_UNIT_ID = "0b3c1a52-6a1e-4f36-8d6e-000000000b01"
    DEFAULT_TEAM_ID = "0b3c1a52-6a1e-4f36-8d6e-000000000c01"
    APP_USER_ID = "0b3c1a52-6a1e-4f36-8d6e-00000000a001"
    """The application user the app's bearer token maps to (what HTTP writes are attributed to)."""
    PERSON_USER_ID = "0b3c1a52-6a1e-4f36-8d6e-00000000a002"
    """A licensed person; edits made through the direct data API are theirs."""
    BASE_CURRENCY_ID = "0b3c1a52-6a1e-4f36-8d6e-00000000c0d1"
    DEFAULT_UNIT_GROUP_ID = "0b3c1a52-6a1e-4f36-8d6e-00000000d001"

    def __init__(self, seed: bool = True, *, alternate_keys: dict[str, dict[str, tuple[str, ...]]] | None = None,
                 **server_kwargs):
        super().__init__(**server_kwargs)
        self.tables: dict[str, Table] = build_tables(alternate_keys)
        self._by_set: dict[str, Table] = {t.set: t for t in self.tables.values()}
        self._rows: dict[str, dict[str, dict]] = {t: {} for t in self.tables}
        self._order: dict[str, list[str]] = {t: [] for t in self.tables}
        self._key_index: dict[tuple[str, str], dict[tuple, str]] = {
            (t.logical, k): {} for t in self.tables.values() for k in t.alternate_keys}
        self._refs: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._changes: list[tuple[int, str, str, bool]] = []
        self._change_versions: list[int] = []
        self._version = 1_000_000
        self._undo: list[tuple[Table, str, dict | None]] | None = None
        self.rolled_back_versions: set[int] = set()
        """Row versions written inside a $batch changeset that was rolled back (never committed)."""
        self._last_changed: dict[tuple[str, str], tuple[str, ...]] = {}
        self._tombstones: dict[tuple[str, str], dict] = {}
        # per-table column lists computed once (writes and full-row reads are hot paths for bulk seeding)
        self._plain_cols = {t.logical: [(c.name, c.api_name) for c in t.columns.values()] for t in self.tables.values()}
        self._ref_cols = {t.logical: [c.name for c in t.columns.values() if c.is_lookup and c.access != "Read"]
                          for t in self.tables.values()}
        self._money_cols = {t.logical: [c.name for c in t.columns.values()
                                        if c.type == "Money" and f"{c.name}_base" in t.columns]
                            for t in self.tables.values()}
        self._defaults = {t.logical: {c.name: (c.name == "followemail") if c.type == "Boolean" else 1
                                      for c in t.columns.values()
                                      if c.type == "Boolean" or (c.type == "Picklist" and c.options and (
                                          c.options == {1: "Default Value"} or
                                          c.name == "preferredcontactmethodcode"))}
                          for t in self.tables.values()}
        self._nav_for: dict[tuple[str, str, str], str] = {
            (t.logical, nav.column, target): nav.name
            for t in self.tables.values() for nav in t.navs.values() for target in nav.targets}
        with self.lock:
            self._seed_system()
            if seed:
                self._seed()

    # -- public ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` - the value of the DATAVERSE_URL setting."""
        return self.origin

    @property
    def api_root(self) -> str:
        return f"{self.origin}/api/data/v9.2/"

    def table(self, entity_set: str) -> Table:
        t = self._by_set.get(entity_set) or self.tables.get(entity_set)
        if t is None:
            raise KeyError(f"unknown entity set {entity_set!r}")
        return t

    def create(self, entity_set: str, fields: dict, *, by: str | None = None) -> dict:
        """Create a row as a person would (Web API JSON, ``x@odata.bind`` allowed). Raises ``DataverseError``."""
        with self.lock:
            t = self.table(entity_set)
            row = self._create(t, dict(fields), self._direct_call(by))
            return self._serialize(t, row)

    def update(self, entity_set: str, id: str, fields: dict, *, by: str | None = None) -> dict:  # noqa: A002
        """An edit by a person: only the given columns change; bumps versionnumber and modifiedon."""
        with self.lock:
            t = self.table(entity_set)
            row_id = str(id).lower()
            if row_id not in self._rows[t.logical]:
                raise _does_not_exist(t.logical, row_id)
            row = self._update(t, row_id, dict(fields), self._direct_call(by))
            return self._serialize(t, row)

    def delete(self, entity_set: str, id: str) -> None:  # noqa: A002
        with self.lock:
            t = self.table(entity_set)
            row_id = str(id).lower()
            if row_id not in self._rows[t.logical]:
                raise _does_not_exist(t.logical, row_id)
            self._delete(t, row_id, self._direct_call(None))

    def get(self, entity_set: str, id: str) -> dict | None:  # noqa: A002
        """The row as ``GET <set>(<id>)`` returns it (all columns, lookups as ``_x_value``), or None."""
        with self.lock:
            t = self.table(entity_set)
            row = self._rows[t.logical].get(str(id).lower())
            return self._serialize(t, row) if row is not None else None

    def all(self, entity_set: str) -> list[dict]:
        with self.lock:
            t = self.table(entity_set)
            rows = self._rows[t.logical]
            return [self._serialize(t, rows[i]) for i in self._order[t.logical]]

    def find(self, entity_set: str, **equals: Any) -> list[dict]:
        """Rows whose columns equal the given values (text compared case-insensitively)."""
        with self.lock:
            t = self.table(entity_set)
            out = []
            for row_id in self._order[t.logical]:
                row = self._rows[t.logical][row_id]
                if all(_loose_eq(_json_value(row.get(k)), v) for k, v in equals.items()):
                    out.append(self._serialize(t, row))
            return out

    @property
    def version(self) -> int:
        """The latest ``versionnumber`` handed out."""
        return self._version

    # -- EmulatorServer hooks ---------------------------------------------------------------------------------
    def unauthorized(self, req: Request) -> Response:
        return Response(401, b"", {
            "WWW-Authenticate": "Bearer authorization_uri=https://login.microsoftonline.com/"
                                f"00000000-0000-0000-0000-000000000000/oauth2/authorize, resource_id={self.origin}/",
            "OData-Version": "4.0"})

    def throttled(self, req: Request, *, reason: str, retry_after: float) -> Response:
        rl = self.rate_limit
        if reason == "concurrency":
            code = "0x80072326"
            message = f"Number of concurrent requests exceeded the limit of {rl.max_concurrent}."
        else:
            code = "0x80072322"
            window = _fmt_seconds(rl.window_seconds)
            message = (f"Number of requests exceeded the limit of {rl.max_requests} over time window of "
                       f"{window} seconds.")
        return Response.json(429, {"error": {"code": code, "message": message}},
                             {"Retry-After": _fmt_seconds(retry_after)})

    def fault_response(self, status: int, headers: dict[str, str], message: str | None = None) -> Response:
        if status == 429:
            rl = self.rate_limit
            body = {"code": "0x80072322", "message": message or (
                f"Number of requests exceeded the limit of {rl.max_requests or 6000} over time window of "
                f"{_fmt_seconds(rl.window_seconds)} seconds.")}
        elif status == 412:
            body = {"code": "0x80060882", "message": message or
                    "The version of the existing record doesn't match the RowVersion property provided."}
        elif status == 404:
            body = {"code": "0x80040217", "message": message or "The specified object was not found."}
        elif status == 403:
            body = {"code": "0x80040220", "message": message or "The user is missing a privilege."}
        elif status == 400:
            body = {"code": "0x80040203", "message": message or "Invalid argument."}
        else:
            body = {"code": "0x80040216", "message": message or "An unexpected error occurred."}
        return Response.json(status, {"error": body}, headers)

    def handle(self, req: Request) -> Response:
        split = urlsplit(req.target)
        call = _Call(req.method, split.path, split.query, req.headers, req.body, self._caller_of(req.headers))
        with self.lock:
            if API_PREFIX.match(call.path) and unquote(call.path).rstrip("/").endswith("/$batch"):
                return self._batch(req, call)
            return self._execute(call)

    # -- request execution ----------------------------------------------------------------------------------
    def _execute(self, call: _Call) -> Response:
        try:
            return self._route(call)
        except DataverseError as e:
            return self._error(e, call)
        except QueryError as e:
            return self._error(DataverseError(e.status, e.code, e.message), call)

    def _error(self, e: DataverseError, call: _Call | None) -> Response:
        body: dict[str, Any] = {"code": e.code, "message": e.message}
        if call is not None and call.prefer.annotations:
            body["@Microsoft.PowerApps.CDS.ErrorDetails.OperationStatus"] = "0"
            body["@Microsoft.PowerApps.CDS.HelpLink"] = (
                "http://go.microsoft.com/fwlink/?LinkID=398563&error=Microsoft.Crm.CrmException%3a"
                f"{e.code[2:].lower()}&client=platform")
            body["@Microsoft.PowerApps.CDS.InnerError.Message"] = e.message
        return Response.json(e.status, {"error": body}, e.headers)

    def _caller_of(self, headers: CaseInsensitiveDict) -> str:
        caller = (headers.get("MSCRMCallerID") or "").strip().strip("{}").lower()
        if caller and caller in self._rows["systemuser"]:
            return caller
        return self.APP_USER_ID

    def _direct_call(self, by: str | None) -> _Call:
        return _Call("DIRECT", "", "", CaseInsensitiveDict(), b"", (by or self.PERSON_USER_ID).lower())

    def _route(self, call: _Call) -> Response:
        m = API_PREFIX.match(call.path)
        if not m:
            raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{call.path}'.")
        version = m.group(1)
        rest = call.path[m.end():]
        segments = [unquote(s) for s in rest.split("/")] if rest else []
        if segments and segments[-1] == "":
            segments.pop()
        if not segments:
            raise DataverseError(405, "0x80060888", "The service document is not provided by the emulator.")
        base = f"{self.origin}/api/data/{version}/"
        first = segments[0]
        if first.startswith("$") and first[1:].isdigit() and call.content_ids is not None:
            ref = call.content_ids.get(first[1:])
            if ref is None:
                raise DataverseError(400, "0x80060888", f"Content-ID reference '{first}' was not found in this "
                                                        "changeset.")
            first = f"{self.tables[ref[0]].set}({ref[1]})"
        if first in ("WhoAmI", "WhoAmI()"):
            if call.method != "GET":
                raise self._method_not_allowed(call)
            return Response.json(200, {
                "@odata.context": f"{base}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": self.ROOT_BUSINESS_UNIT_ID, "UserId": call.caller,
                "OrganizationId": self.ORGANIZATION_ID})
        if first == "$batch":
            raise DataverseError(400, "0x80060888", "Nested $batch requests are not allowed.")
        if dataverse_metadata.handles(first):  # option-set metadata and its actions
            return dataverse_metadata.route(self, call, segments, base)
        sm = _SEGMENT.match(first)
        t = self._by_set.get(sm.group(1)) if sm else None
        if t is None:
            name = sm.group(1) if sm else first
            raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{name}'.")
        key = sm.group(2)
        tail = segments[1:]
        if key is None:
            if not tail:
                if call.method == "GET":
                    return self._list(call, t, base)
                if call.method == "POST":
                    return self._post(call, t, base)
                raise self._method_not_allowed(call)
            if tail == ["$count"] and call.method == "GET":
                return self._count(call, t)
            raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{tail[0]}'.")
        if not tail:
            if call.method == "GET":
                return self._get_one(call, t, key, base)
            if call.method == "PATCH":
                return self._patch(call, t, key, base)
            if call.method == "DELETE":
                return self._delete_request(call, t, key)
            raise self._method_not_allowed(call)
        return self._sub_resource(call, t, key, tail, base)

    def _method_not_allowed(self, call: _Call) -> DataverseError:
        return DataverseError(405, "0x80060888", f"The requested resource does not support http method "
                                                 f"'{call.method}'.")

    # -- keys -----------------------------------------------------------------------------------------------
    def _resolve_key(self, t: Table, key: str) -> tuple[str | None, dict[str, Any] | None, str]:
        """``(existing id or None, alternate-key values or None, text for messages)``."""
        parsed = parse_key_segment(key)
        if isinstance(parsed, str):
            return (parsed if parsed in self._rows[t.logical] else None), None, parsed
        if len(parsed) == 1 and t.pk in parsed:
            lit = parsed[t.pk]
            if lit.edm != "Edm.Guid":
                raise QueryError(f"The key value for '{t.pk}' must be a GUID.")
            return (lit.value if lit.value in self._rows[t.logical] else None), None, lit.value
        cols: dict[str, Column] = {}
        for name in parsed:
            col = t.by_api_name.get(name)
            if col is None:
                raise not_found_property(name, t)
            cols[name] = col
        wanted = {c.name for c in cols.values()}
        key_name = next((k for k, kc in t.alternate_keys.items() if set(kc) == wanted), None)
        if key_name is None:
            raise DataverseError(400, "0x80060888", f"The key specified to retrieve the record is invalid: no "
                                                    f"alternate key of {t.logical} is made of "
                                                    f"{', '.join(sorted(wanted))}.")
        values: dict[str, Any] = {}
        for name, lit in parsed.items():
            col = cols[name]
            values[col.name] = self._key_literal(t, col, lit)
        norm = tuple(_key_norm(values[c]) for c in t.alternate_keys[key_name])
        found = self._key_index[(t.logical, key_name)].get(norm)
        text = ",".join(f"{k}:{_json_value(v)}" for k, v in values.items())
        return found, values, text

    def _key_literal(self, t: Table, col: Column, lit: Lit) -> Any:
        if col.is_lookup:
            if lit.edm != "Edm.Guid":
                raise QueryError(f"The key value for '{col.api_name}' must be a GUID.")
            target = (col.targets or ("",))[0]
            return Ref(self._logical_of_id(col, lit.value) or target, lit.value)
        if col.edm == "Edm.String" and lit.edm == "Edm.String":
            return lit.value
        if col.edm in ("Edm.Int32", "Edm.Int64") and lit.edm in ("Edm.Int32", "Edm.Int64"):
            return lit.value
        if col.edm in ("Edm.Decimal", "Edm.Double") and lit.edm in ("Edm.Int32", "Edm.Int64", "Edm.Decimal",
                                                                    "Edm.Double"):
            return lit.value
        if col.edm == lit.edm:
            return lit.value
        raise QueryError(f"The key value for '{col.api_name}' has the type '{lit.edm}', expected '{col.edm}'.")

    def _logical_of_id(self, col: Column, row_id: str) -> str | None:
        for target in col.targets or ():
            if target in self._rows and row_id in self._rows[target]:
                return target
        return None

    def _existing(self, t: Table, key: str) -> str:
        row_id, _, text = self._resolve_key(t, key)
        if row_id is None:
            raise self._missing(t, key, text)
        return row_id

    def _missing(self, t: Table, key: str, text: str) -> DataverseError:
        if _GUID.match(key.strip()) or key.strip().startswith(t.pk):
            return _does_not_exist(t.logical, text)
        return DataverseError(404, "0x80040217", f"A record with the specified key values does not exist in "
                                                 f"{t.logical} entity")

    # -- reads ----------------------------------------------------------------------------------------------
    def _check_query_options(self, call: _Call, allowed: set[str]) -> None:
        for name in call.query:
            if name.startswith("$"):
                if name == "$skip":
                    raise DataverseError(400, "0x80060888", "The query parameter $skip is not supported")
                if name not in allowed:
                    raise DataverseError(400, "0x80060888", f"The query parameter {name} is not supported")
            elif name in ("fetchXml", "savedQuery", "userQuery"):
                raise DataverseError(400, "0x80060888", f"The emulator does not support the '{name}' parameter.")

    def _get_one(self, call: _Call, t: Table, key: str, base: str) -> Response:
        self._check_query_options(call, {"$select", "$expand"})
        row_id = self._existing(t, key)
        row = self._rows[t.logical][row_id]
        select = parse_select(call.query.get("$select"), t)
        expand = self._parse_expand(call.query.get("$expand"), t)
        etag = f'W/"{row["versionnumber"]}"'
        inm = call.headers.get("If-None-Match")
        if inm and inm == etag and not expand and not call.prefer.annotations:
            return Response.empty(304, {"ETag": etag})
        body = {"@odata.context": f"{base}$metadata#{t.set}{_select_suffix(call)}/$entity"}
        body.update(self._serialize(t, row, select, call.prefer, expand))
        return Response.json(200, body, {"ETag": etag, **self._applied(call.prefer, annotations=True)})

    def _count(self, call: _Call, t: Table) -> Response:
        self._check_query_options(call, {"$filter", "$deltatoken"})
        if "$deltatoken" in call.query:
            since = self._delta_version(call.query["$deltatoken"])
            n = len({(s, i) for v, s, i, _ in self._changes_since(since) if s == t.logical})
        else:
            pred = compile_filter(call.query["$filter"], t) if call.query.get("$filter") else None
            rows = self._rows[t.logical].values()
            n = sum(1 for r in rows if pred is None or pred(r))
        return Response(200, str(min(n, COUNT_LIMIT)).encode(), {"Content-Type": "text/plain", "OData-Version":
                                                                 "4.0"})

    def _list(self, call: _Call, t: Table, base: str, *, parent: tuple[str, str] | None = None) -> Response:
        q = call.query
        self._check_query_options(call, {"$select", "$filter", "$orderby", "$top", "$count", "$expand",
                                         "$skiptoken", "$deltatoken"})
        select = parse_select(q.get("$select"), t)
        if "$deltatoken" in q:
            return self._delta(call, t, base, select)
        expand = self._parse_expand(q.get("$expand"), t)
        orderby = parse_orderby(q.get("$orderby"), t)
        pred = compile_filter(q["$filter"], t) if q.get("$filter") is not None else None
        top = None
        if "$top" in q:
            try:
                top = int(q["$top"])
                if top < 0:
                    raise ValueError
            except ValueError:
                raise DataverseError(400, "0x80060888", f"Invalid value '{q['$top']}' for $top query option "
                                                        "found. The $top query option requires a non-negative "
                                                        "integer value.") from None
        count = q.get("$count")
        if count not in (None, "true", "false"):
            raise DataverseError(400, "0x80060888", f"'{count}' is not a valid count option.")
        prefer = call.prefer
        tracking = prefer.track_changes and parent is None
        if tracking and (pred is not None or orderby or top is not None or expand):
            raise DataverseError(400, "0x80060888", "Change tracking (Prefer: odata.track-changes) can't be "
                                                    "combined with $filter, $orderby, $top or $expand.")
        if parent is not None:
            col_name, parent_id = parent
            base_pred = pred

            def pred(row, _c=col_name, _p=parent_id, _b=base_pred):  # noqa: E731 - closure over the parent
                ref = row.get(_c)
                return ref is not None and ref.id == _p and (_b is None or _b(row))
        page_size = prefer.maxpagesize if prefer.maxpagesize and 0 < prefer.maxpagesize <= MAX_PAGE_SIZE \
            else MAX_PAGE_SIZE
        cursor = self._decode_skiptoken(q["$skiptoken"]) if "$skiptoken" in q else None
        snapshot = cursor.get("v") if cursor else (self._version if tracking else None)
        limit = top if top is not None else page_size
        rows, more = self._page(t, pred, orderby, cursor, limit)
        if top is not None:
            more = False
        body: dict[str, Any] = {"@odata.context": f"{base}$metadata#{t.set}{_select_suffix(call)}"}
        if count == "true":
            total = sum(1 for r in self._rows[t.logical].values() if pred is None or pred(r))
            body["@odata.count"] = min(total, COUNT_LIMIT)
            if total > COUNT_LIMIT:
                body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        body["value"] = [self._serialize(t, r, select, prefer, expand) for r in rows]
        query_without_token = "&".join(p for p in call.raw_query.split("&")
                                       if p and unquote_plus(p.partition("=")[0]) != "$skiptoken")
        if more:
            last = rows[-1]
            token = {"p": (cursor or {}).get("p", 1) + 1, "k": self._sort_key(t, orderby, last), "v": snapshot}
            link_query = (query_without_token + "&" if query_without_token else "") + \
                f"$skiptoken={self._encode_skiptoken(token)}"
            body["@odata.nextLink"] = f"{self.origin}{call.path}?{link_query}"
        elif tracking:
            body["@odata.deltaLink"] = self._delta_link(call, snapshot or self._version)
        headers = self._applied(prefer, annotations=True, maxpagesize=prefer.maxpagesize is not None,
                                tracking=tracking)
        return Response.json(200, body, headers)

    def _applied(self, prefer: Prefer, *, annotations: bool = False, maxpagesize: bool = False,
                 tracking: bool = False, representation: bool = False) -> dict[str, str]:
        applied = []
        if representation and prefer.representation:
            applied.append("return=representation")
        if annotations and prefer.raw_annotations:
            applied.append(f"odata.include-annotations={prefer.raw_annotations}")
        if maxpagesize and prefer.maxpagesize:
            applied.append(f"odata.maxpagesize={min(prefer.maxpagesize, MAX_PAGE_SIZE)}")
        if tracking:
            applied.append("odata.track-changes")
        return {"Preference-Applied": ",".join(applied)} if applied else {}

    def _sort_key(self, t: Table, orderby: list[tuple[Column, bool]], row: dict) -> list:
        key = [sort_key_value(col, row.get(col.name)) for col, _ in orderby]
        key.append([1, row[t.pk]])
        return key

    def _page(self, t: Table, pred, orderby, cursor: dict | None, limit: int) -> tuple[list[dict], bool]:
        """Up to ``limit`` rows after the cursor, and whether more follow. Default order: primary key."""
        rows = self._rows[t.logical]
        out: list[dict] = []
        if not orderby:
            ids = self._order[t.logical]
            start = bisect.bisect_right(ids, cursor["k"][-1][1]) if cursor else 0
            for i in range(start, len(ids)):
                row = rows[ids[i]]
                if pred is None or pred(row):
                    if len(out) == limit:
                        return out, True
                    out.append(row)
            return out, False
        directions = [desc for _, desc in orderby] + [False]
        keyed = [(self._sort_key(t, orderby, r), r) for r in rows.values() if pred is None or pred(r)]
        keyed.sort(key=functools.cmp_to_key(lambda a, b: compare_keys(a[0], b[0], directions)))
        start = 0
        if cursor:
            last = cursor["k"]
            start = next((i for i, (k, _) in enumerate(keyed) if compare_keys(k, last, directions) > 0), len(keyed))
        chunk = keyed[start:start + limit + 1]
        return [r for _, r in chunk[:limit]], len(chunk) > limit

    def _encode_skiptoken(self, token: dict) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()).decode().rstrip("=")
        cookie = (f'<cookie pagenumber="{token["p"]}" pagingcookie="{payload}" istracking="'
                  f'{"True" if token.get("v") else "False"}" />')
        return quote(cookie, safe="=/")

    def _decode_skiptoken(self, text: str) -> dict:
        m = re.search(r'pagingcookie="([A-Za-z0-9_\-]+)"', text)
        try:
            if not m:
                raise ValueError
            raw = m.group(1)
            token = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            if not isinstance(token, dict) or not isinstance(token.get("k"), list) or not token["k"]:
                raise ValueError
            return token
        except (ValueError, json.JSONDecodeError):
            raise DataverseError(400, "0x80060888", "The $skiptoken value is not valid. Use the "
                                                    "@odata.nextLink of the previous page unchanged.") from None

    # -- change tracking ------------------------------------------------------------------------------------
    def _delta_link(self, call: _Call, version: int) -> str:
        token = f"{version}!{self.now().astimezone(timezone.utc).strftime('%m/%d/%Y %H:%M:%S')}"
        select = call.query.get("$select")
        query = (f"$select={quote(select, safe=',')}&" if select else "") + f"$deltatoken={quote(token, safe='')}"
        m = API_PREFIX.match(call.path)
        version_seg = m.group(1) if m else "v9.2"
        t_path = call.path[m.end():] if m else call.path
        return f"{self.origin}/api/data/{version_seg}/{t_path}?{query}"

    def _delta_version(self, token: str) -> int:
        try:
            return int(token.split("!", 1)[0])
        except ValueError:
            raise DataverseError(400, "0x80060888", f"The delta token '{token}' is not valid.") from None

    def _changes_since(self, version: int) -> list[tuple[int, str, str, bool]]:
        start = bisect.bisect_right(self._change_versions, version)
        return self._changes[start:]

    def _delta(self, call: _Call, t: Table, base: str, select: list[Column] | None) -> Response:
        since = self._delta_version(call.query["$deltatoken"])
        latest: dict[str, tuple[int, bool]] = {}
        for v, logical, row_id, deleted in self._changes_since(since):
            if logical == t.logical:
                latest.pop(row_id, None)
                latest[row_id] = (v, deleted)
        value: list[dict] = []
        for row_id, (_, deleted) in latest.items():
            row = self._rows[t.logical].get(row_id)
            if row is None:
                value.append({"@odata.context": f"{base}$metadata#{t.set}/$deletedEntity", "id": row_id,
                              "reason": "deleted"})
            else:
                value.append(self._serialize(t, row, select, call.prefer))
        body = {"@odata.context": f"{base}$metadata#{t.set}{_select_suffix(call)}/$delta",
                "@odata.deltaLink": self._delta_link(call, self._version), "value": value}
        return Response.json(200, body, self._applied(call.prefer, annotations=True,
                                                      tracking=call.prefer.track_changes))

    # -- $expand --------------------------------------------------------------------------------------------
    def _parse_expand(self, text: str | None, t: Table) -> list[_Expand]:
        if not text:
            return []
        out = []
        for item in _split_top(text):
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?$", item, re.DOTALL)
            if not m:
                raise DataverseError(400, "0x80060888", f"Syntax error in $expand '{text}'.")
            nav, opts = m.group(1), m.group(2)
            if nav not in t.navs and nav not in t.collections:
                raise not_found_property(nav, t)
            select = None
            for opt in _split_top(opts or "", ";"):
                name, _, value = opt.partition("=")
                if name.strip() != "$select":
                    raise DataverseError(400, "0x80060888", f"The emulator supports only $select inside $expand "
                                                            f"(got '{name.strip()}').")
                select = value
            target = self.tables[t.navs[nav].targets[0]] if nav in t.navs else \
                self.tables[t.collections[nav].child]
            parse_select(select, target)
            out.append(_Expand(nav, select))
        return out

    def _expanded(self, t: Table, row: dict, exp: _Expand, prefer: Prefer | None) -> Any:
        if exp.nav in t.navs:
            nav = t.navs[exp.nav]
            ref = row.get(nav.column)
            if ref is None or ref.logical not in nav.targets:
                return None
            target_t = self.tables[ref.logical]
            target = self._rows[ref.logical].get(ref.id)
            return self._serialize(target_t, target, parse_select(exp.select, target_t), prefer) if target else None
        coll = t.collections[exp.nav]
        child_t = self.tables[coll.child]
        sel = parse_select(exp.select, child_t)
        rid = row[t.pk]
        children = self._refs.get((t.logical, rid), ())
        ids = sorted(cid for (cl, cid, ccol) in children if cl == coll.child and ccol == coll.column)
        return [self._serialize(child_t, self._rows[coll.child][i], sel, prefer) for i in ids]

    # -- serialization --------------------------------------------------------------------------------------
    def _serialize(self, t: Table, row: dict, select: list[Column] | None = None, prefer: Prefer | None = None,
                   expand: list[_Expand] | None = None) -> dict:
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
        if select is None and not expand and (prefer is None or not prefer.annotations):
            get = row.get
            for name, api_name in self._plain_cols[t.logical]:
                v = get(name)
                if v is not None and (v.__class__ is Ref or v.__class__ is datetime):
                    v = _json_value(v)
                out[api_name] = v
            return out
        if select is None:
            cols: list[Column] = list(t.columns.values())
        else:
            cols = list(select)
            if t.columns[t.pk] not in cols:
                cols.append(t.columns[t.pk])
            if any(c.type == "Money" for c in cols) and "transactioncurrencyid" in t.columns and \
                    t.columns["transactioncurrencyid"] not in cols:
                cols.append(t.columns["transactioncurrencyid"])
        annotate = prefer is not None and bool(prefer.annotations)
        for col in cols:
            value = row.get(col.name)
            name = col.api_name
            if annotate and value is not None:
                self._annotate(out, t, col, value, prefer, row)  # type: ignore[arg-type]
            out[name] = _json_value(value)
        for exp in expand or ():
            out[exp.nav] = self._expanded(t, row, exp, prefer)
        return out

    def _annotate(self, out: dict, t: Table, col: Column, value: Any, prefer: Prefer, row: dict) -> None:
        name = col.api_name
        formatted = self._formatted(t, col, value, row)
        if formatted is not None and prefer.wants("OData.Community.Display.V1.FormattedValue"):
            out[f"{name}@OData.Community.Display.V1.FormattedValue"] = formatted
        if isinstance(value, Ref):
            if prefer.wants("Microsoft.Dynamics.CRM.associatednavigationproperty"):
                out[f"{name}@Microsoft.Dynamics.CRM.associatednavigationproperty"] = \
                    self._nav_for.get((t.logical, col.name, value.logical), col.name)
            if prefer.wants("Microsoft.Dynamics.CRM.lookuplogicalname"):
                out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = value.logical

    def _formatted(self, t: Table, col: Column, value: Any, row: dict | None) -> str | None:
        """The ``FormattedValue`` label (en-US, UTC) of a stored value, or None."""
        if value is None:
            return None
        if col.type in OPTION_TYPES and col.options:
            return col.options.get(value)
        if col.type == "Boolean":
            return "Yes" if value else "No"
        if isinstance(value, Ref):
            target = self.tables.get(value.logical)
            referenced = self._rows.get(value.logical, {}).get(value.id)
            if target is None or referenced is None:
                return None
            return referenced.get(target.primary_name)
        if col.type == "DateTime":
            v = value.astimezone(timezone.utc)
            hour = v.hour % 12 or 12
            return f"{v.month}/{v.day}/{v.year} {hour}:{v.minute:02d} {'AM' if v.hour < 12 else 'PM'}"
        if col.type == "Money":
            symbol = "$"
            cur = (row or {}).get("transactioncurrencyid")
            if cur is not None and cur.id in self._rows["transactioncurrency"]:
                symbol = self._rows["transactioncurrency"][cur.id].get("currencysymbol") or symbol
            return f"{symbol}{value:,.2f}" if value >= 0 else f"-{symbol}{-value:,.2f}"
        if col.type == "Integer":
            return f"{value:,}"
        if col.type == "Decimal":
            return f"{value:,.2f}"
        return None

    # -- writes (HTTP) --------------------------------------------------------------------------------------
    def _body(self, call: _Call, t: Table) -> dict:
        if not call.body:
            return {}
        try:
            data = json.loads(call.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _payload_error(t, f"Invalid JSON. {exc}") from None
        if not isinstance(data, dict):
            raise _payload_error(t, "A JSON object was expected as the request body.")
        return data

    def _entity_id_url(self, base: str, t: Table, row_id: str) -> str:
        return f"{base}{t.set}({row_id})"

    def _write_response(self, call: _Call, t: Table, row: dict, base: str, *, created: bool,
                        is_post: bool) -> Response:
        url = self._entity_id_url(base, t, row[t.pk])
        if call.prefer.representation:
            select = parse_select(call.query.get("$select"), t)
            body = {"@odata.context": f"{base}$metadata#{t.set}{_select_suffix(call)}/$entity"}
            body.update(self._serialize(t, row, select, call.prefer))
            headers = {"ETag": f'W/"{row["versionnumber"]}"',
                       **self._applied(call.prefer, annotations=True, representation=True)}
            if not is_post:
                headers["OData-EntityId"] = url
            return Response.json(201 if created else 200, body, headers)
        return Response.empty(204, {"OData-EntityId": url})

    def _post(self, call: _Call, t: Table, base: str, *, parent: tuple[Column, Ref] | None = None) -> Response:
        self._check_query_options(call, {"$select"})
        fields = self._body(call, t)
        if call.prefer.representation:
            parse_select(call.query.get("$select"), t)
        row = self._create(t, fields, call, preset={parent[0].name: parent[1]} if parent else None)
        self._counted_write(call)
        return self._write_response(call, t, row, base, created=True, is_post=True)

    def _patch(self, call: _Call, t: Table, key: str, base: str) -> Response:
        self._check_query_options(call, {"$select"})
        fields = self._body(call, t)
        row_id, key_values, text = self._resolve_key(t, key)
        if_match = (call.headers.get("If-Match") or "").strip()
        if_none = (call.headers.get("If-None-Match") or "").strip()
        if if_none == "*" and row_id is not None:
            raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")
        if if_match:
            if row_id is None:
                raise self._missing(t, key, text)
            self._check_etag(t, row_id, if_match)
        if call.prefer.representation:
            parse_select(call.query.get("$select"), t)
        if row_id is not None:
            for k in (key_values or {}):
                fields.pop(k, None)
            row = self._update(t, row_id, fields, call)
            created = False
        else:
            new_id = text if key_values is None else None
            row = self._create(t, fields, call, row_id=new_id, preset=key_values)
            created = True
        self._counted_write(call)
        return self._write_response(call, t, row, base, created=created, is_post=False)

    def _check_etag(self, t: Table, row_id: str, if_match: str) -> None:
        if if_match == "*":
            return
        current = f'W/"{self._rows[t.logical][row_id]["versionnumber"]}"'
        if if_match not in (current, current[2:]):
            raise DataverseError(412, "0x80060882",
                                 "The version of the existing record doesn't match the RowVersion property "
                                 "provided.")

    def _delete_request(self, call: _Call, t: Table, key: str) -> Response:
        self._check_query_options(call, set())
        row_id = self._existing(t, key)
        if_match = (call.headers.get("If-Match") or "").strip()
        if if_match:
            self._check_etag(t, row_id, if_match)
        self._delete(t, row_id, call)
        self._counted_write(call)
        return Response.empty(204)

    def _sub_resource(self, call: _Call, t: Table, key: str, tail: list[str], base: str) -> Response:
        name = tail[0]
        row_id = self._existing(t, key)
        row = self._rows[t.logical][row_id]
        if name in t.collections and len(tail) == 1:
            coll = t.collections[name]
            child = self.tables[coll.child]
            if call.method == "GET":
                return self._list(call, child, base, parent=(coll.column, row_id))
            if call.method == "POST":
                return self._post(call, child, base, parent=(child.columns[coll.column], Ref(t.logical, row_id)))
            raise self._method_not_allowed(call)
        if name in t.navs:
            nav = t.navs[name]
            if tail[1:] == ["$ref"]:
                if call.method == "DELETE":
                    self._update(t, row_id, {f"{name}@odata.bind": None}, call)
                    self._counted_write(call)
                    return Response.empty(204)
                if call.method == "PUT":
                    body = self._body(call, t)
                    self._update(t, row_id, {f"{name}@odata.bind": body.get("@odata.id")}, call)
                    self._counted_write(call)
                    return Response.empty(204)
                raise self._method_not_allowed(call)
            if len(tail) == 1 and call.method == "GET":
                ref = row.get(nav.column)
                if ref is None or ref.logical not in nav.targets or ref.id not in self._rows[ref.logical]:
                    return Response.empty(204)
                target = self.tables[ref.logical]
                body = {"@odata.context": f"{base}$metadata#{target.set}/$entity"}
                body.update(self._serialize(target, self._rows[ref.logical][ref.id],
                                            parse_select(call.query.get("$select"), target), call.prefer))
                return Response.json(200, body)
            raise self._method_not_allowed(call)
        col = t.columns.get(name)
        if col is not None and not col.is_lookup and len(tail) == 1:
            if call.method == "GET":
                return Response.json(200, {"@odata.context": f"{base}$metadata#{t.set}({row_id})/{name}",
                                           "value": _json_value(row.get(name))})
            if call.method == "PUT":
                body = self._body(call, t)
                if "value" not in body:
                    raise _payload_error(t, "A 'value' property was expected for a single-property update.")
                self._update(t, row_id, {name: body["value"]}, call)
                self._counted_write(call)
                return Response.empty(204)
            if call.method == "DELETE":
                self._update(t, row_id, {name: None}, call)
                self._counted_write(call)
                return Response.empty(204)
            raise self._method_not_allowed(call)
        raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{name}'.")

    def _counted_write(self, call: _Call) -> None:
        if call.in_changeset:
            return  # counted when the changeset commits
        self.count_write()

    # -- $batch ---------------------------------------------------------------------------------------------
    def _batch(self, req: Request, outer: _Call) -> Response:
        if outer.method != "POST":
            return self._error(self._method_not_allowed(outer), outer)
        try:
            items = parse_batch(req.body, req.headers.get("Content-Type"))
        except BatchFormatError as e:
            return self._error(DataverseError(400, "0x80060888", str(e)), outer)
        n = sum(len(i.requests) if isinstance(i, Changeset) else 1 for i in items)
        if n > MAX_BATCH_REQUESTS:
            return self._error(DataverseError(400, "0x80060888", f"The number of requests in the batch ({n}) "
                                                                 f"exceeds the limit of {MAX_BATCH_REQUESTS}."), outer)
        if n > 1 and not self.admit_operations(n - 1):
            with self._window_lock:
                self.stats.throttled += 1
            return self.throttled(req, reason="requests", retry_after=max(self.window_retry_after(), 0.05))
        continue_on_error = outer.prefer.continue_on_error
        responses: list[PartResponse | ChangesetResponse] = []
        for item in items:
            if isinstance(item, Changeset):
                result, failed = self._run_changeset(item, outer)
                responses.append(result)
            else:
                resp = self._run_part(item, outer, None)
                responses.append(resp)
                failed = resp.status >= 400
            if failed and not continue_on_error:
                break
        content_type, body = format_batch_response(responses)
        headers = {"Content-Type": content_type, "OData-Version": "4.0"}
        if continue_on_error:
            headers["Preference-Applied"] = "odata.continue-on-error"
        return Response(200, body, headers)

    def _inner_call(self, part: BatchRequest, outer: _Call, content_ids: dict | None) -> _Call:
        url = part.url
        if "://" in url:
            split = urlsplit(url)
            path, query = split.path, split.query
        else:
            path, _, query = url.partition("?")
            if not path.startswith("/"):
                if path.startswith("$"):
                    path = "/api/data/v9.2/" + path
                else:
                    m = API_PREFIX.match(outer.path)
                    path = f"/api/data/{m.group(1) if m else 'v9.2'}/" + path
        headers = CaseInsensitiveDict(part.headers.items())
        return _Call(part.method, path, query, headers, part.body, self._caller_of(headers) if
                     headers.get("MSCRMCallerID") else outer.caller, content_ids if content_ids is not None else {},
                     in_changeset=content_ids is not None)

    def _run_part(self, part: BatchRequest, outer: _Call, content_ids: dict | None) -> PartResponse:
        call = self._inner_call(part, outer, content_ids)
        if content_ids is not None and part.method == "GET":
            resp = self._error(DataverseError(400, "0x80060888", "GET requests are not allowed inside a "
                                                                 "changeset."), call)
        elif content_ids is not None and part.content_id is None:
            resp = self._error(DataverseError(400, "0x80060888", "Each request of a changeset needs a Content-ID "
                                                                 "header."), call)
        else:
            resp = self._execute(call)
        headers = dict(resp.headers)
        if resp.status in (201, 204) and "OData-EntityId" in headers and call.method == "POST":
            headers = {"OData-Version": "4.0", "Location": headers["OData-EntityId"], **headers}
        if content_ids is not None and part.content_id is not None and resp.status < 400:
            ref = self._ref_of_url(resp, headers)
            if ref is not None:
                content_ids[part.content_id] = ref
        return PartResponse(resp.status, headers, resp.body, part.content_id)

    def _ref_of_url(self, resp: Response, headers: dict) -> tuple[str, str] | None:
        """The row a changeset request created or changed, for later ``$n`` references."""
        url = headers.get("OData-EntityId")
        if url:
            m = re.search(r"/([A-Za-z_][A-Za-z0-9_]*)\(([0-9a-fA-F-]{36})\)$", url)
            if m and m.group(1) in self._by_set:
                return self._by_set[m.group(1)].logical, m.group(2).lower()
        if resp.body:
            try:
                data = json.loads(resp.body)
            except ValueError:
                return None
            ctx = data.get("@odata.context", "")
            m = re.search(r"#([A-Za-z_][A-Za-z0-9_]*)", ctx)
            if m and m.group(1) in self._by_set:
                t = self._by_set[m.group(1)]
                if data.get(t.pk):
                    return t.logical, data[t.pk]
        return None

    def _run_changeset(self, cs: Changeset, outer: _Call) -> tuple[PartResponse | ChangesetResponse, bool]:
        """All or nothing: the first failure undoes the changeset's writes and is its only response part."""
        self._undo = []
        change_mark = len(self._changes)
        content_ids: dict[str, tuple[str, str]] = {}
        parts: list[PartResponse] = []
        try:
            for part in cs.requests:
                resp = self._run_part(part, outer, content_ids)
                if resp.status >= 400:
                    self._rollback(change_mark)
                    return resp, True
                parts.append(resp)
            self.count_write(len(parts))
            return ChangesetResponse(parts), False
        finally:
            self._undo = None

    def _rollback(self, change_mark: int) -> None:
        undo = self._undo or []
        self._undo = None
        for t, row_id, old in reversed(undo):
            current = self._rows[t.logical].get(row_id)
            if current is not None and current.get("versionnumber") is not None:
                # Remember it: a later write gets a higher version, so "row version >= the write's" alone
                # can't tell a webhook sender that this write never committed.
                self.rolled_back_versions.add(current["versionnumber"])
            self._raw_store(t, row_id, old)
            if old is not None:
                self._tombstones.pop((t.logical, row_id), None)
        del self._changes[change_mark:]
        del self._change_versions[change_mark:]

    # -- the data layer (same path for HTTP and the direct API) ---------------------------------------------
    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _now(self) -> datetime:
        return self.now().astimezone(timezone.utc).replace(microsecond=0)

    def _parse_fields(self, t: Table, fields: dict, call: _Call, *, creating: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key.startswith("@"):
                continue
            if "@" in key:
                prop, _, annotation = key.partition("@")
                if annotation != "odata.bind":
                    continue
                nav = t.navs.get(prop)
                if nav is None:
                    if prop in t.collections:
                        raise _payload_error(t, f"Binding the collection-valued navigation property '{prop}' "
                                                "is not supported by the emulator; bind the lookup on the child.")
                    raise _payload_error(t, f"An undeclared property '{prop}' which only has property annotations "
                                            "in the payload but no property value was found in the payload. In "
                                            "OData, only declared navigation properties and declared named "
                                            "streams can be represented as properties without values.")
                col = t.columns[nav.column]
                if not (col.writable_on_create if creating else col.writable_on_update):
                    continue
                if value is None:
                    out[col.name] = None
                    continue
                if not isinstance(value, str):
                    raise _payload_error(t, f"The value of '{key}' must be a URL string or null.")
                out[col.name] = self._resolve_bind(t, nav, value, call)
                continue
            col = t.columns.get(key)
            if col is None:
                by_api = t.by_api_name.get(key)
                if by_api is not None and by_api.is_lookup:
                    raise DataverseError(400, "0x80060888", "CRM do not support direct update of Entity Reference "
                                                            f"properties, Use Navigation properties instead "
                                                            f"('{key}').")
                if key in t.navs or key in t.collections:
                    raise _payload_error(t, f"Deep insert through the navigation property '{key}' is not "
                                            "supported by the emulator; use '{key}@odata.bind'.")
                raise _payload_error(t, f"The property '{key}' does not exist on type '{t.odata_type}'. Make sure "
                                        "to only use property names that are defined by the type or mark the type "
                                        "as open type.")
            if col.is_lookup:
                raise _payload_error(t, f"A 'PrimitiveValue' node was read from the JSON reader when trying to read "
                                        f"the contents of the navigation property '{key}'; however, a 'StartObject' "
                                        "node was expected.")
            if col.name == t.pk:
                if creating:
                    out[col.name] = self._convert(t, col, value)
                continue
            if not (col.writable_on_create if creating else col.writable_on_update):
                continue
            out[col.name] = self._convert(t, col, value)
        return out

    def _convert(self, t: Table, col: Column, value: Any) -> Any:
        if value is None:
            return None
        edm = col.edm

        def wrong() -> DataverseError:
            shown = json.dumps(value) if not isinstance(value, str) else value
            return _payload_error(t, f"Cannot convert the literal '{shown}' to the expected type '{edm}'.")
        if col.type in ("String", "Memo"):
            if not isinstance(value, str):
                raise wrong()
            if value == "":
                return None  # Dataverse stores empty text as null
            limit = col.max_length or (MEMO_DEFAULT_MAX if col.type == "Memo" else 4000)
            if len(value) > limit:
                raise DataverseError(400, "0x80044331", f"A validation error occurred. The length of the "
                                                        f"'{col.name}' attribute of the '{t.logical}' entity exceeded "
                                                        f"the maximum allowed length of '{limit}'.")
            return value
        if col.type == "Boolean":
            if not isinstance(value, bool):
                raise wrong()
            return value
        if col.type in OPTION_TYPES or col.type in ("Integer", "BigInt"):
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise wrong()
            if col.type in OPTION_TYPES:
                if col.options is None or value not in col.options:
                    accepted = ",".join(str(k) for k in (col.options or {}))
                    raise DataverseError(400, "0x8004431A", f"A validation error occurred. The value {value} of "
                                                            f"'{col.name}' on record of type '{t.logical}' is outside "
                                                            f"the valid range. Accepted Values: {accepted}")
            elif col.type == "Integer" and not (_INT_RANGE[0] <= value <= _INT_RANGE[1]):
                raise self._out_of_range(t, col, value)
            return value
        if col.type in NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise wrong()
            if col.type == "Money":
                lo, hi = _PRICE_RANGE if (t.logical == "product" and col.name in (
                    "price", "standardcost", "currentcost")) else _MONEY_RANGE
                if not lo <= value <= hi:
                    raise self._out_of_range(t, col, value)
            return value
        if col.type == "DateTime":
            if not isinstance(value, str):
                raise wrong()
            try:
                text = value.replace("Z", "+00:00")
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise wrong() from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.astimezone(timezone.utc).replace(microsecond=0)
        if col.type == "Uniqueidentifier":
            if not isinstance(value, str) or not _GUID.match(value.strip("{}")):
                raise wrong()
            return value.strip("{}").lower()
        raise wrong()

    def _out_of_range(self, t: Table, col: Column, value: Any) -> DataverseError:
        return DataverseError(400, "0x8004431A", f"A validation error occurred. The value {value} of '{col.name}' "
                                                 f"on record of type '{t.logical}' is outside the valid range.")

    def _resolve_bind(self, t: Table, nav: Nav, value: str, call: _Call) -> Ref:
        text = value.strip()
        if text.startswith("$") and text[1:].isdigit():
            ref = call.content_ids.get(text[1:]) if call.content_ids is not None else None
            if ref is None:
                raise DataverseError(400, "0x80060888", f"Content-ID reference '{text}' was not found in this "
                                                        "changeset.")
            if ref[0] not in nav.targets:
                raise _payload_error(t, f"The row referenced by '{text}' can't be bound to '{nav.name}'.")
            return Ref(ref[0], ref[1])
        path = unquote(urlsplit(text).path if "://" in text else text)
        path = re.sub(r"^/?api/data/v9\.[012]/", "", path).lstrip("/")
        sm = _SEGMENT.match(path)
        if not sm or sm.group(2) is None:
            raise _payload_error(t, f"The value '{value}' of '{nav.name}@odata.bind' is not a valid entity URL.")
        target = self._by_set.get(sm.group(1))
        if target is None:
            raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{sm.group(1)}'.")
        if target.logical not in nav.targets:
            raise _payload_error(t, f"The entity set '{target.set}' is not a valid target of the navigation "
                                    f"property '{nav.name}' (expected {', '.join(nav.targets)}).")
        row_id, _, key_text = self._resolve_key(target, sm.group(2))
        if row_id is None:
            raise self._missing(target, sm.group(2), key_text)
        return Ref(target.logical, row_id)

    def _create(self, t: Table, fields: dict, call: _Call, *, row_id: str | None = None,
                preset: dict[str, Any] | None = None) -> dict:
        changes = self._parse_fields(t, fields, call, creating=True)
        if preset:
            changes.update(preset)
        new_id = (row_id or changes.pop(t.pk, None) or str(uuid.uuid4())).lower()
        changes.pop(t.pk, None)
        if new_id in self._rows[t.logical]:
            raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")
        row: dict[str, Any] = {t.pk: new_id}
        self._apply_defaults(t, row, call)
        row.update(changes)
        self._reconcile_state(t, row, changes, creating=True, row_id=new_id)
        self._check_required(t, row, row, creating=True)
        self._table_rules(t, row, changes, creating=True)
        self._compute(t, row)
        now = self._now()
        row["createdon"] = row["modifiedon"] = now
        row["createdby"] = row["modifiedby"] = Ref("systemuser", call.caller)
        row["versionnumber"] = self._next_version()
        self._store(t, new_id, row)
        self._log_change(t, new_id, deleted=False, version=row["versionnumber"])
        self._last_changed[(t.logical, new_id)] = tuple(k for k in row)
        if t.logical == "uomschedule":
            self._create_base_unit(row, call)
        if self.webhooks is not None:
            self.webhooks.written(t, new_id, "Create", call.caller, None)
        return row

    def _update(self, t: Table, row_id: str, fields: dict, call: _Call) -> dict:
        old = self._rows[t.logical][row_id]
        changes = self._parse_fields(t, fields, call, creating=False)
        row = dict(old)
        row.update(changes)
        self._reconcile_state(t, row, changes, creating=False, row_id=row_id)
        self._check_required(t, row, changes, creating=False)
        self._table_rules(t, row, changes, creating=False)
        self._compute(t, row)
        row["modifiedon"] = self._now()
        row["modifiedby"] = Ref("systemuser", call.caller)
        row["versionnumber"] = self._next_version()
        self._store(t, row_id, row)
        self._log_change(t, row_id, deleted=False, version=row["versionnumber"])
        derived = [k for k in row if k not in changes and k != "versionnumber" and row.get(k) != old.get(k)]
        self._last_changed[(t.logical, row_id)] = tuple(dict.fromkeys([*changes, *derived, "modifiedon",
                                                                       "modifiedby"]))
        if t.logical == "uomschedule" and "baseuomname" in changes and changes["baseuomname"] != \
                old.get("baseuomname"):
            self._rename_base_unit(row, call)
        if self.webhooks is not None:
            self.webhooks.written(t, row_id, "Update", call.caller, old)
        return row

    def _delete(self, t: Table, row_id: str, call: _Call) -> None:
        if t.logical in ("systemuser", "businessunit", "transactioncurrency") and row_id in (
                self.APP_USER_ID, self.PERSON_USER_ID, self.ROOT_BUSINESS_UNIT_ID, self.BASE_CURRENCY_ID):
            raise DataverseError(400, "0x80040203", f"The {t.logical} {row_id} can't be deleted.")
        old = self._rows[t.logical].get(row_id)
        if old is None:
            return
        if self.webhooks is not None:  # before anything is removed: a failing synchronous step leaves no trace
            self.webhooks.written(t, row_id, "Delete", call.caller, old)
        for child_logical, child_id, column in sorted(self._refs.get((t.logical, row_id), set())):
            child_t = self.tables[child_logical]
            child = self._rows[child_logical].get(child_id)
            if child is None:
                continue
            if column in child_t.cascade:
                self._delete(child_t, child_id, call)
            elif (child_ref := child.get(column)) is not None and child_ref.id == row_id:
                updated = dict(child)
                updated[column] = None
                updated["modifiedon"] = self._now()
                updated["versionnumber"] = self._next_version()
                self._store(child_t, child_id, updated)
                self._log_change(child_t, child_id, deleted=False, version=updated["versionnumber"])
        self._store(t, row_id, None)
        self._tombstones[(t.logical, row_id)] = old
        self._log_change(t, row_id, deleted=True, version=self._next_version())

    def _apply_defaults(self, t: Table, row: dict, call: _Call) -> None:
        row.update(self._defaults[t.logical])
        if "ownerid" in t.columns:
            row["ownerid"] = Ref("systemuser", call.caller)
        if "transactioncurrencyid" in t.columns and self._money_cols[t.logical]:
            row["transactioncurrencyid"] = Ref("transactioncurrency", self.BASE_CURRENCY_ID)
        if t.logical == "systemuser":
            row.setdefault("accessmode", 0)
            row["islicensed"] = True

    def _reconcile_state(self, t: Table, row: dict, changes: dict, *, creating: bool, row_id: str) -> None:
        if "statuscode" not in t.columns:
            if creating and "statecode" in t.columns:
                row.setdefault("statecode", 0)
            return
        if "statecode" in changes and changes["statecode"] is None:
            raise DataverseError(400, "0x80040203", "statecode can't be null.")
        if "statuscode" in changes and changes["statuscode"] is None:
            raise DataverseError(400, "0x80040203", "statuscode can't be null.")
        if "statuscode" in changes:
            state = t.state_of_status.get(changes["statuscode"])
            if "statecode" in changes and changes["statecode"] != state:
                st = changes["statecode"]
                label = (t.columns["statecode"].options or {}).get(st, st)
                raise DataverseError(400, "0x80040203", f"{changes['statuscode']} is not a valid status code for "
                                                        f"state code {t.logical.capitalize()}State.{label} on "
                                                        f"{t.logical} with Id {row_id}.")
            row["statecode"] = state
        elif "statecode" in changes:
            row["statuscode"] = t.default_status.get(changes["statecode"])
        elif creating or row.get("statecode") is None:
            row.setdefault("statecode", 0)
            if row.get("statuscode") is None:
                row["statuscode"] = t.default_status.get(row["statecode"])

    def _check_required(self, t: Table, row: dict, changes: dict, *, creating: bool) -> None:
        for name in t.required:
            if not creating and name not in changes:
                continue
            value = row.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataverseError(400, "0x80040203", f"A value for the required column '{name}' of "
                                                        f"'{t.logical}' was not provided (or was set to null).")

    def _table_rules(self, t: Table, row: dict, changes: dict, *, creating: bool) -> None:
        if t.logical == "product" and ("defaultuomid" in changes or "defaultuomscheduleid" in changes):
            unit, group = row.get("defaultuomid"), row.get("defaultuomscheduleid")
            if unit is not None and group is not None:
                uom = self._rows["uom"].get(unit.id)
                if uom is None or (uom.get("uomscheduleid") or (None, None))[1] != group.id:
                    raise DataverseError(400, "0x80040203", "The unit (defaultuomid) must belong to the unit "
                                                            "group (defaultuomscheduleid) of the product.")
        if t.logical == "uom" and creating:
            row.setdefault("quantity", 1)
            if row.get("quantity") is None:
                row["quantity"] = 1
            row.setdefault("isschedulebaseuom", False)
            if row.get("baseuom") is None and row.get("uomscheduleid") is not None:
                base = self._base_unit_of(row["uomscheduleid"].id)
                if base is not None:
                    row["baseuom"] = Ref("uom", base)

    def _compute(self, t: Table, row: dict) -> None:
        """Columns the platform derives: names, address composites, owning user/team/BU, currency bases."""
        owner = row.get("ownerid")
        if owner is not None:
            if "owninguser" in t.columns:
                row["owninguser"] = owner if owner.logical == "systemuser" else None
            if "owningteam" in t.columns:
                row["owningteam"] = owner if owner.logical == "team" else None
            if "owningbusinessunit" in t.columns:
                row["owningbusinessunit"] = Ref("businessunit", self.ROOT_BUSINESS_UNIT_ID)
        if t.logical in ("contact", "systemuser"):
            full = " ".join(p for p in (row.get("firstname"), row.get("lastname")) if p)
            row["fullname"] = full or None
            if "yomifullname" in t.columns:
                row["yomifullname"] = full or None
        for n in ("address1", "address2", "address3"):
            if f"{n}_composite" in t.columns:
                city_line = ", ".join(p for p in (row.get(f"{n}_city"), " ".join(
                    p for p in (row.get(f"{n}_stateorprovince"), row.get(f"{n}_postalcode")) if p)) if p)
                parts = [row.get(f"{n}_line1"), row.get(f"{n}_line2"), row.get(f"{n}_line3"), city_line,
                         row.get(f"{n}_country")]
                row[f"{n}_composite"] = "\r\n".join(p for p in parts if p) or None
        if "exchangerate" in t.columns and t.logical != "transactioncurrency":
            cur = row.get("transactioncurrencyid")
            rate = None
            if cur is not None:
                currency = self._rows["transactioncurrency"].get(cur.id)
                rate = currency.get("exchangerate") if currency else None
            row["exchangerate"] = rate
            for name in self._money_cols[t.logical]:
                v = row.get(name)
                row[f"{name}_base"] = round(v / rate, 4) if v is not None and rate else None

    def _base_unit_of(self, schedule_id: str) -> str | None:
        for child_logical, child_id, column in self._refs.get(("uomschedule", schedule_id), ()):
            if child_logical == "uom" and self._rows["uom"].get(child_id, {}).get("isschedulebaseuom"):
                return child_id
        return None

    def _create_base_unit(self, schedule: dict, call: _Call) -> None:
        uom_t = self.tables["uom"]
        uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"uom:{schedule['uomscheduleid']}"))
        row = self._create(uom_t, {"name": schedule.get("baseuomname") or "Primary Unit", "quantity": 1},
                           call, row_id=uid,
                           preset={"uomscheduleid": Ref("uomschedule", schedule["uomscheduleid"])})
        row = dict(row)
        row["isschedulebaseuom"] = True
        row["baseuom"] = Ref("uom", uid)
        self._raw_replace(uom_t, uid, row)

    def _rename_base_unit(self, schedule: dict, call: _Call) -> None:
        base = self._base_unit_of(schedule["uomscheduleid"])
        if base is not None:
            self._update(self.tables["uom"], base, {"name": schedule.get("baseuomname")}, call)

    # -- storage primitives (indexes, undo) -----------------------------------------------------------------
    def _check_keys(self, t: Table, row_id: str, row: dict) -> None:
        for key_name, cols in t.alternate_keys.items():
            values = [row.get(c) for c in cols]
            if any(v is None for v in values):
                continue
            found = self._key_index[(t.logical, key_name)].get(tuple(_key_norm(v) for v in values))
            if found is not None and found != row_id:
                shown = ",".join(str(_json_value(v)) for v in values)
                raise DataverseError(412, "0x80060892", f"A record that has the attribute values {shown} already "
                                                        f"exists. The entity key {key_name} requires that this set "
                                                        "of attributes contains unique values. Select unique values "
                                                        "and try again.")

    def _store(self, t: Table, row_id: str, row: dict | None) -> None:
        if row is not None:
            self._check_keys(t, row_id, row)
        if self._undo is not None:
            self._undo.append((t, row_id, self._rows[t.logical].get(row_id)))
        self._raw_store(t, row_id, row)

    def _raw_replace(self, t: Table, row_id: str, row: dict) -> None:
        self._raw_store(t, row_id, row)

    def _raw_store(self, t: Table, row_id: str, row: dict | None) -> None:
        rows = self._rows[t.logical]
        old = rows.get(row_id)
        self._reindex(t, row_id, old, row)
        if row is None:
            if old is not None:
                del rows[row_id]
                order = self._order[t.logical]
                i = bisect.bisect_left(order, row_id)
                if i < len(order) and order[i] == row_id:
                    del order[i]
            return
        if old is None:
            bisect.insort(self._order[t.logical], row_id)
        rows[row_id] = row

    def _reindex(self, t: Table, row_id: str, old: dict | None, new: dict | None) -> None:
        for key_name, cols in t.alternate_keys.items():
            index = self._key_index[(t.logical, key_name)]
            for row, add in ((old, False), (new, True)):
                if row is None:
                    continue
                values = [row.get(c) for c in cols]
                if any(v is None for v in values):
                    continue
                norm = tuple(_key_norm(v) for v in values)
                if add:
                    index[norm] = row_id
                elif index.get(norm) == row_id:
                    del index[norm]
        for name in self._ref_cols[t.logical]:
            before = old.get(name) if old else None
            after = new.get(name) if new else None
            if before == after:
                continue
            entry = (t.logical, row_id, name)
            if before is not None:
                s = self._refs.get((before.logical, before.id))
                if s is not None:
                    s.discard(entry)
                    if not s:
                        del self._refs[(before.logical, before.id)]
            if after is not None:
                self._refs.setdefault((after.logical, after.id), set()).add(entry)

    def _log_change(self, t: Table, row_id: str, *, deleted: bool, version: int) -> None:
        self._changes.append((version, t.logical, row_id, deleted))
        self._change_versions.append(version)

    # -- webhooks -------------------------------------------------------------------------------------------
    webhooks: Any = None
    """The registered webhook steps (``dataverse_webhook_sender.WebhookSender``), once there is one."""

    def register_webhook(self, url: str, **options: Any) -> Any:
        """Register a webhook step; see ``dataverse_webhook_sender.WebhookSender.register``."""
        from emulators.dataverse_webhook_sender import WebhookSender

        if self.webhooks is None:
            self.webhooks = WebhookSender(self)
        return self.webhooks.register(url, **options)

    def webhook_context_for(self, entity_set: str, id: str, message: str, changed: dict | None = None,  # noqa: A002
                            before: dict | None = None, *, mode: int = 1, **kwargs: Any) -> dict:
        """The RemoteExecutionContext Dataverse would post for an edit made by a person on a stored row.

        ``changed``: the columns of an Update (Web API names or ``x@odata.bind`` keys; values are read from the
        stored row); default = the columns of the row's last write. ``before``: the row as ``get()`` returned it
        before the edit, sent as the pre-image. For Delete the row's last stored state is kept by the emulator.
        Extra keyword arguments go to ``dataverse_webhook.build_remote_execution_context``.
        """
        with self.lock:
            t = self.table(entity_set)
            row_id = str(id).lower()
            row = self._rows[t.logical].get(row_id)
            msg = message.lower()
            if row is None and msg != "delete":
                raise _does_not_exist(t.logical, row_id)
            if row is None:
                row = self._tombstones.get((t.logical, row_id))
                if row is None:
                    raise _does_not_exist(t.logical, row_id)
            if msg == "create":
                names = [c for c in t.columns if c in row and c != "versionnumber"]
                attrs = {n: self._sdk_value(t, t.columns[n], row.get(n)) for n in names}
                attrs.setdefault("modifiedonbehalfby", None)
                formatted = self._sdk_formatted(t, names, row)
            elif msg == "update":
                cols = self._changed_columns(t, row_id, changed)
                attrs = {n: self._sdk_value(t, t.columns[n], row.get(n)) for n in cols}
                formatted = self._sdk_formatted(t, cols, row)
            else:
                attrs, formatted = {}, {}
            pre = None
            if before is not None:
                stored = self._from_api(t, before)
                pre = {n: self._sdk_value(t, t.columns[n], v) for n, v in stored.items()}
            elif msg == "delete":
                pre = {n: self._sdk_value(t, t.columns[n], row.get(n)) for n in t.columns
                       if n in row and n != "versionnumber"}
            user = (row.get("modifiedby") or Ref("systemuser", self.PERSON_USER_ID)).id
            params: dict[str, Any] = dict(
                target_attributes=attrs if msg != "delete" else None, pre_image=pre,
                formatted_values={"Target": formatted}, primary_name=(t.primary_name, row.get(t.primary_name)),
                pk_name=t.pk, mode=mode, user_id=user, business_unit_id=self.ROOT_BUSINESS_UNIT_ID,
                organization=self.ORGANIZATION_NAME, organization_id=self.ORGANIZATION_ID,
                operation_created_on=self.now(), modified_on=row.get("modifiedon"),
                sent_attributes={n: attrs[n] for n in attrs if n not in (
                    "modifiedon", "modifiedby", "modifiedonbehalfby", "createdon", "createdby", "versionnumber")})
            params.update(kwargs)
            return wh.build_remote_execution_context(message.capitalize(), t.logical, row_id, **params)

    def _changed_columns(self, t: Table, row_id: str, changed: dict | None) -> list[str]:
        if changed is None:
            cols = list(self._last_changed.get((t.logical, row_id), ()))
        else:
            cols = []
            for key in changed:
                if key.endswith("@odata.bind"):
                    nav = t.navs.get(key[:-len("@odata.bind")])
                    if nav is None:
                        raise KeyError(key)
                    cols.append(nav.column)
                else:
                    col = t.columns.get(key) or t.by_api_name.get(key)
                    if col is None:
                        raise KeyError(key)
                    cols.append(col.name)
        cols = [c for c in cols if c != "versionnumber"]
        for extra in (t.pk, "modifiedon", "modifiedby"):
            if extra not in cols:
                cols.append(extra)
        return cols

    def _sdk_value(self, t: Table, col: Column, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, Ref):
            return wh.entity_reference(value.logical, value.id)
        if col.type in OPTION_TYPES:
            return wh.option_set_value(value)
        if col.type == "Money":
            return wh.money(value)
        if col.type == "DateTime":
            return wh.wcf_date(value)
        return value

    def _sdk_formatted(self, t: Table, names: list[str], row: dict) -> dict[str, str]:
        out = {}
        for n in names:
            col = t.columns[n]
            value = row.get(n)
            if value is None or col.is_lookup or col.type in ("String", "Memo", "Uniqueidentifier", "BigInt"):
                continue
            if col.type == "DateTime":
                out[n] = value.strftime("%Y-%m-%dT%H:%M:%S-00:00")
                continue
            label = self._formatted(t, col, value, None)
            if label is not None:
                out[n] = label
        return out

    def _from_api(self, t: Table, data: dict) -> dict[str, Any]:
        """Stored form of a row serialized by the Web API (e.g. a ``get()`` result)."""
        out: dict[str, Any] = {}
        for key, value in data.items():
            if "@" in key:
                continue
            col = t.by_api_name.get(key)
            if col is None:
                continue
            if value is None:
                out[col.name] = None
            elif col.is_lookup:
                logical = data.get(f"{key}@Microsoft.Dynamics.CRM.lookuplogicalname") or \
                    self._logical_of_id(col, value) or (col.targets or ("",))[0]
                out[col.name] = Ref(logical, value)
            elif col.type == "DateTime":
                out[col.name] = datetime.fromisoformat(value.replace("Z", "+00:00"))
            else:
                out[col.name] = value
        return out

    # -- seed -----------------------------------------------------------------------------------------------
    def _seed_system(self) -> None:
        """What every org has: root business unit, default team, the app user, an admin, base currency, units."""
        sysc = self._direct_call(self.APP_USER_ID)
        bu = self.tables["businessunit"]
        self._create(bu, {"businessunitid": self.ROOT_BUSINESS_UNIT_ID, "name": self.ORGANIZATION_NAME}, sysc)
        self._create(self.tables["transactioncurrency"], {
            "transactioncurrencyid": self.BASE_CURRENCY_ID, "currencyname": "US Dollar", "isocurrencycode": "USD",
            "currencysymbol": "$", "exchangerate": 1.0, "currencyprecision": 2}, sysc)
        users = self.tables["systemuser"]
        self._create(users, {
            "systemuserid": self.APP_USER_ID, "firstname": "#", "lastname": "Business Central Integration",
            "applicationid": "5d9a0ce0-6e4c-4d1c-a6a9-3e6f6a9b0a01", "accessmode": 4, "isintegrationuser": True,
            "internalemailaddress": "bcintegration@bcsync.example",
            "businessunitid@odata.bind": f"/businessunits({self.ROOT_BUSINESS_UNIT_ID})"}, sysc)
        app = dict(self._rows["systemuser"][self.APP_USER_ID])
        app["islicensed"] = False
        self._raw_replace(users, self.APP_USER_ID, app)
        self._create(users, {
            "systemuserid": self.PERSON_USER_ID, "firstname": "Avery", "lastname": "Howard",
            "internalemailaddress": "avery.howard@bcsync.example", "jobtitle": "Sales Manager",
            "mobilephone": "+1 425 555 0100",
            "businessunitid@odata.bind": f"/businessunits({self.ROOT_BUSINESS_UNIT_ID})"}, sysc)
        self._create(self.tables["team"], {
            "teamid": self.DEFAULT_TEAM_ID, "name": self.ORGANIZATION_NAME, "teamtype": 0,
            "businessunitid@odata.bind": f"/businessunits({self.ROOT_BUSINESS_UNIT_ID})"}, sysc)
        team = dict(self._rows["team"][self.DEFAULT_TEAM_ID])
        team["isdefault"] = True
        self._raw_replace(self.tables["team"], self.DEFAULT_TEAM_ID, team)
        self._create(self.tables["uomschedule"], {
            "uomscheduleid": self.DEFAULT_UNIT_GROUP_ID, "name": "Default Unit", "baseuomname": "Primary Unit"},
            sysc)

    def _seed(self) -> None:
        rnd = random.Random(20261127)

        def new_id() -> str:
            return str(uuid.UUID(int=rnd.getrandbits(128), version=4))

        person = self._direct_call(self.PERSON_USER_ID)
        users = self.tables["systemuser"]
        owners = [self.PERSON_USER_ID]
        for i, (first, last) in enumerate([("Morgan", "Reyes"), ("Jamie", "Liu"), ("Taylor", "Brooks"),
                                           ("Casey", "Nguyen")]):
            uid = new_id()
            self._create(users, {
                "systemuserid": uid, "firstname": first, "lastname": last,
                "internalemailaddress": f"{first}.{last}@bcsync.example".lower(),
                "mobilephone": f"+1 425 555 01{10 + i:02d}", "jobtitle": "Account Manager",
                "businessunitid@odata.bind": f"/businessunits({self.ROOT_BUSINESS_UNIT_ID})"}, person)
            if i == 3:
                row = dict(self._rows["systemuser"][uid])
                row["isdisabled"] = True
                row["islicensed"] = False
                self._raw_replace(users, uid, row)
            else:
                owners.append(uid)
        currencies = self.tables["transactioncurrency"]
        currency_ids = {"USD": self.BASE_CURRENCY_ID}
        for iso, name, symbol, rate in (("EUR", "Euro", "€", 0.92), ("GBP", "Pound Sterling", "£", 0.79)):
            cid = new_id()
            currency_ids[iso] = cid
            self._create(currencies, {"transactioncurrencyid": cid, "currencyname": name, "isocurrencycode": iso,
                                      "currencysymbol": symbol, "exchangerate": rate, "currencyprecision": 2}, person)
        schedules, uoms = self.tables["uomschedule"], self.tables["uom"]
        weight = new_id()
        self._create(schedules, {"uomscheduleid": weight, "name": "Weight", "baseuomname": "kg"}, person)
        for name, qty in (("g", 0.001), ("t", 1000)):
            self._create(uoms, {"uomid": new_id(), "name": name, "quantity": qty,
                                "uomscheduleid@odata.bind": f"/uomschedules({weight})"}, person)
        primary_unit = self._base_unit_of(self.DEFAULT_UNIT_GROUP_ID)
        products = self.tables["product"]
        catalog = [("ATHENS Desk", 1000.8, 1), ("PARIS Guest Chair, black", 192.8, 1),
                   ("ROME Guest Chair, green", 192.8, 1), ("TOKYO Guest Chair, blue", 192.8, 1),
                   ("MEXICO Swivel Chair, black", 190.1, 1), ("MUNICH Swivel Chair, yellow", 190.1, 1),
                   ("MOSCOW Swivel Chair, red", 190.1, 1), ("SEOUL Guest Chair, red", 192.8, 1),
                   ("ATLANTA Whiteboard, base", 1397.3, 1), ("Installation service", 80.0, 3)]
        for i, (name, price, ptype) in enumerate(catalog):
            fields = {"productid": new_id(), "productnumber": f"P-{1001 + i}", "name": name, "price": price,
                      "standardcost": round(price * 0.6, 2), "currentcost": round(price * 0.6, 2),
                      "producttypecode": ptype, "quantitydecimal": 0, "quantityonhand": float(10 * i),
                      "defaultuomscheduleid@odata.bind": f"/uomschedules({self.DEFAULT_UNIT_GROUP_ID})",
                      "defaultuomid@odata.bind": f"/uoms({primary_unit})"}
            if i == 7:
                fields["statecode"] = 1
            self._create(products, fields, person)
        accounts = self.tables["account"]
        account_ids: list[str] = []
        names = [seed_data.CASE_VARIANTS.get(n, n) for n in seed_data.DV_ACCOUNT_NAMES]
        names.append(seed_data.DUPLICATE_ACCOUNT_NAME)
        for i, name in enumerate(names):
            aid = new_id()
            account_ids.append(aid)
            slug = re.sub(r"[^a-z0-9]+", "", name.lower())
            city = seed_data.CITIES[(i + (3 if i == len(names) - 1 else 0)) % len(seed_data.CITIES)]
            fields: dict[str, Any] = {
                "accountid": aid, "name": name, "accountnumber": f"DV-{1001 + i}",
                "customertypecode": 11 if i % 8 == 5 else 3,
                "telephone1": f"+1 425 555 {200 + i:04d}", "emailaddress1": f"info@{slug}.example",
                "websiteurl": f"https://www.{slug}.example", "address1_line1": f"{100 + 7 * i} Main Street",
                "address1_city": city, "address1_postalcode": f"{98000 + i}", "address1_country": "US",
                "address1_stateorprovince": "WA", "creditlimit": float(5000 * (1 + i % 5)),
                "ownerid@odata.bind": f"/systemusers({owners[i % len(owners)]})"}
            if i % 10 == 4:
                fields["transactioncurrencyid@odata.bind"] = f"/transactioncurrencies({currency_ids['EUR']})"
            if i in (7, 23):
                fields["statecode"], fields["statuscode"] = 1, 2
            self._create(accounts, fields, person)
        contacts = self.tables["contact"]
        for i, (first, last) in enumerate(seed_data.person_names(30, seed=4242)):
            fields = {"contactid": new_id(), "firstname": first, "lastname": last,
                      "emailaddress1": f"{first}.{last}{i}@example.com".lower(),
                      "telephone1": f"+1 206 555 {300 + i:04d}", "mobilephone": f"+1 206 555 {400 + i:04d}",
                      "jobtitle": ["Purchaser", "Owner", "Accountant", "Sales"][i % 4],
                      "address1_city": seed_data.CITIES[i % len(seed_data.CITIES)]}
            if i < 24:
                fields["parentcustomerid_account@odata.bind"] = f"/accounts({account_ids[i % len(account_ids)]})"
            self._create(contacts, fields, person)


def _key_norm(value: Any) -> Any:
    if isinstance(value, Ref):
        return value.id
    if isinstance(value, str):
        return value.casefold()
    return value


def _loose_eq(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    return a == b


def _select_suffix(call: _Call) -> str:
    select = call.query.get("$select")
    if not select:
        return ""
    return "(" + ",".join(s.strip() for s in select.split(",") if s.strip()) + ")"
