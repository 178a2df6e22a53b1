"""What every HTTP function shares: JSON in and out, and the one place where errors become status codes.

Triggers stay thin: parse with ``read_json``/``field``, call a service, return ``json_response``; any
``SyncError`` a service raises is turned into ``{"error": {"code", "message", ...}}`` by ``http_endpoint``.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import uuid
from typing import Any, Awaitable, Callable

import azure.functions as func

from sync import errors

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
"""Largest JSON body accepted; id lists of thousands fit comfortably."""


class PayloadTooLarge(errors.RequestError):
    code = "PayloadTooLarge"


class MethodNotAllowed(errors.RequestError):
    code = "MethodNotAllowed"


def _status_for(exc: errors.SyncError) -> int:
    # Order matters: subclasses first.
    table: list[tuple[type, int]] = [
        (PayloadTooLarge, 413),
        (MethodNotAllowed, 405),
        (errors.NotFound, 404),
        (errors.Conflict, 409),
        (errors.Unprocessable, 422),
        (errors.Unauthorized, 401),
        (errors.RequestError, 400),
        (errors.NotSupported, 501),
        (errors.ConfigurationError, 503),
        (errors.UpstreamThrottled, 503),
        (errors.UpstreamNotFound, 404),
        (errors.UpstreamConcurrency, 409),
        (errors.UpstreamValidation, 422),
        (errors.UpstreamOutcomeUnknown, 502),
        (errors.UpstreamUnauthorized, 502),
        (errors.UpstreamUnavailable, 502),
        (errors.UpstreamError, 502),
    ]
    for cls, status in table:
        if isinstance(exc, cls):
            return status
    return 500


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        body=json.dumps(body, ensure_ascii=False, default=_json_default),
        status_code=status,
        headers=headers,
        mimetype="application/json",
        charset="utf-8",
    )


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def error_response(exc: errors.SyncError) -> func.HttpResponse:
    status = _status_for(exc)
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details:
        body["details"] = exc.details
    headers = {}
    if isinstance(exc, errors.UpstreamThrottled) and exc.retry_after:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return json_response({"error": body}, status, headers)


def _path(req: func.HttpRequest) -> str:
    """The URL without its query string: ``?code=`` carries a function key, which must never reach the logs."""
    return req.url.split("?", 1)[0]


def http_endpoint(handler: Callable[..., Awaitable[func.HttpResponse]]):
    """Wrap an async HTTP handler: typed errors -> their status; anything else -> a logged 500.

    A 500 here is a bug by definition: every client error must already be a ``RequestError``.
    """

    @functools.wraps(handler)  # keeps the signature the worker matches against the bindings (e.g. a queue output)
    async def wrapper(req: func.HttpRequest, *args, **kwargs) -> func.HttpResponse:
        try:
            return await handler(req, *args, **kwargs)
        except errors.SyncError as exc:
            if _status_for(exc) >= 500:
                log.warning("%s %s failed: %s: %s", req.method, _path(req), exc.code, exc.message)
            return error_response(exc)
        except Exception:  # noqa: BLE001 - the last line of defence; never leak internals
            log.exception("unhandled error in %s %s", req.method, _path(req))
            return json_response({"error": {"code": "InternalError",
                                            "message": "An unexpected error occurred; it was logged."}}, 500)

    return wrapper


# --- request parsing ---------------------------------------------------------------------------------------
def read_json(req: func.HttpRequest, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object; clear 4xx errors for everything else."""
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes.")
    if not body.strip():
        if required:
            raise errors.RequestError("The request body is empty; a JSON object is expected.", code="EmptyBody")
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise errors.RequestError("The request body is not UTF-8.", code="InvalidJson") from None
    except ValueError as exc:
        raise errors.RequestError(f"The request body is not valid JSON: {exc}.", code="InvalidJson") from None
    if not isinstance(data, dict):
        raise errors.RequestError("The request body must be a JSON object.", code="InvalidJson")
    return data


_MISSING = object()
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", list: "an array", dict: "an object"}


def field(data: dict[str, Any], name: str, kind: type, *, required: bool = False, default: Any = None) -> Any:
    """One typed member of a JSON object (``bool`` is never accepted as ``int``)."""
    value = data.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise errors.RequestError(f"'{name}' is required.", code="MissingField", details={"field": name})
        return default
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise errors.RequestError(f"'{name}' must be {_TYPE_NAMES.get(kind, kind.__name__)}.",
                                  code="InvalidField", details={"field": name})
    return value


def reject_unknown(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise errors.RequestError(
            f"Unknown member(s): {', '.join(unknown)}. Allowed: {', '.join(sorted(allowed))}.",
            code="UnknownField", details={"fields": unknown})


def guid(value: Any, name: str) -> str:
    """A GUID in canonical lower-case form, or a 400 naming the member."""
    if isinstance(value, str):
        text = value.strip().strip("{}")
        try:
            if len(text) == 36:
                return str(uuid.UUID(text))
        except ValueError:
            pass
    raise errors.RequestError(f"'{name}' must be a GUID like 00000000-0000-0000-0000-000000000000.",
                              code="InvalidId", details={"field": name})


def guid_list(data: dict[str, Any], name: str, *, max_items: int = 10_000) -> list[str] | None:
    values = field(data, name, list)
    if values is None:
        return None
    if len(values) > max_items:
        raise errors.RequestError(f"'{name}' may hold at most {max_items} ids.", code="TooManyIds")
    out: list[str] = []
    seen: set[str] = set()
    for i, v in enumerate(values):
        g = guid(v, f"{name}[{i}]")
        if g not in seen:
            seen.add(g)
            out.append(g)
    return out


def query_param(req: func.HttpRequest, name: str) -> str | None:
    value = req.params.get(name)
    return value if value not in (None, "") else None


def int_param(req: func.HttpRequest, name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]`` (``default`` when absent), or a 400 naming it."""
    raw = query_param(req, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise errors.RequestError(f"'{name}' must be an integer from {low} to {high}.", code="InvalidField",
                                  details={"field": name})
    return value
