"""Dataverse Web API v9.2 client, on the shared ``Transport``.

Dataverse facts this client encodes (apis.md part A):

* URLs ``{DATAVERSE_URL}/api/data/v9.2/{entitySet}({guid})``; every request carries the OData headers of A2
  (``Accept``, ``OData-MaxVersion``, ``OData-Version``, ``If-None-Match: null``).
* Primary key column and logical name per entity set (``ENTITY_SETS``; e.g. ``accounts`` -> ``accountid`` /
  ``account``).
* Create: POST -> 204 + ``OData-EntityId`` (the only place the new id is given), or 201 + body with
  ``Prefer: return=representation``. The primary key **may be supplied** (``create(..., id=…)``): the caller
  chooses the GUID, so after ``UpstreamOutcomeUnknown`` a replay can first ``get`` that id.
* PATCH without ``If-Match`` is an **upsert**; ``update`` therefore always sends ``If-Match`` (the etag, or
  ``*`` = update-only: a missing row is ``UpstreamNotFound`` instead of a new row). ``upsert`` is explicit.
  Stale etag -> 412 -> ``UpstreamConcurrency``.
* Throttling: 429 + ``Retry-After`` (seconds); ``x-ms-dop-hint`` lowers the client's concurrency limit.
* ``$batch``: multipart/mixed, at most 1000 operations per request; a changeset is atomic (``BatchOp.group``)
  and a failed changeset answers with one error for all its operations; ``Prefer: odata.continue-on-error``
  keeps the other operations running.
* Choice columns' options come from the metadata API (``option_set``: ``EntityDefinitions(LogicalName=…)/
  Attributes(LogicalName=…)/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$expand=OptionSet``); options are
  added / relabelled with the unbound actions ``InsertOptionValue`` / ``UpdateOptionValue`` (``Label`` =
  ``{"LocalizedLabels": [{"Label", "LanguageCode": 1033}]}``; ``InsertOptionValue`` answers ``NewOptionValue``).
  Assumption: no ``PublishXml`` is needed before rows may hold a new option value.
"""
from __future__ import annotations

import asyncio
import json as jsonlib
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Sequence

import httpx

from .. import odata
from ..errors import UpstreamError
from .auth import TokenProvider, provider_from_settings
from .transport import (BatchOp, BatchResult, Counters, ErrorInfo, ODataClient, RetryPolicy, Transport,
                        batch_is_idempotent, make_error, new_boundary, parse_retry_after)

__all__ = ["DataverseClient", "EntitySet", "ENTITY_SETS", "BatchOp", "BatchResult", "parse_multipart",
           "parse_batch_response", "etag_of", "option_label"]

MAX_BATCH_OPERATIONS = 1000
MAX_PAGE_SIZE = 5000
DEFAULT_CONCURRENCY = 16

ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "If-None-Match": "null",
}


@dataclass(frozen=True)
class EntitySet:
    name: str
    logical_name: str
    primary_key: str
    primary_name: str


ENTITY_SETS: dict[str, EntitySet] = {e.name: e for e in (
    EntitySet("accounts", "account", "accountid", "name"),
    EntitySet("contacts", "contact", "contactid", "fullname"),
    EntitySet("products", "product", "productid", "name"),
    EntitySet("systemusers", "systemuser", "systemuserid", "fullname"),
    EntitySet("transactioncurrencies", "transactioncurrency", "transactioncurrencyid", "currencyname"),
    EntitySet("uoms", "uom", "uomid", "name"),
    EntitySet("uomschedules", "uomschedule", "uomscheduleid", "name"),
    EntitySet("teams", "team", "teamid", "name"),
)}

_ENTITY_ID_RE = re.compile(r"\(([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\)\s*$")


BASE_LANGUAGE = 1033
"""LanguageCode of the labels this client writes (English, the base language of a default org)."""
_LOGICAL_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def _logical_name(name: str) -> str:
    if not isinstance(name, str) or not _LOGICAL_NAME_RE.fullmatch(name):
        raise ValueError(f"not a Dataverse logical name: {name!r}")
    return name


def _label_body(text: str, language_code: int) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an option label must be non-empty text")
    return {"@odata.type": "Microsoft.Dynamics.CRM.Label",
            "LocalizedLabels": [{"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text,
                                 "LanguageCode": int(language_code)}]}


def option_label(label: Mapping[str, Any] | None, language_code: int = BASE_LANGUAGE) -> str:
    """The text of a metadata ``Label``: ``UserLocalizedLabel``, else the ``language_code`` localized label, else
    the first localized label, else ``""``."""
    if not isinstance(label, Mapping):
        return ""
    user = label.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and isinstance(user.get("Label"), str):
        return user["Label"]
    localized = [item for item in label.get("LocalizedLabels") or [] if isinstance(item, Mapping)]
    for item in localized:
        if item.get("LanguageCode") == language_code and isinstance(item.get("Label"), str):
            return item["Label"]
    first = localized[0].get("Label") if localized else None
    return first if isinstance(first, str) else ""


def etag_of(record: Mapping[str, Any] | None) -> str | None:
    return record.get("@odata.etag") if record else None


def id_from_entity_url(url: str | None) -> str | None:
    """The GUID at the end of an ``OData-EntityId``/``Location`` URL (``…/accounts(<guid>)``)."""
    if not url:
        return None
    match = _ENTITY_ID_RE.search(url.strip())
    return match.group(1).lower() if match else None


def _prefer(*values: str | None) -> dict[str, str]:
    items = [v for v in values if v]
    return {"Prefer": ",".join(items)} if items else {}


def _annotations(value: bool | str) -> str | None:
    if value is True:
        return 'odata.include-annotations="*"'
    if isinstance(value, str) and value:
        return f'odata.include-annotations="{value}"'
    return None


class DataverseClient(ODataClient):
    """Client of one Dataverse environment. Build it with ``from_settings`` (or pass a ``Transport``)."""

    service = "dataverse"
    max_batch_operations = MAX_BATCH_OPERATIONS

    def __init__(self, transport: Transport, api_url: str, *, page_size: int = 1000, max_url_length: int = 8000,
                 entity_sets: Mapping[str, EntitySet] | None = None):
        self.transport = transport
        self.api_url = api_url.rstrip("/")
        self.page_size = page_size
        self.max_url_length = max_url_length
        self.entity_sets = {**ENTITY_SETS, **(entity_sets or {})}

    @classmethod
    def from_settings(cls, settings: Any, http: httpx.AsyncClient | None = None,
                      tokens: TokenProvider | None = None, *, retry: RetryPolicy | None = None,
                      concurrency: int = DEFAULT_CONCURRENCY, counters: Counters | None = None,
                      **kwargs: Any) -> "DataverseClient":
        """``http`` None -> the shared client of the running loop; ``tokens`` None -> ``provider_from_settings``."""
        transport = Transport(
            "dataverse", tokens=tokens or provider_from_settings(settings), scope=settings.dataverse_scope,
            http=http, retry=retry, concurrency=concurrency, counters=counters, default_headers=ODATA_HEADERS,
            dop_hint_header="x-ms-dop-hint")
        return cls(transport, settings.dataverse_api_url, **kwargs)

    # -- entity-set knowledge ------------------------------------------------------------------------------
    def entity(self, entity_set: str) -> EntitySet:
        try:
            return self.entity_sets[entity_set]
        except KeyError:
            raise ValueError(f"unknown Dataverse entity set {entity_set!r}; known: "
                             f"{', '.join(sorted(self.entity_sets))}") from None

    def primary_key(self, entity_set: str) -> str:
        return self.entity(entity_set).primary_key

    key_of = primary_key

    def logical_name(self, entity_set: str) -> str:
        return self.entity(entity_set).logical_name

    def entity_set_of(self, logical_name: str) -> str:
        for e in self.entity_sets.values():
            if e.logical_name == logical_name:
                return e.name
        raise ValueError(f"unknown Dataverse table {logical_name!r}")

    def bind(self, entity_set: str, id: Any) -> str:
        """Value for ``<navigation>@odata.bind``: ``/accounts(<guid>)``."""
        self.entity(entity_set)
        return f"/{entity_set}({odata.key(id)})"

    def entity_url(self, entity_set: str, id: Any = None) -> str:
        self.entity(entity_set)
        path = f"{self.api_url}/{entity_set}"
        return f"{path}({odata.key(id)})" if id is not None else path

    # -- reads ---------------------------------------------------------------------------------------------
    async def iter_pages(self, entity_set: str, *, filter: str | None = None,
                         select: Sequence[str] | str | None = None, orderby: Sequence[str] | str | None = None,
                         expand: str | None = None, top: int | None = None, page_size: int | None = None,
                         annotations: bool | str = False) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of a query (``Prefer: odata.maxpagesize``; nextLink followed unchanged with the same Prefer).

        ``annotations=True`` asks for every annotation (formatted values, lookup logical names), or pass the
        list as a string."""
        size = min(page_size or self.page_size, MAX_PAGE_SIZE)
        headers = _prefer(f"odata.maxpagesize={size}", _annotations(annotations))
        params = self._query(filter=filter, select=select, orderby=orderby, expand=expand, top=top)
        async for page in self.transport.pages(self.entity_url(entity_set), params=params, headers=headers):
            yield page

    async def get(self, entity_set: str, id: Any, *, select: Sequence[str] | str | None = None,
                  expand: str | None = None, annotations: bool | str = False) -> dict[str, Any]:
        """One row; ``UpstreamNotFound`` when it doesn't exist."""
        return await self.transport.get_json(self.entity_url(entity_set, id),
                                             params=self._query(select=select, expand=expand),
                                             headers=_prefer(_annotations(annotations)))

    # -- writes --------------------------------------------------------------------------------------------
    async def create(self, entity_set: str, body: Mapping[str, Any], *, id: Any = None,
                     return_representation: bool = False,
                     select: Sequence[str] | str | None = None) -> dict[str, Any]:
        """POST a new row. ``id`` supplies the primary key (crash-safe create: the caller knows the id).

        Returns the created row when ``return_representation`` (201 body; ``select`` limits its columns),
        else ``{<primary key>: <id>}`` read from ``OData-EntityId``. Not idempotent: a lost answer raises
        ``UpstreamOutcomeUnknown`` (never replayed); with a supplied ``id``, ``get_or_none`` tells what happened.
        """
        pk = self.primary_key(entity_set)
        payload = dict(body)
        if id is not None:
            payload[pk] = odata.key(id)
        headers = _prefer("return=representation" if return_representation else None)
        params = self._query(select=select) if return_representation else None
        response = await self.transport.request("POST", self.entity_url(entity_set), params=params,
                                                json=payload, headers=headers)
        if response.status_code == 201 and response.content:
            return response.json()
        new_id = (id_from_entity_url(response.headers.get("OData-EntityId"))
                  or id_from_entity_url(response.headers.get("Location"))
                  or (odata.key(id) if id is not None else None))
        if new_id is None:
            raise make_error("dataverse", response.status_code, ErrorInfo(), cls=UpstreamError, method="POST",
                             url=self.entity_url(entity_set),
                             fallback="dataverse: create answered without OData-EntityId")
        return {pk: new_id}

    async def update(self, entity_set: str, id: Any, changes: Mapping[str, Any], *, etag: str | None = None,
                     return_representation: bool = False,
                     select: Sequence[str] | str | None = None) -> dict[str, Any] | None:
        """PATCH an existing row with ``If-Match: etag`` (``None`` -> ``*``: update only, never an upsert).

        Returns the row when ``return_representation``, else None. Stale etag -> ``UpstreamConcurrency``;
        missing row -> ``UpstreamNotFound``."""
        headers = {"If-Match": etag or "*",
                   **_prefer("return=representation" if return_representation else None)}
        params = self._query(select=select) if return_representation else None
        response = await self.transport.request("PATCH", self.entity_url(entity_set, id), params=params,
                                                json=dict(changes), headers=headers)
        return response.json() if response.content else None

    async def upsert(self, entity_set: str, id: Any, body: Mapping[str, Any], *,
                     return_representation: bool = False) -> dict[str, Any] | None:
        """PATCH without ``If-Match``: creates the row with this id when missing, else updates it."""
        headers = _prefer("return=representation" if return_representation else None)
        response = await self.transport.request("PATCH", self.entity_url(entity_set, id), json=dict(body),
                                                headers=headers)
        return response.json() if response.content else None

    async def delete(self, entity_set: str, id: Any, *, etag: str | None = None, missing_ok: bool = False) -> bool:
        """DELETE (``If-Match`` only when ``etag`` is given). False when already gone and ``missing_ok``."""
        return await self._delete(entity_set, id, {"If-Match": etag} if etag else None, missing_ok)

    # -- option-set metadata (choice columns) ------------------------------------------------------------
    def option_set_url(self, table: str, column: str) -> str:
        """``EntityDefinitions(LogicalName='<t>')/Attributes(LogicalName='<c>')/…PicklistAttributeMetadata``."""
        return (f"{self.api_url}/EntityDefinitions(LogicalName={odata.literal(_logical_name(table))})"
                f"/Attributes(LogicalName={odata.literal(_logical_name(column))})"
                "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata")

    async def option_set(self, table: str, column: str) -> list[dict[str, Any]]:
        """The options of a local choice column: ``[{"value": int, "label": str}]`` in the service's order.

        One metadata request (``$select=LogicalName&$expand=OptionSet``). The label is the one in the caller's
        language (``Label.UserLocalizedLabel``), else the 1033 (English) localized label, else the first one.
        A missing table or column is ``UpstreamNotFound``."""
        data = await self.request_json("GET", self.option_set_url(table, column),
                                       params={"$select": "LogicalName", "$expand": "OptionSet"})
        options = ((data or {}).get("OptionSet") or {}).get("Options") or []
        return [{"value": int(o["Value"]), "label": option_label(o.get("Label"))} for o in options]

    async def insert_option(self, table: str, column: str, label: str, *, value: int | None = None,
                            language_code: int = BASE_LANGUAGE) -> int:
        """Add an option to a local choice column (``InsertOptionValue``); returns its value (``NewOptionValue``).

        Without ``value`` the service chooses it (the publisher's prefix range, e.g. 100000000 and up). Not
        idempotent: a lost answer raises ``UpstreamOutcomeUnknown`` and is never replayed - read ``option_set``
        and look for the label. A duplicate label or value is refused (``UpstreamValidation``)."""
        body: dict[str, Any] = {"EntityLogicalName": _logical_name(table),
                                "AttributeLogicalName": _logical_name(column),
                                "Label": _label_body(label, language_code)}
        if value is not None:
            body["Value"] = int(value)
        data = await self.request_json("POST", f"{self.api_url}/InsertOptionValue", json=body)
        try:
            return int((data or {})["NewOptionValue"])
        except (KeyError, TypeError, ValueError):
            raise UpstreamError("dataverse", "dataverse: InsertOptionValue answered without NewOptionValue",
                                method="POST", url=f"{self.api_url}/InsertOptionValue") from None

    async def update_option_label(self, table: str, column: str, value: int, label: str, *,
                                  language_code: int = BASE_LANGUAGE) -> None:
        """Relabel an option (``UpdateOptionValue``, ``MergeLabels`` true: other languages are kept).
        Idempotent (the same label again changes nothing), so it is retried like a PUT."""
        body = {"EntityLogicalName": _logical_name(table), "AttributeLogicalName": _logical_name(column),
                "Value": int(value), "Label": _label_body(label, language_code), "MergeLabels": True}
        await self.request_json("POST", f"{self.api_url}/UpdateOptionValue", json=body, idempotent=True)

    # -- $batch --------------------------------------------------------------------------------------------
    async def batch(self, ops: Sequence[BatchOp], *, concurrent: bool = True) -> list[BatchResult]:
        """Run operations through multipart ``$batch``; one ``BatchResult`` per op in input order; never raises
        for a failed operation.

        Ops sharing a ``group`` form one atomic changeset (all succeed or none; when it fails every op of the
        group carries the error, ``BatchResult.status`` being the failing answer's); other ops are independent
        (``odata.continue-on-error``). Requests hold at most 1000 ops (a group is never split; > 1000 is a
        ``ValueError``) and run concurrently unless ``concurrent=False``. If a whole request fails each of its
        ops carries that error.
        """
        units: list[list[int]] = []  # each unit: one op, or the ops of one group (a changeset)
        group_unit: dict[str, list[int]] = {}
        changeset_units: set[int] = set()
        for i, op in enumerate(ops):
            method = op.method.upper()
            if op.group is None:
                units.append([i])
                continue
            if method == "GET":
                raise ValueError("GET can't be part of a changeset (BatchOp.group)")
            if op.group not in group_unit:
                group_unit[op.group] = []
                changeset_units.add(len(units))
                units.append(group_unit[op.group])
            group_unit[op.group].append(i)
        for name, idx in group_unit.items():
            if len(idx) > MAX_BATCH_OPERATIONS:
                raise ValueError(f"group {name!r} has {len(idx)} operations; a changeset holds at most "
                                 f"{MAX_BATCH_OPERATIONS}")
        requests: list[list[tuple[list[int], bool]]] = [[]]
        size = 0
        for u, idx in enumerate(units):
            if size + len(idx) > MAX_BATCH_OPERATIONS:
                requests.append([])
                size = 0
            requests[-1].append((idx, u in changeset_units))
            size += len(idx)
        results: list[BatchResult | None] = [None] * len(ops)

        async def run(request_units: list[tuple[list[int], bool]]) -> None:
            for i, result in await self._send_batch(ops, request_units):
                results[i] = result

        todo = [r for r in requests if r]
        if concurrent:
            await asyncio.gather(*(run(r) for r in todo))
        else:
            for r in todo:
                await run(r)
        return [r for r in results if r is not None]

    def _part(self, op: BatchOp, content_id: int | None) -> str:
        method = op.method.upper()
        pk = self.primary_key(op.entity_set)
        body = dict(op.body) if op.body is not None else None
        if method == "POST":
            url = self.entity_url(op.entity_set)
            if op.id is not None:
                body = {**(body or {}), pk: odata.key(op.id)}
        else:
            url = self.entity_url(op.entity_set, op.id)
        if method == "GET" and op.select:
            url = Transport.with_query(url, {"$select": odata.select(op.select)})
        lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if content_id is not None:
            lines.append(f"Content-ID: {content_id}")
        lines += ["", f"{method} {url} HTTP/1.1", "Accept: application/json"]
        if body is not None:
            lines.append("Content-Type: application/json; type=entry")
        if method in ("PATCH", "DELETE") and op.etag:
            lines.append(f"If-Match: {op.etag}")
        if method in ("POST", "PATCH") and op.return_representation:
            lines.append("Prefer: return=representation")
        lines.append("")
        text = "\r\n".join(lines) + "\r\n"
        if body is not None:
            text += jsonlib.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\r\n"
        return text

    def _batch_body(self, ops: Sequence[BatchOp], units: list[tuple[list[int], bool]]) -> tuple[str, bytes]:
        boundary = new_boundary("batch")
        out: list[str] = []
        content_id = 0
        for idx, is_changeset in units:
            if not is_changeset:
                out.append(f"--{boundary}\r\n" + self._part(ops[idx[0]], None))
                continue
            cs = new_boundary("changeset")
            chunk = [f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n"]
            for i in idx:
                content_id += 1
                chunk.append(f"--{cs}\r\n" + self._part(ops[i], content_id))
            chunk.append(f"--{cs}--\r\n")
            out.append("".join(chunk))
        out.append(f"--{boundary}--\r\n")
        return boundary, "".join(out).encode("utf-8")

    async def _send_batch(self, ops: Sequence[BatchOp],
                          units: list[tuple[list[int], bool]]) -> list[tuple[int, BatchResult]]:
        indices = [i for idx, _ in units for i in idx]
        chosen = [ops[i] for i in indices]
        boundary, body = self._batch_body(ops, units)
        url = f"{self.api_url}/$batch"
        headers = {"Content-Type": f"multipart/mixed; boundary={boundary}",
                   **_prefer("odata.continue-on-error")}
        try:
            response = await self.transport.request("POST", url, content=body, headers=headers,
                                                    idempotent=batch_is_idempotent(chosen),
                                                    operations=len(chosen))
        except UpstreamError as exc:
            return [(i, BatchResult(ops[i], status=exc.status, error=exc)) for i in indices]
        return parse_batch_response(response.headers.get("Content-Type", ""), response.content, ops, units,
                                    self)


# --- multipart parsing --------------------------------------------------------------------------------------
_BOUNDARY_RE = re.compile(r'boundary\s*=\s*"?([^";\s]+)"?', re.IGNORECASE)
_BLANK_LINE_RE = re.compile(r"\r?\n\r?\n")
_STATUS_LINE_RE = re.compile(r"HTTP/\d(?:\.\d)?\s+(\d{3})")


def _headers(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in re.split(r"\r?\n", block):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip().lower()] = value.strip()
    return out


def parse_multipart(content_type: str, body: bytes | str) -> list[tuple[dict[str, str], str]]:
    """Parts of a ``multipart/mixed`` body: ``[(headers lower-cased, content)]``. Accepts CRLF or LF."""
    match = _BOUNDARY_RE.search(content_type or "")
    if not match:
        raise ValueError(f"no multipart boundary in Content-Type {content_type!r}")
    text = body.decode("utf-8", errors="replace") if isinstance(body, (bytes, bytearray)) else body
    delimiter = re.compile(r"(?:^|\r?\n)--" + re.escape(match.group(1)) + r"(--)?[ \t]*(?:\r?\n|$)")
    parts: list[tuple[dict[str, str], str]] = []
    pieces = delimiter.split(text)
    # split() with 1 group yields: preamble, closing?, part, closing?, part, …
    for k in range(1, len(pieces), 2):
        closing = pieces[k]
        segment = pieces[k + 1] if k + 1 < len(pieces) else ""
        if closing:
            break
        split = _BLANK_LINE_RE.split(segment, maxsplit=1)
        parts.append((_headers(split[0]), split[1] if len(split) > 1 else ""))
    return parts


def parse_http_response(text: str) -> tuple[int, dict[str, str], str]:
    """``HTTP/1.1 204 No Content`` + headers + body embedded in an ``application/http`` part."""
    text = text.lstrip("\r\n")
    split = _BLANK_LINE_RE.split(text, maxsplit=1)
    head = split[0]
    body = split[1] if len(split) > 1 else ""
    first, _, rest = head.partition("\n")
    match = _STATUS_LINE_RE.match(first.strip())
    if not match:
        raise ValueError(f"not an HTTP response line: {first.strip()!r}")
    return int(match.group(1)), _headers(rest), body.strip()


def _result(op: BatchOp, status: int, headers: dict[str, str], body_text: str, client: DataverseClient,
            url: str) -> BatchResult:
    body: Any = None
    if body_text:
        try:
            body = jsonlib.loads(body_text)
        except ValueError:
            body = None
    pk = client.primary_key(op.entity_set)
    op_id = odata.key(op.id) if op.id is not None else None
    if 200 <= status < 300:
        record = body if isinstance(body, dict) else None
        rid = (id_from_entity_url(headers.get("odata-entityid")) or id_from_entity_url(headers.get("location"))
               or (str(record.get(pk)).lower() if record and record.get(pk) else None) or op_id)
        return BatchResult(op, status=status, body=record, id=rid,
                           etag=(record or {}).get("@odata.etag") or headers.get("etag"))
    error = make_error("dataverse", status, client.transport.error_parser(body_text), method=op.method.upper(),
                       url=url, retry_after=parse_retry_after(headers.get("retry-after")))
    return BatchResult(op, status=status, body=body if isinstance(body, dict) else None, id=op_id, error=error)


def parse_batch_response(content_type: str, content: bytes, ops: Sequence[BatchOp],
                         units: list[tuple[list[int], bool]], client: DataverseClient) -> list[tuple[int, BatchResult]]:
    """Map a ``$batch`` response back to the ops of ``units`` (one top-level part per unit, in order; the
    parts of a changeset response matched by ``Content-ID``, in order when absent)."""
    url = f"{client.api_url}/$batch"
    out: list[tuple[int, BatchResult]] = []

    def missing(i: int, why: str) -> tuple[int, BatchResult]:
        err = make_error("dataverse", None, ErrorInfo(), cls=UpstreamError, method=ops[i].method, url=url,
                         fallback=f"dataverse: {why}")
        return i, BatchResult(ops[i], error=err)

    try:
        parts = parse_multipart(content_type, content)
    except ValueError as exc:
        return [missing(i, f"unreadable $batch response ({exc})") for idx, _ in units for i in idx]
    content_id = 0
    first_ids: list[int] = []
    for idx, is_changeset in units:
        first_ids.append(content_id + 1)
        if is_changeset:
            content_id += len(idx)
    for n, (idx, is_changeset) in enumerate(units):
        if n >= len(parts):
            out += [missing(i, "no response for this operation in the $batch response (not executed)")
                    for i in idx]
            continue
        headers, body = parts[n]
        if "multipart/mixed" in headers.get("content-type", ""):
            inner = parse_multipart(headers["content-type"], body)
            by_cid: dict[str, tuple[dict[str, str], str]] = {}
            for pos, (h, c) in enumerate(inner):
                by_cid[h.get("content-id", str(first_ids[n] + pos))] = (h, c)
            for k, i in enumerate(idx):
                part = by_cid.get(str(first_ids[n] + k))
                if part is None:
                    out.append(missing(i, "no response for this changeset operation"))
                    continue
                try:
                    status, h, text = parse_http_response(part[1])
                except ValueError as exc:
                    out.append(missing(i, str(exc)))
                    continue
                out.append((i, _result(ops[i], status, h, text, client, url)))
            continue
        try:
            status, h, text = parse_http_response(body)
        except ValueError as exc:
            out += [missing(i, str(exc)) for i in idx]
            continue
        # a single answer for a changeset = it failed and was rolled back: every op shares the error
        for i in idx:
            result = _result(ops[i], status, h, text, client, url)
            if is_changeset and result.error is not None:
                result.error.details["rolledBack"] = True
            out.append((i, result))
    return out
