"""HTTP transport shared by the BC and Dataverse clients: retries, typed errors, concurrency limit, counters.

What it does for every request:

* **retries** 429/502/503/504 and connection failures, honouring ``Retry-After`` exactly (seconds, fractional
  accepted, or an HTTP-date), else exponential backoff with full jitter; bounded by ``RetryPolicy.max_attempts``
  and ``RetryPolicy.max_total_wait`` (sum of the sleeps). A ``Retry-After`` longer than what is left of the
  budget ends the retries at once (``UpstreamThrottled`` carries it, so a caller can reschedule).
* **never replays a request that may have happened** unless it is idempotent: a non-idempotent request (POST
  create, ``$batch`` with a POST) whose connection dropped after it was sent (read error/timeout, server closed
  the connection, write error) or that got a 502/504 from a gateway raises ``UpstreamOutcomeUnknown``. A connect
  error / connect timeout / pool timeout (the request provably never left) is retried for any method. GET, PUT,
  PATCH (a replayed PATCH to the same id with ``If-Match`` writes the same values; with a specific etag a replay
  may come back as ``UpstreamConcurrency``) and DELETE (a replay may come back as ``UpstreamNotFound``) are
  treated as idempotent.
* **never retries** other statuses (400/401/403/404/409/412…); they become typed errors
  (``error_for_status``) carrying the service's code and message. A 401 also drops the cached token.
* **limits concurrency** per transport (``Limiter``; Dataverse lowers it to ``x-ms-dop-hint`` when sent);
  the slot is held only while a request is in flight, not while sleeping between attempts.
* **counts** round trips and operations (``Counters``; one ``$batch`` is one request and N operations).

The process-wide ``httpx.AsyncClient`` (keep-alive, timeouts) comes from ``get_http_client()``, one per running
event loop, created at first use; ``aclose_http_client()`` closes it.
"""
from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import logging
import random
import re
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import httpx
from azure.core.exceptions import ClientAuthenticationError

from ..errors import (UpstreamConcurrency, UpstreamError, UpstreamNotFound, UpstreamOutcomeUnknown,
                      UpstreamThrottled, UpstreamUnauthorized, UpstreamUnavailable, UpstreamValidation)
from .. import odata
from ..odata import query_string
from .auth import TokenProvider

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
GATEWAY_STATUSES = frozenset({502, 504})
"""A gateway answered, but the service behind it may have processed the request."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0, pool=60.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=32, keepalive_expiry=60.0)


# --- policy and counters ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Retry budget: at most ``max_attempts`` attempts and ``max_total_wait`` seconds of sleeping in total.

    Defaults suit Azure Functions (a 5-10 minute function timeout): 6 attempts, 2 minutes of waiting.
    Backoff without ``Retry-After``: uniform in ``[0, min(max_delay, base_delay * 2**(retry-1))]`` (full jitter).
    """

    max_attempts: int = 6
    max_total_wait: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.max_delay, self.base_delay * (2 ** (retry - 1)))


@dataclass
class Counters:
    """Simple counters a benchmark can print. ``requests`` are HTTP round trips (retries included),
    ``operations`` API operations as the services count them (each ``$batch`` part counts)."""

    requests: int = 0
    operations: int = 0
    retries: int = 0
    throttled: int = 0
    """429 answers seen (including the ones ridden out)."""
    errors: int = 0
    """Requests that ended in a typed error."""

    def snapshot(self) -> dict[str, int]:
        return {"requests": self.requests, "operations": self.operations, "retries": self.retries,
                "throttled": self.throttled, "errors": self.errors}

    def reset(self) -> None:
        self.requests = self.operations = self.retries = self.throttled = self.errors = 0


class Limiter:
    """An async concurrency limit whose size can change (``x-ms-dop-hint``). Use as ``async with limiter:``."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("concurrency limit must be >= 1")
        self._limit = limit
        self.in_use = 0
        self.peak = 0
        self._cond: asyncio.Condition | None = None

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, int(limit))
        # waiters re-check at the next release; raising the limit is rare enough not to wake them here

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def __aenter__(self) -> "Limiter":
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_use < self._limit)
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        cond = self._condition()
        async with cond:
            self.in_use -= 1
            cond.notify_all()


# --- errors -------------------------------------------------------------------------------------------------
@dataclass
class ErrorInfo:
    """A service error body, read: ``code`` and ``message`` as sent (``raw_message``) and ``message`` cleaned of
    service noise (BC's ``  CorrelationId:  <guid>.`` suffix); ``details`` e.g. the correlation id."""

    code: str | None = None
    raw_message: str | None = None
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


_CODE_RE = re.compile(r'"code"\s*:\s*"((?:[^"\\]|\\.)*)"')
_MESSAGE_RE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def parse_error_body(body: Any) -> ErrorInfo:
    """OData error body ``{"error":{"code","message",…}}`` of either service, from bytes/str or parsed JSON.

    Tolerant: an unparseable body (proxies, the malformed doc sample) still yields code/message by pattern, and
    an empty or non-JSON body yields an empty ``ErrorInfo``.
    """
    data: Any = body
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        text = body.strip()
        if not text:
            return ErrorInfo()
        try:
            data = jsonlib.loads(text)
        except ValueError:
            code = _CODE_RE.search(text)
            msg = _MESSAGE_RE.search(text)
            if not (code or msg):
                return ErrorInfo(message=text[:500], raw_message=text[:500])
            unescape = (lambda s: jsonlib.loads(f'"{s}"'))
            message = unescape(msg.group(1)) if msg else None
            return ErrorInfo(code=unescape(code.group(1)) if code else None, raw_message=message, message=message)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code")
        message = err.get("message")
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        return ErrorInfo(code=str(code) if code is not None else None,
                         raw_message=str(message) if message is not None else None,
                         message=str(message) if message is not None else None, details=details)
    return ErrorInfo()


def error_class_for_status(status: int, *, retry_after: float | None = None) -> type[UpstreamError]:
    if status in (401, 403):
        return UpstreamUnauthorized
    if status == 404:
        return UpstreamNotFound
    if status in (409, 412):
        return UpstreamConcurrency
    if status == 429 or (status == 503 and retry_after is not None):
        return UpstreamThrottled
    if status >= 500 or status == 408:
        return UpstreamUnavailable
    return UpstreamValidation


def make_error(service: str, status: int | None, info: ErrorInfo, *, method: str | None = None,
               url: str | None = None, retry_after: float | None = None,
               cls: type[UpstreamError] | None = None, fallback: str | None = None) -> UpstreamError:
    """The typed error for an answer (or for no answer when ``status`` is None and ``cls`` is given).

    ``message`` is the cleaned service message; ``api_message`` the raw one; ``api_code`` the service code.
    """
    if cls is None:
        assert status is not None
        cls = error_class_for_status(status, retry_after=retry_after)
    message = info.message or fallback or (f"{service} answered HTTP {status}" if status else f"{service}: no answer")
    kwargs: dict[str, Any] = dict(status=status, api_code=info.code or None, api_message=info.raw_message,
                                  method=method, url=url)
    if cls is UpstreamThrottled:
        err: UpstreamError = UpstreamThrottled(service, message, retry_after=retry_after, **kwargs)
    else:
        err = cls(service, message, **kwargs)
    if "correlationId" in info.details:
        err.details["correlationId"] = info.details["correlationId"]
    extra = {k: v for k, v in info.details.items() if k != "correlationId"}
    if extra:
        err.details["apiDetails"] = extra  # e.g. Dataverse's @Microsoft.PowerApps.CDS.* annotations
    if retry_after is not None:
        err.details["retryAfter"] = retry_after
    return err


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (fractions accepted) or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


# --- shared http client -------------------------------------------------------------------------------------
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = weakref.WeakKeyDictionary()


def new_http_client(*, timeout: httpx.Timeout = DEFAULT_TIMEOUT, limits: httpx.Limits = DEFAULT_LIMITS,
                    **kwargs: Any) -> httpx.AsyncClient:
    """A fresh ``httpx.AsyncClient`` with the app's timeouts and pool limits (keep-alive on)."""
    return httpx.AsyncClient(timeout=timeout, limits=limits, **kwargs)


def get_http_client() -> httpx.AsyncClient:
    """The process-wide client of the running event loop, created at first use (never at import time)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = _clients[loop] = new_http_client()
    return client


async def aclose_http_client() -> None:
    """Close the running loop's shared client (tests, shutdown). The next ``get_http_client()`` makes a new one."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


# --- batch vocabulary (shared by both clients) --------------------------------------------------------------
@dataclass(frozen=True)
class BatchOp:
    """One operation of a ``$batch``.

    ``etag`` is sent as ``If-Match`` (BC requires one on PATCH/DELETE: pass ``"*"`` for unconditional).
    ``group``: operations with the same group are executed atomically (Dataverse: one changeset; BC: their own
    ``$batch`` with ``Isolation: snapshot``). ``id`` on a POST is the primary key to create with (Dataverse only;
    BC assigns SystemIds itself). ``return_representation`` asks Dataverse for the body of a POST/PATCH.
    """

    method: str
    entity_set: str
    id: Any = None
    body: Mapping[str, Any] | None = None
    etag: str | None = None
    select: Sequence[str] | None = None
    group: str | None = None
    return_representation: bool = False

    @classmethod
    def get(cls, entity_set: str, id: Any, *, select: Sequence[str] | None = None) -> "BatchOp":
        return cls("GET", entity_set, id=id, select=select)

    @classmethod
    def create(cls, entity_set: str, body: Mapping[str, Any], *, id: Any = None, group: str | None = None,
               return_representation: bool = False) -> "BatchOp":
        return cls("POST", entity_set, id=id, body=body, group=group, return_representation=return_representation)

    @classmethod
    def update(cls, entity_set: str, id: Any, body: Mapping[str, Any], *, etag: str | None = "*",
               group: str | None = None, return_representation: bool = False) -> "BatchOp":
        return cls("PATCH", entity_set, id=id, body=body, etag=etag, group=group,
                   return_representation=return_representation)

    @classmethod
    def delete(cls, entity_set: str, id: Any, *, etag: str | None = "*", group: str | None = None) -> "BatchOp":
        return cls("DELETE", entity_set, id=id, etag=etag, group=group)


@dataclass
class BatchResult:
    """The outcome of one ``BatchOp``: HTTP ``status`` (None when no answer), ``body`` (parsed JSON or None),
    ``id`` (the record's id; for a create, the new id), ``etag``, and ``error`` (a typed ``UpstreamError``)."""

    op: BatchOp
    status: int | None = None
    body: dict[str, Any] | None = None
    id: str | None = None
    etag: str | None = None
    error: UpstreamError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def batch_is_idempotent(ops: Sequence[BatchOp]) -> bool:
    return all(op.method.upper() != "POST" for op in ops)


# --- the transport ------------------------------------------------------------------------------------------
ErrorParser = Callable[[Any], ErrorInfo]


class Transport:
    """Requests to one service (``"bc"`` or ``"dataverse"``) with auth, retries, typed errors and a limit.

    ``http``: an explicit ``httpx.AsyncClient``, or None for the shared one of the running loop.
    ``default_headers`` are sent on every request (the caller's headers win). ``dop_hint_header``: a response
    header whose value lowers the concurrency limit (Dataverse ``x-ms-dop-hint``), never above ``concurrency``.
    ``sleep``/``rng``/``clock`` are injectable for tests.
    """

    def __init__(self, service: str, *, tokens: TokenProvider, scope: str, http: httpx.AsyncClient | None = None,
                 retry: RetryPolicy | None = None, concurrency: int = 8, counters: Counters | None = None,
                 default_headers: Mapping[str, str] | None = None, error_parser: ErrorParser = parse_error_body,
                 dop_hint_header: str | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: Callable[[], float] = random.random, clock: Callable[[], float] = time.time):
        self.service = service
        self.tokens = tokens
        self.scope = scope
        self._http = http
        self.retry = retry or RetryPolicy()
        self.max_concurrency = concurrency
        self.limiter = Limiter(concurrency)
        self.counters = counters if counters is not None else Counters()
        self.default_headers = dict(default_headers or {})
        self.error_parser = error_parser
        self.dop_hint_header = dop_hint_header
        self._sleep = sleep
        self._rng = rng
        self._clock = clock

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http if self._http is not None else get_http_client()

    # -- errors --------------------------------------------------------------------------------------------
    def error_for_status(self, status: int, body: Any, *, method: str | None = None, url: str | None = None,
                         retry_after: float | None = None) -> UpstreamError:
        """Typed error for a non-2xx answer (also used for the parts of a ``$batch``)."""
        return make_error(self.service, status, self.error_parser(body), method=method, url=url,
                          retry_after=retry_after)

    def _no_answer(self, cls: type[UpstreamError], exc: BaseException, method: str, url: str,
                   detail: str) -> UpstreamError:
        return make_error(self.service, None, ErrorInfo(), method=method, url=url, cls=cls,
                          fallback=f"{self.service}: {detail} ({type(exc).__name__}: {exc})")

    # -- requests ------------------------------------------------------------------------------------------
    @staticmethod
    def with_query(url: str, params: Mapping[str, Any] | None) -> str:
        """``url`` plus ``params`` percent-encoded once (``sync.odata.query_string``)."""
        qs = query_string(params or {})
        if not qs:
            return url
        return f"{url}{'&' if '?' in url else '?'}{qs}"

    async def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                      json: Any = None, content: bytes | str | None = None,
                      headers: Mapping[str, str] | None = None, idempotent: bool | None = None,
                      operations: int = 1) -> httpx.Response:
        """Send with retries; return the 2xx (or 304) response or raise a typed ``UpstreamError``.

        ``idempotent`` defaults from the method (POST is not). ``operations`` is what this request counts as in
        ``Counters.operations`` (the number of parts of a ``$batch``).
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        full_url = self.with_query(url, params)
        if json is not None:
            content = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            headers = {"Content-Type": "application/json", **(headers or {})}
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            send_headers = httpx.Headers(self.default_headers)
            send_headers.update(headers or {})  # case-insensitive: the caller's value replaces the default
            send_headers["Authorization"] = f"Bearer {await self._token(method, full_url)}"
            response: httpx.Response | None = None
            failure: BaseException | None = None
            try:
                async with self.limiter:
                    self.counters.requests += 1
                    self.counters.operations += operations
                    response = await self.http.request(method, full_url, content=content, headers=send_headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                failure = exc  # never left this process: safe to retry whatever the method
            except httpx.TransportError as exc:
                if not idempotent:
                    self.counters.errors += 1
                    raise self._no_answer(UpstreamOutcomeUnknown, exc, method, full_url,
                                          "the connection was lost after the request was sent; it may have been "
                                          "processed, so it is not replayed") from exc
                failure = exc

            retry_after: float | None = None
            if response is not None:
                self._note_dop_hint(response)
                status = response.status_code
                if 200 <= status < 300 or status == 304:
                    return response
                if status == 429:
                    self.counters.throttled += 1
                if status not in RETRY_STATUSES:
                    if status == 401:
                        invalidate = getattr(self.tokens, "invalidate", None)
                        if invalidate:
                            invalidate(self.scope)
                    self.counters.errors += 1
                    raise self.error_for_status(status, response.content, method=method, url=full_url)
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock)
                if not idempotent and status in GATEWAY_STATUSES:
                    self.counters.errors += 1
                    err = self.error_for_status(status, response.content, method=method, url=full_url)
                    raise UpstreamOutcomeUnknown(
                        self.service, f"{self.service} gateway answered {status} to a {method} that may have been "
                        f"processed; it is not replayed ({err.message})", status=status, api_code=err.api_code,
                        api_message=err.api_message, method=method, url=full_url)

            delay = retry_after if retry_after is not None else self.retry.backoff(attempt, self._rng)
            if attempt >= self.retry.max_attempts or waited + delay > self.retry.max_total_wait:
                self.counters.errors += 1
                if response is not None:
                    raise self.error_for_status(response.status_code, response.content, method=method,
                                                url=full_url, retry_after=retry_after)
                assert failure is not None
                raise self._no_answer(UpstreamUnavailable, failure, method, full_url,
                                      f"no answer after {attempt} attempts") from failure
            self.counters.retries += 1
            log.info("%s %s %s: %s, retry %d in %.3fs", self.service, method, urlsplit(full_url).path,
                     response.status_code if response is not None else type(failure).__name__, attempt, delay)
            await self._sleep(delay)
            waited += delay

    async def _token(self, method: str, url: str) -> str:
        try:
            return await self.tokens.token(self.scope)
        except ClientAuthenticationError as exc:  # no credential configured, or Entra ID refused it
            self.counters.errors += 1
            raise UpstreamUnauthorized(self.service, f"{self.service}: could not get a token for {self.scope}: "
                                       f"{exc.message if hasattr(exc, 'message') else exc}",
                                       method=method, url=url) from exc

    def _note_dop_hint(self, response: httpx.Response) -> None:
        if not self.dop_hint_header:
            return
        hint = response.headers.get(self.dop_hint_header)
        if hint:
            try:
                value = int(hint)
            except ValueError:
                return
            if value >= 1:
                self.limiter.set_limit(min(self.max_concurrency, value))

    async def get_json(self, url: str, *, params: Mapping[str, Any] | None = None,
                       headers: Mapping[str, str] | None = None) -> Any:
        response = await self.request("GET", url, params=params, headers=headers)
        return response.json()

    async def pages(self, url: str, *, params: Mapping[str, Any] | None = None,
                    headers: Mapping[str, str] | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of an OData collection: ``value`` of each page, following ``@odata.nextLink`` unchanged with the
        same headers (so the same ``Prefer: odata.maxpagesize``). Only one page is held at a time.

        A nextLink to another origin is refused (it would carry our bearer token elsewhere).
        """
        current = self.with_query(url, params)
        origin = _origin(current)
        while current:
            response = await self.request("GET", current, headers=headers)
            data = response.json()
            yield list(data.get("value") or [])
            next_link = data.get("@odata.nextLink")
            if not next_link:
                return
            if not urlsplit(next_link).scheme:  # relative nextLink (allowed by OData): resolve, else keep as is
                next_link = urljoin(current, next_link)
            if _origin(next_link) != origin:
                raise UpstreamValidation(self.service, f"{self.service} returned a nextLink to another origin: "
                                         f"{_origin(next_link)}", method="GET", url=current)
            current = next_link


def id_chunks(url: str, key: str, ids: Sequence[Any], max_url_length: int) -> list[list[Any]]:
    """Split ``ids`` so that ``url?$filter=key eq a or key eq b …`` (encoded) stays within ``max_url_length``.

    ``url`` is the request URL without the filter (it may already carry ``$select``). GUID terms all have the
    same length, so the chunk size is computed once from one term and one separator.
    """
    if not ids:
        return []
    base = len(url) + len("&$filter=")
    zero = odata.Guid(uuid.UUID(int=0))
    term = len(query_string({"": odata.eq(key, zero)})) - 1
    sep = len(query_string({"": " or "})) - 1
    per_request = max(1, (max_url_length - base + sep) // (term + sep))
    return [list(ids[i:i + per_request]) for i in range(0, len(ids), per_request)]


async def fetch_many(client: Any, entity_set: str, key: str, ids: Iterable[Any],
                     select: Sequence[str] | str | None, expand: str | None = None) -> dict[str, dict[str, Any]]:
    """``get_many`` of both clients: chunked ``key eq a or key eq b …`` queries run concurrently (the transport's
    limit bounds them). Returns ``{lower-case id: record}``; missing ids are absent. ``client`` provides
    ``entity_url``, ``list_all`` and ``max_url_length``. ``expand``: a ``$expand`` value, sent with every chunk."""
    wanted: list[Any] = []
    seen: set[str] = set()
    for raw in ids:
        guid = odata.Guid(raw)
        if guid not in seen:
            seen.add(guid)
            wanted.append(guid)
    if not wanted:
        return {}
    sel: str | None = None
    if select:
        names = [n.strip() for n in select.split(",")] if isinstance(select, str) else list(select)
        sel = odata.select(names if key in names else [key, *names])
    url = Transport.with_query(client.entity_url(entity_set), {"$select": sel, "$expand": expand})
    chunks = id_chunks(url, key, wanted, client.max_url_length)

    async def one(chunk: list[Any]) -> list[dict[str, Any]]:
        return await client.list_all(entity_set, filter=odata.any_of(key, chunk), select=sel, expand=expand,
                                     page_size=len(chunk))

    out: dict[str, dict[str, Any]] = {}
    for records in await asyncio.gather(*(one(c) for c in chunks)):
        for record in records:
            rid = str(record.get(key) or "").lower()
            if rid in seen:
                out[rid] = record
    return out


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def new_boundary(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4()}"


class ODataClient:
    """What both clients share; each client provides ``iter_pages``, ``get``, ``entity_url``, ``transport`` and
    ``key_of(entity_set)`` (the primary key property)."""

    transport: Transport

    @property
    def counters(self) -> Counters:
        return self.transport.counters

    @staticmethod
    def _query(*, filter: str | None = None, select: Sequence[str] | str | None = None,
               orderby: Sequence[str] | str | None = None, expand: str | None = None,
               top: int | None = None) -> dict[str, Any]:
        return {
            "$filter": filter or None,
            "$select": odata.select(select) if select else None,
            "$orderby": odata.orderby(orderby) if orderby else None,
            "$expand": expand or None,
            "$top": int(top) if top is not None else None,
        }

    async def list_all(self, entity_set: str, **query: Any) -> list[dict[str, Any]]:
        """Every record of a query (all pages in memory); same keywords as ``iter_pages``."""
        out: list[dict[str, Any]] = []
        async for page in self.iter_pages(entity_set, **query):  # type: ignore[attr-defined]
            out.extend(page)
        return out

    async def find(self, entity_set: str, filter: str, *, select: Sequence[str] | str | None = None,
                   top: int | None = None) -> list[dict[str, Any]]:
        """Records matching ``filter`` (build it with ``sync.odata``)."""
        return await self.list_all(entity_set, filter=filter, select=select, top=top)

    async def get_or_none(self, entity_set: str, id: Any, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return await self.get(entity_set, id, **kwargs)  # type: ignore[attr-defined]
        except UpstreamNotFound:
            return None

    async def get_many(self, entity_set: str, ids: Iterable[Any], *, select: Sequence[str] | str | None = None,
                       expand: str | None = None) -> dict[str, dict[str, Any]]:
        """Records by id in few requests (``key eq a or key eq b ...`` chunks, each URL <= ``max_url_length``).
        Returns ``{id: record}`` (lower-case ids); ids that don't exist are simply absent."""
        return await fetch_many(self, entity_set, self.key_of(entity_set), ids, select,  # type: ignore[attr-defined]
                                expand)

    async def _delete(self, entity_set: str, id: Any, headers: Mapping[str, str] | None, missing_ok: bool) -> bool:
        try:
            await self.transport.request("DELETE", self.entity_url(entity_set, id), headers=headers)  # type: ignore[attr-defined]
        except UpstreamNotFound:
            if missing_ok:
                return False
            raise
        return True

    async def request_json(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                           json: Any = None, headers: Mapping[str, str] | None = None,
                           idempotent: bool | None = None) -> Any:
        """Escape hatch for the service's other endpoints (BC ``subscriptions``, Dataverse ``WhoAmI``...), with the
        same headers, retries and typed errors."""
        response = await self.transport.request(method, url, params=params, json=json, headers=headers,
                                                idempotent=idempotent)
        return response.json() if response.content else None
