"""Business Central API v2.0 client (company-scoped entity sets), on the shared ``Transport``.

BC facts this client encodes (apis.md part C):

* URLs: ``{BC_API_BASE_URL}/companies({companyId})/{entitySet}({id})``; every entity's key is ``id`` (SystemId).
* **Create cannot choose the id**: BC assigns ``id`` (SystemId) on insert and returns it in the 201 body. A
  crash-safe "create new" into BC therefore needs another marker the caller sets (e.g. ``number``, or a field
  that carries the Dataverse id) and looks up with ``find()`` before trying again after
  ``UpstreamOutcomeUnknown``.
* PATCH and DELETE require ``If-Match`` (missing -> 400 ``BadRequest_InvalidToken``), so ``update``/``delete``
  take the etag explicitly (``"*"`` for unconditional); a stale etag -> 409 ``Request_EntityChanged`` ->
  ``UpstreamConcurrency``. PATCH answers 200 with the full entity and its new ``@odata.etag``.
* Error messages end with ``  CorrelationId:  <guid>.``: errors keep the raw text in ``api_message``, the text
  without the suffix in ``message`` and the id in ``details["correlationId"]``.
* ``or`` is only allowed on one field (``id eq a or id eq b`` is fine: ``get_many``); text ``eq`` is
  case-sensitive.
* JSON ``$batch`` at ``{base}/$batch``: at most 100 operations per request; ``Isolation: snapshot`` makes one
  request all-or-nothing.
"""
from __future__ import annotations

import asyncio
import json as jsonlib
import re
import uuid
from typing import Any, AsyncIterator, Mapping, Sequence

import httpx

from .. import odata
from ..errors import UpstreamError
from .auth import TokenProvider, provider_from_settings
from .transport import (BatchOp, BatchResult, Counters, ErrorInfo, ODataClient, RetryPolicy, Transport,
                        batch_is_idempotent, make_error, parse_error_body, parse_retry_after)

__all__ = ["BCClient", "BatchOp", "BatchResult", "parse_bc_error", "etag_of"]

_CORRELATION_RE = re.compile(r"\s*CorrelationId:\s*([0-9A-Fa-f-]{36}|[^\s.]+)\.?\s*$")
MAX_BATCH_OPERATIONS = 100
MAX_PAGE_SIZE = 20000
"""BC online refuses a larger ``odata.maxpagesize`` with 413."""
DEFAULT_CONCURRENCY = 5
"""BC processes 5 requests per user at once and queues the rest (apis.md C9)."""


def parse_bc_error(body: Any) -> ErrorInfo:
    """A BC error body; the ``  CorrelationId:  <guid>.`` suffix is removed from ``message`` (kept in
    ``raw_message``) and its id put in ``details["correlationId"]``."""
    info = parse_error_body(body)
    if info.raw_message:
        match = _CORRELATION_RE.search(info.raw_message)
        if match:
            info.message = info.raw_message[:match.start()].rstrip()
            info.details["correlationId"] = match.group(1)
    return info


def etag_of(record: Mapping[str, Any] | None) -> str | None:
    """The ``@odata.etag`` of a record (the value to send back as ``If-Match``)."""
    return record.get("@odata.etag") if record else None


class BCClient(ODataClient):
    """Client of one BC company. Build it with ``from_settings`` (or pass a ``Transport``).

    Methods take BC entity-set names (``customers``, ``contacts``, ``items``, ``currencies``, ``unitsOfMeasure``,
    ``paymentTerms``, ``shipmentMethods``, ``salespeoplePurchasers``, …) and ids as GUID strings or ``uuid.UUID``.
    """

    service = "bc"
    key = "id"
    max_batch_operations = MAX_BATCH_OPERATIONS

    def __init__(self, transport: Transport, api_base_url: str, company_id: str | uuid.UUID, *,
                 page_size: int = 1000, max_url_length: int = 8000):
        self.transport = transport
        self.api_base_url = api_base_url.rstrip("/")
        self.company_id = odata.key(company_id)
        self.company_url = f"{self.api_base_url}/companies({self.company_id})"
        self.page_size = page_size
        self.max_url_length = max_url_length

    @classmethod
    def from_settings(cls, settings: Any, http: httpx.AsyncClient | None = None,
                      tokens: TokenProvider | None = None, *, retry: RetryPolicy | None = None,
                      concurrency: int = DEFAULT_CONCURRENCY, counters: Counters | None = None,
                      **kwargs: Any) -> "BCClient":
        """``http`` None -> the shared client of the running loop; ``tokens`` None -> ``provider_from_settings``."""
        transport = Transport(
            "bc", tokens=tokens or provider_from_settings(settings), scope=settings.bc_scope, http=http,
            retry=retry, concurrency=concurrency, counters=counters, error_parser=parse_bc_error,
            default_headers={"Accept": "application/json"})
        return cls(transport, settings.bc_api_base_url, settings.bc_company_id, **kwargs)

    def key_of(self, entity_set: str) -> str:
        return self.key

    # -- URLs ----------------------------------------------------------------------------------------------
    def entity_url(self, entity_set: str, id: Any = None) -> str:
        """Absolute URL of a company entity set, or of one record when ``id`` is given (validated GUID)."""
        path = f"{self.company_url}/{odata.field(entity_set)}"
        return f"{path}({odata.key(id)})" if id is not None else path

    def _relative_url(self, entity_set: str, id: Any = None, params: Mapping[str, Any] | None = None) -> str:
        """URL relative to ``…/api/v2.0/`` as ``$batch`` wants it."""
        url = f"companies({self.company_id})/{odata.field(entity_set)}"
        if id is not None:
            url += f"({odata.key(id)})"
        return Transport.with_query(url, params)

    # -- reads ---------------------------------------------------------------------------------------------
    async def iter_pages(self, entity_set: str, *, filter: str | None = None,
                         select: Sequence[str] | str | None = None, orderby: Sequence[str] | str | None = None,
                         expand: str | None = None, top: int | None = None,
                         page_size: int | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages (lists of records) of a query, following ``@odata.nextLink`` (bounded memory).

        ``filter`` should be built with ``sync.odata`` (``odata.eq("number", value)``…)."""
        size = min(page_size or self.page_size, MAX_PAGE_SIZE)
        headers = {"Prefer": f"odata.maxpagesize={size}"}
        params = self._query(filter=filter, select=select, orderby=orderby, expand=expand, top=top)
        async for page in self.transport.pages(self.entity_url(entity_set), params=params, headers=headers):
            yield page

    async def get(self, entity_set: str, id: Any, *, select: Sequence[str] | str | None = None,
                  expand: str | None = None) -> dict[str, Any]:
        """One record; ``UpstreamNotFound`` when it doesn't exist."""
        return await self.transport.get_json(self.entity_url(entity_set, id),
                                             params=self._query(select=select, expand=expand))

    async def companies(self) -> list[dict[str, Any]]:
        """The tenant's companies (``GET …/api/v2.0/companies``)."""
        out: list[dict[str, Any]] = []
        async for page in self.transport.pages(f"{self.api_base_url}/companies"):
            out.extend(page)
        return out

    # -- writes --------------------------------------------------------------------------------------------
    async def create(self, entity_set: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new record; returns BC's 201 body (with the ``id`` BC assigned and ``@odata.etag``).

        Not idempotent: a lost answer raises ``UpstreamOutcomeUnknown`` and is never replayed - look the record
        up by its marker (``find``) before creating again.
        """
        response = await self.transport.request("POST", self.entity_url(entity_set), json=dict(body))
        return response.json()

    async def update(self, entity_set: str, id: Any, changes: Mapping[str, Any], etag: str) -> dict[str, Any]:
        """PATCH with ``If-Match: etag`` (``"*"`` = unconditional); returns the updated record (new etag).

        Stale etag -> ``UpstreamConcurrency``; missing record -> ``UpstreamNotFound``."""
        if not etag:
            raise ValueError("BC requires If-Match on PATCH: pass the record's @odata.etag or '*'")
        response = await self.transport.request("PATCH", self.entity_url(entity_set, id), json=dict(changes),
                                                headers={"If-Match": etag})
        return response.json() if response.content else {}

    async def delete(self, entity_set: str, id: Any, etag: str = "*", *, missing_ok: bool = False) -> bool:
        """DELETE with ``If-Match``. Returns False when the record was already gone and ``missing_ok``."""
        return await self._delete(entity_set, id, {"If-Match": etag}, missing_ok)

    # -- $batch --------------------------------------------------------------------------------------------
    async def batch(self, ops: Sequence[BatchOp], *, concurrent: bool = True) -> list[BatchResult]:
        """Run operations through JSON ``$batch``; one ``BatchResult`` per op, in input order. Never raises for a
        failed operation: failures are typed errors in ``BatchResult.error``.

        Ungrouped ops are sent 100 per request (several requests run concurrently unless ``concurrent=False``;
        order is kept within a request). Ops sharing a ``group`` go together in their own request with
        ``Isolation: snapshot`` (all-or-nothing; at most 100). If a whole request fails (throttled past the
        budget, outcome unknown, …) each of its ops carries that error.
        """
        for op in ops:
            if op.method.upper() == "POST" and op.id is not None:
                raise ValueError("BC assigns ids on create (SystemId); a chosen id can't be sent")
            if op.method.upper() in ("PATCH", "DELETE") and not op.etag:
                raise ValueError("BC requires If-Match on PATCH/DELETE: set BatchOp.etag (or '*')")
        results: list[BatchResult | None] = [None] * len(ops)
        chunks: list[tuple[list[int], bool]] = []
        groups: dict[str, list[int]] = {}
        loose: list[int] = []
        for i, op in enumerate(ops):
            (groups.setdefault(op.group, []) if op.group is not None else loose).append(i)
        for name, idx in groups.items():
            if len(idx) > MAX_BATCH_OPERATIONS:
                raise ValueError(f"group {name!r} has {len(idx)} operations; BC runs at most "
                                 f"{MAX_BATCH_OPERATIONS} in one atomic $batch")
            chunks.append((idx, True))
        for start in range(0, len(loose), MAX_BATCH_OPERATIONS):
            chunks.append((loose[start:start + MAX_BATCH_OPERATIONS], False))

        async def run(indices: list[int], isolated: bool) -> None:
            for i, result in zip(indices, await self._send_batch([ops[i] for i in indices], isolated)):
                results[i] = result

        if concurrent:
            await asyncio.gather(*(run(idx, iso) for idx, iso in chunks))
        else:
            for idx, iso in chunks:
                await run(idx, iso)
        return [r for r in results if r is not None]

    def _batch_request(self, op: BatchOp, rid: str) -> dict[str, Any]:
        method = op.method.upper()
        params = {"$select": odata.select(op.select)} if op.select and method == "GET" else None
        req: dict[str, Any] = {"id": rid, "method": method,
                               "url": self._relative_url(op.entity_set, op.id, params), "headers": {}}
        if op.body is not None:
            req["headers"]["Content-Type"] = "application/json"
            req["body"] = dict(op.body)
        if op.etag and method in ("PATCH", "DELETE"):
            req["headers"]["If-Match"] = op.etag
        return req

    async def _send_batch(self, ops: list[BatchOp], isolated: bool) -> list[BatchResult]:
        payload = {"requests": [self._batch_request(op, str(i)) for i, op in enumerate(ops)]}
        headers = {"Accept": "application/json"}
        if isolated:
            headers["Isolation"] = "snapshot"
        url = f"{self.api_base_url}/$batch"
        try:
            response = await self.transport.request("POST", url, json=payload, headers=headers,
                                                    idempotent=batch_is_idempotent(ops), operations=len(ops))
            data = response.json()
        except UpstreamError as exc:
            return [BatchResult(op, status=exc.status, error=exc) for op in ops]
        except ValueError as exc:  # not JSON
            err = make_error("bc", None, ErrorInfo(), cls=UpstreamError, method="POST", url=url,
                             fallback=f"bc: unreadable $batch response ({exc})")
            return [BatchResult(op, error=err) for op in ops]
        results = parse_bc_batch_response(data, ops, self.transport, url)
        failed = next((r for r in results if r.error is not None), None)
        if isolated and failed is not None:  # Isolation: snapshot rolled every change of this request back
            for r in results:
                if r.error is None:
                    r.error = make_error("bc", failed.status, ErrorInfo(code=failed.error.api_code),
                                         cls=type(failed.error), method=r.op.method, url=url,
                                         fallback=f"rolled back with its group: {failed.error.message}")
                    r.status = failed.status
                r.error.details["rolledBack"] = True
        return results


def parse_bc_batch_response(data: Mapping[str, Any], ops: Sequence[BatchOp], transport: Transport,
                            url: str | None = None) -> list[BatchResult]:
    """Map ``{"responses":[{id,status,headers,body}]}`` back to ``ops`` (request ids are their positions as
    strings; when the answer echoes none of them, answers are taken in request order)."""
    responses = [r for r in (data.get("responses") or []) if isinstance(r, Mapping)]
    ours = {str(i) for i in range(len(ops))}
    by_id: dict[str, Mapping[str, Any]] = {}
    if any(str(r.get("id")) in ours for r in responses):
        by_id = {str(r.get("id")): r for r in responses}
    else:  # ids not echoed (doc sample: "id": null): answers come in request order
        by_id = {str(pos): r for pos, r in enumerate(responses)}
    results: list[BatchResult] = []
    for i, op in enumerate(ops):
        resp = by_id.get(str(i))
        if resp is None:
            err = make_error("bc", None, ErrorInfo(), cls=UpstreamError, method=op.method, url=url,
                             fallback="bc: no response for this operation in the $batch response")
            results.append(BatchResult(op, error=err))
            continue
        status = int(resp.get("status") or 0)
        body = resp.get("body")
        if isinstance(body, str):  # some servers embed the body as text
            try:
                body = jsonlib.loads(body) if body.strip() else None
            except ValueError:
                pass
        headers = {str(k).lower(): v for k, v in (resp.get("headers") or {}).items()}
        if 200 <= status < 300:
            record = body if isinstance(body, dict) else None
            rid = (record or {}).get("id") or (str(odata.Guid(op.id)) if op.id is not None else None)
            if rid is None and headers.get("location"):
                match = re.search(r"\(([0-9A-Fa-f-]{36})\)\s*$", headers["location"])
                rid = match.group(1).lower() if match else None
            results.append(BatchResult(op, status=status, body=record, id=rid,
                                       etag=(record or {}).get("@odata.etag") or headers.get("etag")))
        else:
            retry_after = parse_retry_after(headers.get("retry-after"))
            error = make_error("bc", status, transport.error_parser(body if body is not None else b""),
                               method=op.method, url=url, retry_after=retry_after)
            results.append(BatchResult(op, status=status, body=body if isinstance(body, dict) else None,
                                       id=str(odata.Guid(op.id)) if op.id is not None else None, error=error))
    return results
