"""BC's synchronization engine rules, as pure functions (spec sections 3, 5, 6; BC codeunit 5345
"Integration Rec. Synch. Invoke").

No I/O. The services fetch the records, counterparts and couplings, call ``decide`` per record and pass, perform
what the ``Decision`` says (POST / PATCH ``decision.changes``, re-couple, remove the coupling, nothing), then record
the result on the coupling with ``after_success`` / ``after_failure`` (or the ``Decision`` helpers) and count the
``Outcome`` in ``JobCounters``.

Change detection (section 3): a side is *modified since the last sync* when its modified-on is later than the one
stored on the coupling (BC's 10 ms tolerance; never synced = modified), or when the last pass that reads that
side failed and the coupling isn't skipped (BC side: the ToIntegrationTable result; Dataverse side: the
FromIntegrationTable result). The sync's own writes are recorded as "last synced" on both sides, so their echo is
"unchanged": this is the loop prevention.

Deletes are never propagated: a deleted counterpart is a *deletion conflict*, resolved by the mapping's strategy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Mapping

from coupling.model import RESULT_FAILURE, RESULT_SUCCESS, Coupling

from . import odata
from .errors import RequestError, Unprocessable
from .mappings import DeletionConflictResolution, Direction, TableMapping, UpdateConflictResolution
from .transfer import LookupResolution, TransferResult, bc_caption, dataverse_caption, transfer

__all__ = [
    "TOLERANCE", "DATAVERSE_OVERLAP", "DATAVERSE_BOTH_MODIFIED_ADJUSTMENT", "BC_BOTH_MODIFIED_ADJUSTMENT",
    "parse_timestamp", "format_bc_timestamp", "format_dataverse_timestamp", "bc_timestamp", "dataverse_timestamp",
    "compare_datetime", "bc_modified_since_last_sync", "dataverse_modified_since_last_sync",
    "Action", "Reason", "Decision", "decide", "bulk_skip_reason", "resolve_sync_now_direction",
    "after_success", "after_failure",
    "dataverse_query_lower_bound", "bc_query_lower_bound", "dataverse_watermark_filter", "bc_watermark_filter",
    "next_watermark", "OutcomeKind", "Outcome", "JobCounters",
]

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

TOLERANCE = timedelta(milliseconds=10)
"""BC's TypeHelper.CompareDateTime: values less than 10 ms apart are equal."""
DATAVERSE_OVERLAP = timedelta(milliseconds=999)
"""The Dataverse watermark query reads ``modifiedon > watermark - 999 ms``."""
DATAVERSE_BOTH_MODIFIED_ADJUSTMENT = timedelta(milliseconds=999)
BC_BOTH_MODIFIED_ADJUSTMENT = timedelta(milliseconds=10)
"""After a successful pass where both sides were modified, the destination's stored timestamp is set this much
earlier than its real value, so the opposite pass picks up the destination's own changes."""

BC_MODIFIED_ON = "lastModifiedDateTime"


# ---------------------------------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------------------------------
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(value: Any) -> datetime | None:
    """A modified-on value as an aware UTC datetime: BC ``2025-02-23T13:34:29.943Z``, Dataverse
    ``2025-02-23T13:34:29Z``, any ISO 8601 text with an offset, or a datetime. ``None``, ``""`` and BC's blank
    date-time (year 1) give ``None``. Naive values raise ``ValueError`` (an unknown offset shifts everything)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = datetime.fromisoformat(_FRACTION_RE.sub(r"\1", text))
        except ValueError:
            raise ValueError(f"not an ISO 8601 date-time: {text!r}") from None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a date-time, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"date-time without offset: {value.isoformat()}")
    if value.year <= 1:
        return None
    return value.astimezone(timezone.utc)


def format_bc_timestamp(value: datetime) -> str:
    """``2025-02-23T13:34:29.943Z`` (BC's form: milliseconds, ``Z``)."""
    v = parse_timestamp(value)
    assert v is not None
    return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"


def format_dataverse_timestamp(value: datetime) -> str:
    """``2025-02-23T13:34:29Z`` (Dataverse's form: whole seconds, ``Z``; sub-seconds are dropped)."""
    v = parse_timestamp(value)
    assert v is not None
    return v.strftime("%Y-%m-%dT%H:%M:%SZ")


def bc_timestamp(record: Mapping[str, Any] | datetime | str | None) -> datetime | None:
    """A BC record's ``lastModifiedDateTime`` (SystemModifiedAt); a datetime or text is taken as is."""
    if isinstance(record, Mapping):
        return parse_timestamp(record.get(BC_MODIFIED_ON))
    return parse_timestamp(record)


def dataverse_timestamp(row: Mapping[str, Any] | datetime | str | None, column: str = "modifiedon") -> datetime | None:
    """A Dataverse row's ``modifiedon`` (the mapping's ``dataverse_modified_on`` column)."""
    if isinstance(row, Mapping):
        return parse_timestamp(row.get(column))
    return parse_timestamp(row)


def compare_datetime(a: datetime | str | None, b: datetime | str | None) -> int:
    """BC's CompareDateTime: 0 when less than 10 ms apart, else 1 (a later) or -1. ``None`` (never) is earlier
    than any time and equal to ``None``."""
    x, y = parse_timestamp(a), parse_timestamp(b)
    if x is None or y is None:
        return (x is not None) - (y is not None)
    if abs(x - y) < TOLERANCE:
        return 0
    return 1 if x > y else -1


def _modified(current: datetime | None, stored: datetime | None, failed: bool) -> bool:
    if failed:
        return True
    if stored is None or current is None:
        return True  # never synced (or no modified-on to prove otherwise)
    return compare_datetime(current, stored) > 0


def bc_modified_since_last_sync(coupling: Coupling | None,
                                bc_record: Mapping[str, Any] | datetime | str | None) -> bool:
    """BC side modified since the last sync: the ToIntegrationTable pass (which reads BC) last failed and the
    coupling isn't skipped, or ``lastModifiedDateTime`` is later than the stored one. No coupling = modified."""
    if coupling is None:
        return True
    failed = coupling.to_result == RESULT_FAILURE and not coupling.skipped
    return _modified(bc_timestamp(bc_record), coupling.bc_modified_on, failed)


def dataverse_modified_since_last_sync(coupling: Coupling | None, row: Mapping[str, Any] | datetime | str | None,
                                       column: str = "modifiedon") -> bool:
    """Dataverse side modified since the last sync: the FromIntegrationTable pass (which reads Dataverse) last
    failed and the coupling isn't skipped, or ``modifiedon`` is later than the stored one. No coupling = modified."""
    if coupling is None:
        return True
    failed = coupling.from_result == RESULT_FAILURE and not coupling.skipped
    version = row_version(row)
    if not failed and version is not None and coupling.dataverse_version is not None:
        # modifiedon has whole seconds: the row version also sees an edit in the second of the sync's own write
        return version > coupling.dataverse_version
    return _modified(dataverse_timestamp(row, column), coupling.dataverse_modified_on, failed)


def row_version(row: Mapping[str, Any] | datetime | str | None) -> int | None:
    """A Dataverse row's ``versionnumber`` (BigInt; grows with every write), if it was read."""
    if not isinstance(row, Mapping):
        return None
    value = row.get("versionnumber")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _source_modified(mapping: TableMapping, direction: Direction, coupling: Coupling,
                     record: Mapping[str, Any]) -> bool:
    if direction is TO:
        return bc_modified_since_last_sync(coupling, record)
    return dataverse_modified_since_last_sync(coupling, record, mapping.dataverse_modified_on or "modifiedon")


def _destination_modified(mapping: TableMapping, direction: Direction, coupling: Coupling,
                          record: Mapping[str, Any]) -> bool:
    return _source_modified(mapping, FROM if direction is TO else TO, coupling, record)


# ---------------------------------------------------------------------------------------------------------------------
# Outcomes and job counters
# ---------------------------------------------------------------------------------------------------------------------
class OutcomeKind(StrEnum):
    """What happened to one record in one pass. The first five are BC's job counters; ``uncoupled`` (a deletion
    conflict resolved by removing the coupling) and ``ignored`` (an uncoupled record of a Synch. Only Coupled
    Records mapping) are reported but not counted, as in BC."""

    INSERTED = "inserted"
    MODIFIED = "modified"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"
    UNCOUPLED = "uncoupled"
    IGNORED = "ignored"


class Reason(StrEnum):
    """Why a record was skipped, failed, left unchanged or ignored (stable machine-readable codes)."""

    COUPLING_SKIPPED = "couplingSkipped"          # the coupling is marked skipped (same error twice)
    NOT_COUPLED = "notCoupled"
    NOT_MODIFIED = "notModified"                  # source not modified since the last sync
    NO_CHANGES = "noChanges"                      # modified, but no mapped value differs
    UPDATE_CONFLICT = "updateConflict"
    DELETION_CONFLICT = "deletionConflict"
    DESTINATION_MODIFIED = "destinationModified"  # bulk sync-now never overwrites newer data
    TRANSFER_FAILED = "transferFailed"            # a field could not be transferred (e.g. lookup not coupled)


@dataclass(frozen=True)
class Outcome:
    """One record's result in a pass, as the services return and report it."""

    result: OutcomeKind
    reason: Reason | None = None
    message: str | None = None
    bc_id: str | None = None
    dataverse_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", OutcomeKind(self.result))
        if self.reason is not None:
            object.__setattr__(self, "reason", Reason(self.reason))

    def to_json(self) -> dict:
        return {"result": self.result.value, "reason": self.reason.value if self.reason else None,
                "message": self.message, "bcId": self.bc_id, "dataverseId": self.dataverse_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Outcome":
        return cls(OutcomeKind(data["result"]), Reason(data["reason"]) if data.get("reason") else None,
                   data.get("message"), data.get("bcId"), data.get("dataverseId"))


_COUNTED = (OutcomeKind.INSERTED, OutcomeKind.MODIFIED, OutcomeKind.UNCHANGED, OutcomeKind.SKIPPED,
            OutcomeKind.FAILED)


@dataclass
class JobCounters:
    """BC's Integration Synch. Job counters for one pass."""

    inserted: int = 0
    modified: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0

    def add(self, outcome: Outcome | OutcomeKind | str, count: int = 1) -> "JobCounters":
        """Count one outcome (``uncoupled`` and ``ignored`` are not counted). Returns self."""
        kind = OutcomeKind(outcome.result if isinstance(outcome, Outcome) else outcome)
        if kind in _COUNTED:
            setattr(self, kind.value, getattr(self, kind.value) + count)
        return self

    def merge(self, other: "JobCounters") -> "JobCounters":
        for kind in _COUNTED:
            setattr(self, kind.value, getattr(self, kind.value) + getattr(other, kind.value))
        return self

    @property
    def total(self) -> int:
        return self.inserted + self.modified + self.unchanged + self.skipped + self.failed

    @property
    def idle(self) -> bool:
        """BC's "idle" run (Inserted + Modified + Failed = 0), which puts the job on hold (spec 6.5)."""
        return self.inserted + self.modified + self.failed == 0

    def to_json(self) -> dict:
        return {k.value: getattr(self, k.value) for k in _COUNTED}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "JobCounters":
        return cls(**{k.value: int(data.get(k.value, 0) or 0) for k in _COUNTED})


# ---------------------------------------------------------------------------------------------------------------------
# The decision per record and pass
# ---------------------------------------------------------------------------------------------------------------------
class Action(StrEnum):
    """BC's synch. action (names from ``SynchActionType``), plus the two deletion-conflict resolutions."""

    INSERT = "Insert"                  # POST changes, create the coupling (counted Inserted)
    RESTORE = "RestoreRecord"          # deletion conflict, Restore Records: delete the old coupling, POST, re-couple
    MODIFY = "Modify"                  # PATCH changes (counted Modified)
    FORCE_MODIFY = "ForceModify"       # PATCH changes (may be empty: BC counts it Modified all the same)
    UNCHANGED = "IgnoreUnchanged"      # no write; refresh the coupling timestamps (counted Unchanged)
    SKIP = "Skip"                      # nothing (counted Skipped)
    FAIL = "Fail"                      # mark the coupling failed (counted Failed)
    REMOVE_COUPLING = "RemoveCoupling"  # deletion conflict, Remove Coupling: delete the coupling (not counted)
    IGNORE = "Ignore"                  # uncoupled, Synch. Only Coupled Records: not even counted


_OUTCOME_OF = {
    Action.INSERT: OutcomeKind.INSERTED, Action.RESTORE: OutcomeKind.INSERTED,
    Action.MODIFY: OutcomeKind.MODIFIED, Action.FORCE_MODIFY: OutcomeKind.MODIFIED,
    Action.UNCHANGED: OutcomeKind.UNCHANGED, Action.SKIP: OutcomeKind.SKIPPED, Action.FAIL: OutcomeKind.FAILED,
    Action.REMOVE_COUPLING: OutcomeKind.UNCOUPLED, Action.IGNORE: OutcomeKind.IGNORED,
}


@dataclass(frozen=True)
class Decision:
    """What to do with one record in one pass, and how to record it on the coupling afterwards.

    ``transfer``: the field transfer behind an Insert / Restore / Modify / ForceModify (its ``changes`` are the
    body to write), or the failed transfer behind a Fail. ``both_modified``: both sides were modified since the
    last sync (Bidirectional mappings, non-forced): a successful write adjusts the destination's stored timestamp.
    ``keep_destination_timestamp``: nothing was written although the destination was modified since the last
    sync, so its stored timestamp must not move (else the opposite pass would never see that change).
    """

    action: Action
    direction: Direction
    reason: Reason | None = None
    message: str | None = None
    transfer: TransferResult | None = None
    both_modified: bool = False
    keep_destination_timestamp: bool = False

    @property
    def changes(self) -> dict[str, Any]:
        return dict(self.transfer.changes) if self.transfer is not None else {}

    @property
    def writes(self) -> bool:
        """The service must POST (Insert, Restore) or PATCH (Modify, ForceModify) ``changes``."""
        return self.action in (Action.INSERT, Action.RESTORE, Action.MODIFY, Action.FORCE_MODIFY)

    @property
    def outcome_kind(self) -> OutcomeKind:
        return _OUTCOME_OF[self.action]

    def outcome(self, bc_id: str | None = None, dataverse_id: str | None = None) -> Outcome:
        return Outcome(self.outcome_kind, self.reason, self.message, bc_id, dataverse_id)

    def coupling_after_success(self, coupling: Coupling, job_id: str | None, *,
                               bc_modified_on: datetime | str | None,
                               dataverse_modified_on: datetime | str | None,
                               dataverse_version: int | None = None) -> Coupling:
        """``after_success`` with this decision's flags: the values are both sides' modified-on **after** the
        write (re-read); for an Unchanged record whose destination changed, the destination's is left alone."""
        if self.keep_destination_timestamp:
            if self.direction is TO:
                dataverse_modified_on = dataverse_version = None
            else:
                bc_modified_on = None
        return after_success(coupling, self.direction, job_id, bc_modified_on, dataverse_modified_on,
                             self.both_modified, dataverse_version)

    def coupling_after_failure(self, coupling: Coupling, job_id: str | None,
                               message: str | None = None) -> Coupling:
        """``after_failure`` with this decision's message (or ``message``, e.g. the error of the write itself)."""
        text = message if message is not None else self.message
        if not text:
            raise ValueError("a failure needs a message")
        return after_failure(coupling, self.direction, job_id, text)


def _pass(direction: Direction | str) -> Direction:
    d = Direction(direction)
    if d is Direction.BIDIRECTIONAL:
        raise ValueError("a decision is for one pass: ToIntegrationTable or FromIntegrationTable")
    return d


def _captions(mapping: TableMapping, direction: Direction) -> tuple[str, str]:
    """(source caption, destination caption) for messages."""
    bc, dv = bc_caption(mapping.bc_entity_type), dataverse_caption(mapping.dataverse_table)
    return (bc, dv) if direction is TO else (dv, bc)


def update_conflict_message(mapping: TableMapping, direction: Direction, source_field: str,
                            destination_field: str) -> str:
    """BC's SourceAndDestinationConflictErr."""
    src, dst = _captions(mapping, direction)
    return (f"Cannot update a record in the {dst} table. The mapping between {source_field} field on the {src} "
            f"table and the {destination_field} field on the {dst} table is bi-directional, and one or both values "
            "have changed since the last synchronization.")


def decide(mapping: TableMapping, direction: Direction | str, *, source: Mapping[str, Any],
           coupling: Coupling | None, destination: Mapping[str, Any] | None,
           resolved: LookupResolution | None = None, forced: bool = False,
           ignore_sync_only_coupled: bool = False) -> Decision:
    """BC's record engine for one record and one pass (spec 6.4, 5.4, 5.5).

    ``source``: the record of the pass's source side; ``coupling``: its coupling (None: not coupled);
    ``destination``: the coupled counterpart as read now (None: not coupled, or the counterpart was deleted).
    ``forced``: a one-off sync-now job (BC's ForceModify: no unchanged short-cut, no update-conflict check, the
    deletion-conflict strategy isn't applied); pass it too after the service coupled a record implicitly (4.4).
    ``ignore_sync_only_coupled``: insert uncoupled records although the mapping has Synch. Only Coupled Records
    (create-new jobs, full sync, sync from Sales).

    Order: skipped coupling -> Skip; not coupled -> Ignore (Synch. Only Coupled Records) or Insert; counterpart
    deleted -> deletion conflict; forced -> ForceModify; source not modified -> Unchanged; field transfer;
    both modified and a Bidirectional field changed -> update conflict; nothing differs -> Unchanged; else Modify.
    """
    d = _pass(direction)
    if not mapping.direction.includes(d):
        raise ValueError(f"table mapping {mapping.name} ({mapping.direction.value}) has no {d.value} pass")
    src_caption, dst_caption = _captions(mapping, d)

    if coupling is not None and coupling.skipped:
        return Decision(Action.SKIP, d, Reason.COUPLING_SKIPPED,
                        f"The {src_caption} record is marked as skipped.")

    if coupling is None:
        if mapping.sync_only_coupled_records and not ignore_sync_only_coupled:
            other = "Dataverse" if d is TO else "Business Central"
            return Decision(Action.IGNORE, d, Reason.NOT_COUPLED,
                            f"The {src_caption} record is not coupled to {other}.")
        return _insert(mapping, d, source, resolved, Action.INSERT, None)

    if destination is None:
        if forced:  # BC skips the conflict handler; the modify of the missing record fails
            return Decision(Action.FAIL, d, Reason.DELETION_CONFLICT,
                            f"Modifying {dst_caption} failed because of the following error: the coupled "
                            f"{dst_caption} record does not exist.")
        strategy = mapping.deletion_conflict_resolution
        if strategy is DeletionConflictResolution.RESTORE_RECORDS:
            return _insert(mapping, d, source, resolved, Action.RESTORE, Reason.DELETION_CONFLICT)
        if strategy is DeletionConflictResolution.REMOVE_COUPLING:
            return Decision(Action.REMOVE_COUPLING, d, Reason.DELETION_CONFLICT,
                            f"The coupling was removed because the coupled {dst_caption} record was deleted.")
        return Decision(Action.FAIL, d, Reason.DELETION_CONFLICT,
                        f"The {src_caption} record cannot be updated because it is coupled to a deleted record.")

    destination_modified = _destination_modified(mapping, d, coupling, destination)
    if forced:
        result = transfer(mapping, d, source, destination, resolved, inserting=False)
        if not result.ok:
            return Decision(Action.FAIL, d, Reason.TRANSFER_FAILED, result.message, result)
        return Decision(Action.FORCE_MODIFY, d, None, None, result,
                        keep_destination_timestamp=destination_modified and not result.has_changes)

    if not _source_modified(mapping, d, coupling, source):
        return Decision(Action.UNCHANGED, d, Reason.NOT_MODIFIED,
                        keep_destination_timestamp=destination_modified)

    both_modified = mapping.direction is Direction.BIDIRECTIONAL and destination_modified
    result = transfer(mapping, d, source, destination, resolved, inserting=False)
    if not result.ok:
        return Decision(Action.FAIL, d, Reason.TRANSFER_FAILED, result.message, result, both_modified)
    if both_modified and result.bidirectional_changed:
        strategy = mapping.update_conflict_resolution
        winner = {UpdateConflictResolution.SEND_UPDATE_TO_INTEGRATION: TO,
                  UpdateConflictResolution.GET_UPDATE_FROM_INTEGRATION: FROM}.get(strategy)
        if winner is None:
            src_field, dst_field = result.bidirectional_fields[0]
            return Decision(Action.FAIL, d, Reason.UPDATE_CONFLICT,
                            update_conflict_message(mapping, d, src_field, dst_field), result, both_modified)
        if winner is d:
            return Decision(Action.FORCE_MODIFY, d, Reason.UPDATE_CONFLICT,
                            f"Update conflict resolved by {strategy.value}: the {src_caption} data wins.",
                            result, both_modified)
        return Decision(Action.SKIP, d, Reason.UPDATE_CONFLICT,
                        f"Update conflict resolved by {strategy.value}: the {dst_caption} data wins, so this "
                        f"{d.value} pass skips the record.", result, both_modified)
    if not result.has_changes:
        return Decision(Action.UNCHANGED, d, Reason.NO_CHANGES, None, result,
                        keep_destination_timestamp=destination_modified)
    return Decision(Action.MODIFY, d, None, None, result, both_modified)


def _insert(mapping: TableMapping, d: Direction, source: Mapping[str, Any], resolved: LookupResolution | None,
            action: Action, reason: Reason | None) -> Decision:
    result = transfer(mapping, d, source, None, resolved, inserting=True)
    if not result.ok:
        return Decision(Action.FAIL, d, Reason.TRANSFER_FAILED, result.message, result)
    message = None
    if action is Action.RESTORE:
        message = (f"The coupled {_captions(mapping, d)[1]} record was deleted; it is restored from the "
                   f"{_captions(mapping, d)[0]} record.")
    return Decision(action, d, reason, message, result)


# ---------------------------------------------------------------------------------------------------------------------
# Sync now
# ---------------------------------------------------------------------------------------------------------------------
def bulk_skip_reason(direction: Direction | str, coupling: Coupling | None,
                     destination_modified: bool) -> Reason | None:
    """Multi-record sync-now (spec 5.2): why a selected record is skipped (counted Skipped), or None to sync it.

    Not coupled; the coupling is skipped; or the destination side of the chosen direction was modified since the
    last sync (To: the Dataverse row, From: the BC record; compute it with ``dataverse_modified_since_last_sync``
    / ``bc_modified_since_last_sync``) - bulk sync never overwrites newer data.
    """
    _pass(direction)
    if coupling is None:
        return Reason.NOT_COUPLED
    if coupling.skipped:
        return Reason.COUPLING_SKIPPED
    if destination_modified:
        return Reason.DESTINATION_MODIFIED
    return None


_CHOICE_TEXT = {TO: "ToIntegrationTable (send data update to Dataverse)",
                FROM: "FromIntegrationTable (get data update from Dataverse)",
                Direction.BIDIRECTIONAL: "Bidirectional (merge data: To pass, then From pass)"}


def _token(text: str) -> str:
    return re.sub(r"[\s_]", "", text).casefold()


def resolve_sync_now_direction(mapping: TableMapping, requested: Direction | str | None, *,
                               allow_merge: bool = False) -> Direction:
    """The direction of a sync-now (spec 5.1/5.2, where BC asks the user).

    ``requested`` None: the mapping's direction, except for a Bidirectional mapping, where a choice is required
    (``RequestError``, 400, naming the choices). A direction the mapping doesn't allow (From on a To-only mapping)
    raises ``Unprocessable`` (422, BC's "not configured for ... synchronization"). ``Bidirectional`` (BC's
    "Merge data": a To pass then a From pass) is accepted for a Bidirectional mapping only with ``allow_merge``
    (single-record sync-now; bulk sync offers Send / Get only). Case, spaces and underscores are ignored.
    """
    choices = [TO, FROM] + ([Direction.BIDIRECTIONAL] if allow_merge else [])
    if mapping.direction is not Direction.BIDIRECTIONAL:
        choices = [mapping.direction]
    listed = " or ".join(_CHOICE_TEXT[c] for c in choices)
    details = {"mapping": mapping.name, "setting": "direction", "choices": [c.value for c in choices]}
    if requested is None:
        if mapping.direction is Direction.BIDIRECTIONAL:
            raise RequestError(f"Table mapping {mapping.name} is Bidirectional: 'direction' is required, "
                               f"choose {listed}.", details=details)
        return mapping.direction
    if isinstance(requested, Direction):
        wanted = requested
    elif isinstance(requested, str):
        wanted = next((m for m in Direction if _token(m.value) == _token(requested)), None)  # type: ignore[assignment]
        if wanted is None:
            raise RequestError(f"'direction' must be {listed}; got {requested!r}.", details=details)
    else:
        raise RequestError(f"'direction' must be a string: {listed}.", details=details)
    if wanted not in choices:
        if wanted is Direction.BIDIRECTIONAL and mapping.direction is Direction.BIDIRECTIONAL:
            raise RequestError(f"'direction' must be {listed} here (merging both ways is offered for a single "
                               "record only).", details=details)
        raise Unprocessable(f"The Integration Table Mapping {mapping.name} is not configured for {wanted.value} "
                            f"synchronization; choose {listed}.", details=details)
    return wanted


# ---------------------------------------------------------------------------------------------------------------------
# Coupling bookkeeping
# ---------------------------------------------------------------------------------------------------------------------
def _later(stored: datetime | None, current: datetime | None) -> datetime | None:
    if current is None:
        return stored
    if stored is None:
        return current
    return max(stored, current)


def after_success(coupling: Coupling, direction: Direction | str, job_id: str | None,
                  bc_modified_on: datetime | str | None, dataverse_modified_on: datetime | str | None,
                  both_modified: bool = False, dataverse_version: int | None = None) -> Coupling:
    """The coupling after a successful Insert / Modify / ForceModify / Unchanged in a pass (spec 3).

    ``bc_modified_on`` / ``dataverse_modified_on``: each side's modified-on **after** the write (re-read); None
    leaves that stored value alone. Each stored value becomes max(stored, current): it never moves back. When
    ``both_modified``, the destination's value is stored slightly earlier (To: Dataverse - 999 ms, From: BC
    - 10 ms) so the opposite pass picks up the destination's own changes. The pass's result becomes Success with
    ``job_id``. ``last_error`` is cleared, unless the other pass's last result is still a failure (its error).
    Returns a new Coupling.
    """
    d = _pass(direction)
    bc, dv = parse_timestamp(bc_modified_on), parse_timestamp(dataverse_modified_on)
    if both_modified:
        if d is TO and dv is not None:
            dv -= DATAVERSE_BOTH_MODIFIED_ADJUSTMENT
        elif d is FROM and bc is not None:
            bc -= BC_BOTH_MODIFIED_ADJUSTMENT
    changes: dict[str, Any] = {"bc_modified_on": _later(coupling.bc_modified_on, bc),
                               "dataverse_modified_on": _later(coupling.dataverse_modified_on, dv)}
    if dataverse_version is not None and not (both_modified and d is TO):
        # Like the timestamp: never back, and left alone when the opposite pass must still see the row's change.
        changes["dataverse_version"] = max(dataverse_version, coupling.dataverse_version or 0)
    if d is TO:
        changes.update(to_result=RESULT_SUCCESS, to_job_id=job_id, to_error=None)
        other_failed, other_error = coupling.from_result == RESULT_FAILURE, coupling.from_error
    else:
        changes.update(from_result=RESULT_SUCCESS, from_job_id=job_id, from_error=None)
        other_failed, other_error = coupling.to_result == RESULT_FAILURE, coupling.to_error
    changes["last_error"] = (other_error or coupling.last_error) if other_failed else None
    return replace(coupling, **changes)


def after_failure(coupling: Coupling, direction: Direction | str, job_id: str | None, message: str) -> Coupling:
    """The coupling after a failed pass (spec 3): the pass's result becomes Failure with ``job_id`` and
    ``last_error`` the message. When that pass had already failed with the same message, the coupling is
    **skipped** (BC: "same failure repeated twice"; it then waits on the errors page). Timestamps are unchanged.
    Returns a new Coupling."""
    d = _pass(direction)
    if not isinstance(message, str) or not message.strip():
        raise ValueError("a failure needs a message")
    failed = replace(coupling, last_error=message)  # the stored (possibly truncated) form of the message
    previous = coupling.to_result if d is TO else coupling.from_result
    previous_error = coupling.to_error if d is TO else coupling.from_error
    # Per direction, like BC (which compares with that direction's previous job error): in a two-way update
    # conflict the To and From messages alternate, and each direction must still see its own repetition.
    repeated = previous == RESULT_FAILURE and previous_error is not None and previous_error == failed.last_error
    changes: dict[str, Any] = {"skipped": coupling.skipped or repeated}
    if d is TO:
        changes.update(to_result=RESULT_FAILURE, to_job_id=job_id, to_error=failed.last_error)
    else:
        changes.update(from_result=RESULT_FAILURE, from_job_id=job_id, from_error=failed.last_error)
    return replace(failed, **changes)


# ---------------------------------------------------------------------------------------------------------------------
# Watermarks (spec 6.2-6.3)
# ---------------------------------------------------------------------------------------------------------------------
def dataverse_query_lower_bound(watermark: datetime | str | None) -> datetime | None:
    """The From pass reads rows with ``modifiedon`` greater than this (watermark - 999 ms); None: no bound."""
    w = parse_timestamp(watermark)
    return None if w is None else w - DATAVERSE_OVERLAP


def bc_query_lower_bound(watermark: datetime | str | None) -> datetime | None:
    """The To pass reads records with ``lastModifiedDateTime`` strictly greater than this; None: no bound."""
    return parse_timestamp(watermark)


def dataverse_watermark_filter(watermark: datetime | str | None, column: str = "modifiedon") -> str | None:
    """``modifiedon gt <watermark - 999 ms>`` for ``$filter`` (AND it with the Integration Table Filter), or None."""
    bound = dataverse_query_lower_bound(watermark)
    return None if bound is None else str(odata.gt(column, bound))


def bc_watermark_filter(watermark: datetime | str | None) -> str | None:
    """``lastModifiedDateTime gt <watermark>`` for ``$filter`` (AND it with the Table Filter), or None."""
    bound = bc_query_lower_bound(watermark)
    return None if bound is None else str(odata.gt(BC_MODIFIED_ON, bound))


def next_watermark(current: datetime | str | None, max_seen: datetime | str | None,
                   job_start: datetime | str | None) -> datetime | None:
    """The watermark after a pass: min(latest modified-on seen among all candidates, job start), stored only if
    later than ``current`` (never moves back). Nothing seen: ``current``."""
    cur, seen, start = parse_timestamp(current), parse_timestamp(max_seen), parse_timestamp(job_start)
    if seen is None:
        return cur
    candidate = seen if start is None else min(seen, start)
    return candidate if cur is None or candidate > cur else cur
