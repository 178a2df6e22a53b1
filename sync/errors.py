"""The small set of typed errors the whole app raises.

Services and adapters raise these; the HTTP layer (``api/http.py``) maps them to status codes in one place.
Nothing here imports ``azure.functions``.
"""
from __future__ import annotations


class SyncError(Exception):
    """Base of every error the app raises on purpose. ``code`` is stable and machine-readable."""

    code = "Error"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}


# --- errors of the caller's request (4xx) -----------------------------------------------------------
class RequestError(SyncError):
    """The caller's request is wrong; nothing was written."""

    code = "BadRequest"


class NotFound(RequestError):
    code = "NotFound"


class Conflict(RequestError):
    code = "Conflict"


class Unprocessable(RequestError):
    """Well-formed, but the records or settings it names don't allow it (BC's 'filter' and 'setup' errors)."""

    code = "Unprocessable"


class Unauthorized(RequestError):
    code = "Unauthorized"


class NotSupported(SyncError):
    """The request is valid but asks for something this version does not do (HTTP 501)."""

    code = "NotImplemented"


# --- errors of our own setup --------------------------------------------------------------------------
class ConfigurationError(SyncError):
    """A setting is missing or wrong. Always names the setting."""

    code = "Configuration"

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}", details={"setting": setting})
        self.setting = setting


# --- errors of BC or Dataverse ------------------------------------------------------------------------
class UpstreamError(SyncError):
    """An error answered (or not answered) by Business Central or Dataverse.

    ``service`` is ``"bc"`` or ``"dataverse"``; ``status`` the HTTP status (``None`` when no answer came);
    ``api_code`` and ``api_message`` are the service's own error code and message, unchanged.
    """

    code = "UpstreamError"

    def __init__(self, service: str, message: str, *, status: int | None = None,
                 api_code: str | None = None, api_message: str | None = None,
                 method: str | None = None, url: str | None = None):
        super().__init__(message, details={k: v for k, v in {
            "service": service, "status": status, "apiCode": api_code}.items() if v is not None})
        self.service = service
        self.status = status
        self.api_code = api_code
        self.api_message = api_message if api_message is not None else message
        self.method = method
        self.url = url


class UpstreamNotFound(UpstreamError):
    code = "UpstreamNotFound"


class UpstreamConcurrency(UpstreamError):
    """ETag conflict: BC's 409 Request_EntityChanged, Dataverse's 412."""

    code = "UpstreamConcurrency"


class UpstreamValidation(UpstreamError):
    """The service refused the data (400 and similar): retrying the same request can't help."""

    code = "UpstreamValidation"


class UpstreamUnauthorized(UpstreamError):
    code = "UpstreamUnauthorized"


class UpstreamThrottled(UpstreamError):
    """429 (or 503 with Retry-After) still answered when the retry budget was spent."""

    code = "UpstreamThrottled"

    def __init__(self, *args, retry_after: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """5xx or connection failures that outlived the retry budget."""

    code = "UpstreamUnavailable"


class UpstreamOutcomeUnknown(UpstreamError):
    """A non-idempotent request (POST) lost its connection after it may have reached the service.

    It is never replayed blindly: the caller must look the record up (e.g. by the id it supplied) first.
    """

    code = "UpstreamOutcomeUnknown"
