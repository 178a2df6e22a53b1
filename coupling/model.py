"""The coupling record itself (BC's CRM Integration Record) and its keys: pure data, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sync.errors import RequestError

from .keys import decode_key_part, encode_key_part, normalize_guid

RESULT_SUCCESS = "Success"
RESULT_FAILURE = "Failure"

MAX_ERROR_CHARS = 8000
"""``last_error`` is cut to this many characters (a string property holds at most 32K UTF-16 units)."""

_BC = "bc_"
_DV = "dv_"


# --- keys -------------------------------------------------------------------------------------------------------------
def partition_key(mapping: str) -> str:
    """The partition of a mapping's couplings: its name, encoded (``PAYMENT TERMS`` -> ``PAYMENT~20TERMS``)."""
    return encode_key_part(mapping, what="mapping")


def mapping_from_partition_key(key: str) -> str:
    return decode_key_part(key, what="partition key")


def bc_row_key(bc_id: str) -> str:
    return _BC + normalize_guid(bc_id, what="bc_id")


def dataverse_row_key(dataverse_id: str) -> str:
    return _DV + normalize_guid(dataverse_id, what="dataverse_id")


# --- the record -------------------------------------------------------------------------------------------------------
def _utc(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise RequestError(f"{what} must be a datetime", details={what: repr(value)})
    if value.tzinfo is None or value.utcoffset() is None:
        raise RequestError(f"{what} must be timezone-aware", details={what: value.isoformat()})
    v = value.astimezone(timezone.utc)
    # a plain datetime (the SDK returns its own subclass)
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=timezone.utc)


def _truncate(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "\u2026"


@dataclass
class Coupling:
    """One coupling of a mapping (BC's CRM Integration Record).

    ``bc_modified_on`` / ``dataverse_modified_on`` are BC's "Last Synch. Modified On" / "Last Synch. CRM Modified
    On": each side's modified-on as of the last successful sync. ``to_*`` is the last ToIntegrationTable pass
    (BC -> Dataverse, BC's "Last Synch. CRM Result/Job ID"), ``from_*`` the last FromIntegrationTable pass.
    ``etag`` is opaque (``(bc row etag, dataverse row etag)``, either may be None) and not part of equality.
    """

    mapping: str
    bc_id: str
    dataverse_id: str
    bc_modified_on: datetime | None = None
    dataverse_modified_on: datetime | None = None
    dataverse_version: int | None = None
    """The Dataverse row's ``versionnumber`` as of the last successful sync: ``modifiedon`` has whole seconds, so
    an edit in the same second as the sync's own write is only visible through the row version."""
    to_result: str | None = None
    to_job_id: str | None = None
    from_result: str | None = None
    from_job_id: str | None = None
    skipped: bool = False
    last_error: str | None = None
    to_error: str | None = None
    """The error of the last ToIntegrationTable pass when it failed (BC compares each direction's error with
    that direction's previous one: the same failure twice marks the coupling skipped)."""
    from_error: str | None = None
    coupled_at: datetime | None = None
    etag: tuple[str | None, str | None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        partition_key(self.mapping)  # validates the name
        self.bc_id = normalize_guid(self.bc_id, what="bc_id")
        self.dataverse_id = normalize_guid(self.dataverse_id, what="dataverse_id")
        self.bc_modified_on = _utc(self.bc_modified_on, "bc_modified_on")
        self.dataverse_modified_on = _utc(self.dataverse_modified_on, "dataverse_modified_on")
        if self.dataverse_version is not None:
            self.dataverse_version = int(self.dataverse_version)
        self.coupled_at = _utc(self.coupled_at, "coupled_at")
        self.skipped = bool(self.skipped)
        self.last_error = _truncate(self.last_error)
        self.to_error = _truncate(self.to_error)
        self.from_error = _truncate(self.from_error)




# --- option mappings -------------------------------------------------------------------------------------------------
_OPTION_PREFIX = "00000000-0000-0000-0000-"


def option_value_id(value: int) -> str:
    """The coupling id of a Dataverse option value (option mappings couple BC records with option values, not rows).

    The store keys couplings by GUID, so an option value ``n`` is stored as the GUID whose last 12 hex digits are
    ``n`` (``3`` -> ``00000000-0000-0000-0000-000000000003``); option values are < 2^31, and no Dataverse row id
    looks like this.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 48:
        raise ValueError(f"not an option value: {value!r}")
    return f"{_OPTION_PREFIX}{value:012x}"


def option_value_of(coupling_id: str) -> int | None:
    """The option value a coupling id stands for, or None for a row id."""
    text = str(coupling_id).lower()
    if not text.startswith(_OPTION_PREFIX):
        return None
    return int(text[len(_OPTION_PREFIX):], 16)
