"""BC's engine rules (spec sections 3, 5, 6): timestamps and the 10 ms tolerance, change detection, the record
decision (skip / insert / unchanged / modify / force modify / deletion and update conflicts), coupling bookkeeping
(-999 ms / -10 ms adjustments, same error twice -> skipped), sync-now rules, watermarks, job counters."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from coupling.model import RESULT_FAILURE, RESULT_SUCCESS, Coupling
from sync.errors import RequestError, Unprocessable
from sync.mapping_defaults import default_mappings
from sync.mappings import DeletionConflictResolution, Direction, UpdateConflictResolution
from sync.rules import (Action, Decision, JobCounters, Outcome, OutcomeKind, Reason, after_failure, after_success,
                        bc_modified_since_last_sync, bc_query_lower_bound, bc_timestamp, bc_watermark_filter,
                        bulk_skip_reason, compare_datetime, dataverse_modified_since_last_sync,
                        dataverse_query_lower_bound, dataverse_timestamp, dataverse_watermark_filter, decide,
                        format_bc_timestamp, format_dataverse_timestamp, next_watermark, parse_timestamp,
                        resolve_sync_now_direction)
from sync.transfer import LookupResolution

from .test_transfer import (DV_EUR, DV_USD, RESOLVED_FROM, RESOLVED_TO, apply_bc, apply_dataverse,
                            bc_currency, bc_customer, bc_item, dv_account, dv_currency, dv_product)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE
BI = Direction.BIDIRECTIONAL

BC_ID = "34f03eee-2a32-f011-9a4a-7ced8d0ee6e7"
DV_ID = "b2a6b689-9a39-e611-80d2-00155db44581"
T0 = datetime(2025, 5, 16, 8, 0, 0, tzinfo=timezone.utc)   # last sync
MS = timedelta(milliseconds=1)
S = timedelta(seconds=1)


def m(name, **kw):
    mapping = default_mappings()[name]
    return replace(mapping, **kw) if kw else mapping


def bc_iso(dt):
    return format_bc_timestamp(dt)


def dv_iso(dt):
    return format_dataverse_timestamp(dt)


def coupling(mapping="CUSTOMER", bc=T0, dv=T0, **kw):
    return Coupling(mapping=mapping, bc_id=BC_ID, dataverse_id=DV_ID, bc_modified_on=bc, dataverse_modified_on=dv,
                    to_result=kw.pop("to_result", RESULT_SUCCESS), from_result=kw.pop("from_result", RESULT_SUCCESS),
                    **kw)


def customer(at=T0, **kw):
    return bc_customer(id=BC_ID, lastModifiedDateTime=bc_iso(at), **kw)


def account(at=T0, **kw):
    return dv_account(accountid=DV_ID, modifiedon=dv_iso(at), **kw)


# --- timestamps -----------------------------------------------------------------------------------------------------
def test_parse_timestamps_of_both_services():
    assert parse_timestamp("2025-02-23T13:34:29.943Z") == datetime(2025, 2, 23, 13, 34, 29, 943000, tzinfo=timezone.utc)
    assert parse_timestamp("2025-02-23T13:34:29Z") == datetime(2025, 2, 23, 13, 34, 29, tzinfo=timezone.utc)
    assert parse_timestamp("2025-02-23T13:34:29.9431234Z") == \
        datetime(2025, 2, 23, 13, 34, 29, 943123, tzinfo=timezone.utc)
    assert parse_timestamp("2025-02-23T15:34:29+02:00") == datetime(2025, 2, 23, 13, 34, 29, tzinfo=timezone.utc)
    assert parse_timestamp("2025-02-23T15:34:29+02:00").tzinfo == timezone.utc
    for blank in (None, "", "  ", "0001-01-01T00:00:00Z"):
        assert parse_timestamp(blank) is None
    with pytest.raises(ValueError):
        parse_timestamp("2025-02-23T13:34:29")  # naive: offset unknown
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")
    with pytest.raises(ValueError):
        parse_timestamp(datetime(2025, 1, 1))


def test_format_timestamps():
    t = datetime(2025, 2, 23, 13, 34, 29, 943500, tzinfo=timezone.utc)
    assert format_bc_timestamp(t) == "2025-02-23T13:34:29.943Z"
    assert format_dataverse_timestamp(t) == "2025-02-23T13:34:29Z"
    assert bc_timestamp({"lastModifiedDateTime": "2025-02-23T13:34:29.943Z"}) == parse_timestamp(
        "2025-02-23T13:34:29.943Z")
    assert dataverse_timestamp({"modifiedon": "2025-02-23T13:34:29Z"}) == parse_timestamp("2025-02-23T13:34:29Z")
    assert dataverse_timestamp({"updatedon": "2025-02-23T13:34:29Z"}, "updatedon") is not None


@pytest.mark.parametrize("delta_ms,expected", [(0, 0), (9, 0), (-9, 0), (9.999, 0), (10, 1), (-10, -1),
                                               (1000, 1), (-999, -1)])
def test_compare_datetime_has_a_10_ms_tolerance(delta_ms, expected):
    assert compare_datetime(T0 + timedelta(milliseconds=delta_ms), T0) == expected


def test_compare_datetime_none_is_never():
    assert compare_datetime(None, None) == 0
    assert compare_datetime(T0, None) == 1
    assert compare_datetime(None, T0) == -1
    assert compare_datetime("2025-05-16T08:00:00.005Z", "2025-05-16T08:00:00Z") == 0


# --- change detection (section 3) -----------------------------------------------------------------------------------
def test_bc_modified_since_last_sync():
    c = coupling()
    assert bc_modified_since_last_sync(None, customer()) is True           # not coupled
    assert bc_modified_since_last_sync(coupling(bc=None), customer()) is True  # never synced
    assert bc_modified_since_last_sync(c, customer(T0)) is False
    assert bc_modified_since_last_sync(c, customer(T0 + 9 * MS)) is False  # within 10 ms
    assert bc_modified_since_last_sync(c, customer(T0 + 10 * MS)) is True
    assert bc_modified_since_last_sync(c, customer(T0 - S)) is False
    assert bc_modified_since_last_sync(c, T0 + S) is True                  # a timestamp works too


def test_a_failed_to_pass_makes_the_bc_side_modified_unless_skipped():
    assert bc_modified_since_last_sync(coupling(to_result=RESULT_FAILURE), customer(T0)) is True
    assert bc_modified_since_last_sync(coupling(to_result=RESULT_FAILURE, skipped=True), customer(T0)) is False
    # the From result is about the Dataverse side
    assert bc_modified_since_last_sync(coupling(from_result=RESULT_FAILURE), customer(T0)) is False


def test_dataverse_modified_since_last_sync():
    c = coupling()
    assert dataverse_modified_since_last_sync(c, account(T0)) is False
    assert dataverse_modified_since_last_sync(c, account(T0 + S)) is True
    assert dataverse_modified_since_last_sync(coupling(dv=None), account(T0)) is True
    assert dataverse_modified_since_last_sync(coupling(from_result=RESULT_FAILURE), account(T0)) is True
    assert dataverse_modified_since_last_sync(coupling(from_result=RESULT_FAILURE, skipped=True), account(T0)) is False
    assert dataverse_modified_since_last_sync(coupling(to_result=RESULT_FAILURE), account(T0)) is False
    # the -999 ms adjusted value: the same row is "modified" for the next pass
    assert dataverse_modified_since_last_sync(coupling(dv=T0 - 999 * MS), account(T0)) is True


# --- decide: skip / ignore / insert ---------------------------------------------------------------------------------
def test_skipped_coupling_is_skipped_even_when_forced():
    for forced in (False, True):
        d = decide(m("CUSTOMER"), TO, source=customer(T0 + S), coupling=coupling(skipped=True),
                   destination=account(), resolved=RESOLVED_TO, forced=forced)
        assert d.action is Action.SKIP and d.reason is Reason.COUPLING_SKIPPED
        assert d.message == "The Customer record is marked as skipped."
        assert d.outcome_kind is OutcomeKind.SKIPPED and not d.writes


def test_uncoupled_with_sync_only_coupled_records_is_ignored_and_not_counted():
    d = decide(m("CUSTOMER"), TO, source=customer(), coupling=None, destination=None, resolved=RESOLVED_TO)
    assert d.action is Action.IGNORE and d.reason is Reason.NOT_COUPLED
    assert d.message == "The Customer record is not coupled to Dataverse."
    counters = JobCounters().add(d.outcome(BC_ID))
    assert counters.total == 0
    f = decide(m("CUSTOMER"), FROM, source=account(), coupling=None, destination=None, resolved=RESOLVED_FROM)
    assert f.action is Action.IGNORE and f.message == "The account record is not coupled to Business Central."


def test_uncoupled_is_inserted_when_allowed():
    for mapping, ignore in ((m("CUSTOMER", sync_only_coupled_records=False), False), (m("CUSTOMER"), True)):
        d = decide(mapping, TO, source=customer(), coupling=None, destination=None, resolved=RESOLVED_TO,
                   ignore_sync_only_coupled=ignore)
        assert d.action is Action.INSERT and d.writes and d.outcome_kind is OutcomeKind.INSERTED
        assert d.changes["name"] == "Adatum Corporation" and d.changes["customertypecode"] == 3
    f = decide(m("CUSTOMER", sync_only_coupled_records=False), FROM, source=account(), coupling=None,
               destination=None, resolved=RESOLVED_FROM)
    assert f.action is Action.INSERT and f.changes["displayName"] == "Adatum Corporation"


def test_insert_with_an_uncoupled_lookup_fails():
    d = decide(m("CUSTOMER", sync_only_coupled_records=False), TO, source=customer(salespersonCode="AH"),
               coupling=None, destination=None, resolved=RESOLVED_TO)
    assert d.action is Action.FAIL and d.reason is Reason.TRANSFER_FAILED
    assert d.message == "salespersonCode AH must be coupled to a Dataverse row."


def test_decide_refuses_a_pass_the_mapping_does_not_have():
    with pytest.raises(ValueError):
        decide(m("CURRENCY"), FROM, source=dv_currency(), coupling=None, destination=None)
    with pytest.raises(ValueError):
        decide(m("CUSTOMER"), BI, source=customer(), coupling=None, destination=None)


# --- decide: unchanged / modify --------------------------------------------------------------------------------------
def test_source_not_modified_is_unchanged_without_transfer():
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + 5 * MS, displayName="Different"), coupling=coupling(),
               destination=account(), resolved=RESOLVED_TO)
    assert d.action is Action.UNCHANGED and d.reason is Reason.NOT_MODIFIED and d.transfer is None
    assert d.changes == {} and not d.keep_destination_timestamp and not d.both_modified
    assert d.outcome_kind is OutcomeKind.UNCHANGED
    # From side: the BC record moved by less than 10 ms (not modified): both stored values just refresh
    f = decide(m("CUSTOMER"), FROM, source=account(T0), coupling=coupling(), destination=customer(T0 + 5 * MS),
               resolved=RESOLVED_FROM)
    assert f.action is Action.UNCHANGED and not f.both_modified
    refreshed = f.coupling_after_success(coupling(), "j", bc_modified_on=T0 + 5 * MS, dataverse_modified_on=T0)
    assert refreshed.bc_modified_on == T0 + 5 * MS and refreshed.from_result == RESULT_SUCCESS


def test_modified_source_with_a_difference_is_modified():
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S, phoneNumber="+1 425 555 0199"), coupling=coupling(),
               destination=account(), resolved=RESOLVED_TO)
    assert d.action is Action.MODIFY and d.changes == {"telephone1": "+1 425 555 0199"}
    assert not d.both_modified and d.outcome_kind is OutcomeKind.MODIFIED


def test_modified_source_without_differences_is_unchanged():
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S), coupling=coupling(), destination=account(),
               resolved=RESOLVED_TO)
    assert d.action is Action.UNCHANGED and d.reason is Reason.NO_CHANGES and d.changes == {}


def test_failed_not_skipped_record_is_retried_even_if_not_modified():
    d = decide(m("CUSTOMER"), TO, source=customer(T0, phoneNumber="+1 425 555 0199"),
               coupling=coupling(to_result=RESULT_FAILURE), destination=account(), resolved=RESOLVED_TO)
    assert d.action is Action.MODIFY


def test_lookup_failure_on_modify_fails_the_record():
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S, currencyCode="GBP"), coupling=coupling(),
               destination=account(), resolved=RESOLVED_TO)
    assert d.action is Action.FAIL and d.message == "currencyCode GBP must be coupled to a Dataverse row."
    assert d.transfer is not None and d.transfer.errors


# --- decide: deletion conflicts (5.5) -------------------------------------------------------------------------------
def test_deletion_conflict_none_fails_with_bcs_message_both_passes():
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S), coupling=coupling(), destination=None,
               resolved=RESOLVED_TO)
    assert d.action is Action.FAIL and d.reason is Reason.DELETION_CONFLICT
    assert d.message == "The Customer record cannot be updated because it is coupled to a deleted record."
    f = decide(m("CUSTOMER"), FROM, source=account(T0 + S), coupling=coupling(), destination=None,
               resolved=RESOLVED_FROM)
    assert f.message == "The account record cannot be updated because it is coupled to a deleted record."


@pytest.mark.parametrize("direction", [TO, FROM])
def test_deletion_conflict_restore_records_reinserts(direction):
    mapping = m("CUSTOMER", deletion_conflict_resolution=DeletionConflictResolution.RESTORE_RECORDS)
    source = customer(T0 + S) if direction is TO else account(T0 + S)
    d = decide(mapping, direction, source=source, coupling=coupling(), destination=None,
               resolved=RESOLVED_TO if direction is TO else RESOLVED_FROM)
    assert d.action is Action.RESTORE and d.reason is Reason.DELETION_CONFLICT and d.writes
    assert d.outcome_kind is OutcomeKind.INSERTED
    key = "name" if direction is TO else "displayName"
    assert d.changes[key] == "Adatum Corporation"
    if direction is TO:
        assert d.changes["customertypecode"] == 3  # inserted: create values applied


@pytest.mark.parametrize("direction", [TO, FROM])
def test_deletion_conflict_remove_coupling_is_not_counted(direction):
    mapping = m("CUSTOMER", deletion_conflict_resolution=DeletionConflictResolution.REMOVE_COUPLING)
    source = customer(T0 + S) if direction is TO else account(T0 + S)
    d = decide(mapping, direction, source=source, coupling=coupling(), destination=None)
    assert d.action is Action.REMOVE_COUPLING and not d.writes
    assert JobCounters().add(d.outcome()).total == 0


def test_deletion_conflict_is_detected_even_when_the_source_is_unchanged():
    d = decide(m("CUSTOMER"), TO, source=customer(T0), coupling=coupling(), destination=None)
    assert d.action is Action.FAIL and d.reason is Reason.DELETION_CONFLICT


def test_forced_sync_bypasses_the_deletion_conflict_strategy_and_fails_the_modify():
    mapping = m("CUSTOMER", deletion_conflict_resolution=DeletionConflictResolution.RESTORE_RECORDS)
    d = decide(mapping, TO, source=customer(T0 + S), coupling=coupling(), destination=None, forced=True)
    assert d.action is Action.FAIL and d.reason is Reason.DELETION_CONFLICT
    assert d.message.startswith("Modifying account failed because of the following error:")


# --- decide: update conflicts (5.4) ---------------------------------------------------------------------------------
def both_modified_to(mapping):
    """To pass: BC renamed the customer, Dataverse changed it too since the last sync."""
    return decide(mapping, TO, source=customer(T0 + S, displayName="Adatum (BC)"), coupling=coupling(),
                  destination=account(T0 + 2 * S, name="Adatum (Dataverse)"), resolved=RESOLVED_TO)


def both_modified_from(mapping):
    return decide(mapping, FROM, source=account(T0 + 2 * S, name="Adatum (Dataverse)"), coupling=coupling(),
                  destination=customer(T0 + S, displayName="Adatum (BC)"), resolved=RESOLVED_FROM)


def test_update_conflict_without_strategy_fails_with_bcs_message():
    d = both_modified_to(m("CUSTOMER"))
    assert d.action is Action.FAIL and d.reason is Reason.UPDATE_CONFLICT
    assert d.message == ("Cannot update a record in the account table. The mapping between displayName field on the "
                         "Customer table and the name field on the account table is bi-directional, and one or "
                         "both values have changed since the last synchronization.")
    f = both_modified_from(m("CUSTOMER"))
    assert f.action is Action.FAIL
    assert f.message.startswith("Cannot update a record in the Customer table. The mapping between name field on "
                                "the account table and the displayName field on the Customer table")


def test_update_conflict_send_update_to_integration():
    mapping = m("CUSTOMER", update_conflict_resolution=UpdateConflictResolution.SEND_UPDATE_TO_INTEGRATION)
    to = both_modified_to(mapping)
    assert to.action is Action.FORCE_MODIFY and to.reason is Reason.UPDATE_CONFLICT and to.both_modified
    assert to.changes == {"name": "Adatum (BC)"} and to.outcome_kind is OutcomeKind.MODIFIED
    frm = both_modified_from(mapping)
    assert frm.action is Action.SKIP and frm.reason is Reason.UPDATE_CONFLICT
    assert frm.outcome_kind is OutcomeKind.SKIPPED and not frm.writes


def test_update_conflict_get_update_from_integration():
    mapping = m("CUSTOMER", update_conflict_resolution=UpdateConflictResolution.GET_UPDATE_FROM_INTEGRATION)
    frm = both_modified_from(mapping)
    assert frm.action is Action.FORCE_MODIFY and frm.changes == {"displayName": "Adatum (Dataverse)"}
    to = both_modified_to(mapping)
    assert to.action is Action.SKIP and to.outcome_kind is OutcomeKind.SKIPPED


def test_both_modified_without_a_bidirectional_difference_is_a_normal_modify():
    # BC changed the credit limit (a To-only field); Dataverse changed something not mapped back
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S, creditLimit=9000), coupling=coupling(),
               destination=account(T0 + 2 * S), resolved=RESOLVED_TO)
    assert d.action is Action.MODIFY and d.both_modified and d.changes == {"creditlimit": 9000}


def test_no_update_conflict_on_a_one_way_mapping():
    c = coupling("CURRENCY")
    d = decide(m("CURRENCY"), TO, source=bc_currency(lastModifiedDateTime=bc_iso(T0 + S), displayName="CAD $"),
               coupling=c, destination=dv_currency(modifiedon=dv_iso(T0 + 2 * S)), resolved=RESOLVED_TO)
    assert d.action is Action.MODIFY and not d.both_modified


def test_forced_sync_has_no_unchanged_shortcut_and_no_conflict_check():
    # not modified since the last sync, but forced: the differing field is written
    d = decide(m("CUSTOMER"), TO, source=customer(T0, phoneNumber="+1 425 555 0199"), coupling=coupling(),
               destination=account(), resolved=RESOLVED_TO, forced=True)
    assert d.action is Action.FORCE_MODIFY and d.changes == {"telephone1": "+1 425 555 0199"}
    # both modified, bidirectional field differs, strategy None: forced wins anyway
    c = decide(m("CUSTOMER"), TO, source=customer(T0 + S, displayName="Adatum (BC)"), coupling=coupling(),
               destination=account(T0 + 2 * S, name="Adatum (Dataverse)"), resolved=RESOLVED_TO, forced=True)
    assert c.action is Action.FORCE_MODIFY and c.reason is None and not c.both_modified
    assert c.changes == {"name": "Adatum (BC)"}
    # nothing differs: still ForceModify, counted Modified (BC always modifies)
    e = decide(m("CUSTOMER"), TO, source=customer(T0), coupling=coupling(), destination=account(),
               resolved=RESOLVED_TO, forced=True)
    assert e.action is Action.FORCE_MODIFY and e.changes == {} and e.outcome_kind is OutcomeKind.MODIFIED


def test_forced_sync_with_a_lookup_error_fails():
    d = decide(m("CUSTOMER"), TO, source=customer(T0, salespersonCode="AH"), coupling=coupling(),
               destination=account(), resolved=RESOLVED_TO, forced=True)
    assert d.action is Action.FAIL and d.reason is Reason.TRANSFER_FAILED


# --- coupling bookkeeping (section 3) -------------------------------------------------------------------------------
def test_after_success_stores_both_timestamps_and_the_pass_result():
    c = coupling(to_result=RESULT_FAILURE, last_error="boom", from_result=None)
    new = after_success(c, TO, "job-2", bc_iso(T0 + S), dv_iso(T0 + 3 * S))
    assert new.bc_modified_on == T0 + S and new.dataverse_modified_on == T0 + 3 * S
    assert (new.to_result, new.to_job_id) == (RESULT_SUCCESS, "job-2")
    assert new.from_result is None and new.last_error is None
    assert c.to_result == RESULT_FAILURE and c.bc_modified_on == T0  # input untouched
    f = after_success(coupling(), FROM, "job-3", T0 + S, T0 + S)
    assert (f.from_result, f.from_job_id) == (RESULT_SUCCESS, "job-3") and f.to_job_id is None


def test_after_success_timestamps_never_move_back():
    c = coupling(bc=T0 + 5 * S, dv=T0 + 5 * S)
    new = after_success(c, TO, "j", T0, T0 + 6 * S)
    assert new.bc_modified_on == T0 + 5 * S and new.dataverse_modified_on == T0 + 6 * S
    kept = after_success(c, TO, "j", None, None)  # None leaves the stored value
    assert kept.bc_modified_on == T0 + 5 * S and kept.dataverse_modified_on == T0 + 5 * S


def test_after_success_both_modified_adjusts_the_destination():
    to = after_success(coupling(), TO, "j", T0 + S, T0 + 10 * S, both_modified=True)
    assert to.dataverse_modified_on == T0 + 10 * S - 999 * MS
    assert to.bc_modified_on == T0 + S
    frm = after_success(coupling(), FROM, "j", T0 + S, T0 + 10 * S, both_modified=True)
    assert frm.bc_modified_on == T0 + S - 10 * MS
    assert frm.dataverse_modified_on == T0 + 10 * S
    # the adjusted side reads as modified by the next (opposite) pass
    assert dataverse_modified_since_last_sync(to, account(T0 + 10 * S)) is True
    assert bc_modified_since_last_sync(frm, customer(T0 + S)) is True


def test_after_success_keeps_the_error_of_a_failed_other_pass():
    c = coupling(from_result=RESULT_FAILURE, last_error="From failed")
    assert after_success(c, TO, "j", T0, T0).last_error == "From failed"
    assert after_success(c, FROM, "j", T0, T0).last_error is None


def test_after_failure_marks_the_pass_failed_and_skips_on_the_same_error_twice():
    msg = "salespersonCode AH must be coupled to a Dataverse row."
    first = after_failure(coupling(), TO, "job-1", msg)
    assert (first.to_result, first.to_job_id, first.last_error, first.skipped) == (RESULT_FAILURE, "job-1", msg,
                                                                                   False)
    assert first.bc_modified_on == T0 and first.from_result == RESULT_SUCCESS
    second = after_failure(first, TO, "job-2", msg)
    assert second.skipped is True and second.to_job_id == "job-2"
    assert first.skipped is False  # input untouched


def test_a_different_error_does_not_skip():
    first = after_failure(coupling(), TO, "job-1", "error A")
    second = after_failure(first, TO, "job-2", "error B")
    assert second.skipped is False and second.last_error == "error B"
    third = after_failure(second, TO, "job-3", "error B")
    assert third.skipped is True


def test_the_same_error_in_the_other_direction_does_not_skip():
    first = after_failure(coupling(), TO, "job-1", "error A")
    other = after_failure(first, FROM, "job-2", "error A")
    assert other.skipped is False and other.from_result == RESULT_FAILURE and other.to_result == RESULT_FAILURE


def test_the_same_error_after_a_success_does_not_skip():
    first = after_failure(coupling(), TO, "job-1", "error A")
    ok = after_success(first, TO, "job-2", T0, T0)
    again = after_failure(ok, TO, "job-3", "error A")
    assert again.skipped is False


def test_the_same_very_long_error_twice_skips():
    msg = "x" * 20000  # stored truncated
    first = after_failure(coupling(), FROM, "j1", msg)
    assert after_failure(first, FROM, "j2", msg).skipped is True


def test_after_failure_needs_a_message():
    with pytest.raises(ValueError):
        after_failure(coupling(), TO, "j", "  ")


# --- full cycles: echo comes back unchanged; the adjustment lets the opposite pass run -------------------------------
def test_echo_of_the_syncs_own_write_is_unchanged():
    mapping = m("CUSTOMER")
    # To pass: BC renamed the customer
    bc = customer(T0 + S, displayName="Adatum Corp.")
    dv = account(T0)
    c = coupling()
    d = decide(mapping, TO, source=bc, coupling=c, destination=dv, resolved=RESOLVED_TO)
    assert d.action is Action.MODIFY
    dv = {**apply_dataverse(mapping, dv, d.changes), "modifiedon": dv_iso(T0 + 5 * S)}  # Dataverse stamps the write
    c = d.coupling_after_success(c, "job-1", bc_modified_on=bc["lastModifiedDateTime"],
                                 dataverse_modified_on=dv["modifiedon"])
    # From pass reads the echo: unchanged, without even a transfer
    echo = decide(mapping, FROM, source=dv, coupling=c, destination=bc, resolved=RESOLVED_FROM)
    assert echo.action is Action.UNCHANGED and echo.reason is Reason.NOT_MODIFIED
    c = echo.coupling_after_success(c, "job-1b", bc_modified_on=bc["lastModifiedDateTime"],
                                    dataverse_modified_on=dv["modifiedon"])
    # next To pass re-reads BC (watermark overlap): unchanged too
    assert decide(mapping, TO, source=bc, coupling=c, destination=dv, resolved=RESOLVED_TO).action is \
        Action.UNCHANGED
    # a real Dataverse change afterwards is picked up by the From pass
    dv = {**dv, "telephone1": "+1 425 555 0111", "modifiedon": dv_iso(T0 + 60 * S)}
    change = decide(mapping, FROM, source=dv, coupling=c, destination=bc, resolved=RESOLVED_FROM)
    assert change.action is Action.MODIFY and change.changes == {"phoneNumber": "+1 425 555 0111"}


def test_both_modified_adjustment_lets_the_opposite_pass_pick_up_one_way_changes():
    item = m("ITEM-PRODUCT")
    c = coupling("ITEM-PRODUCT")
    bc = bc_item(id=BC_ID, unitPrice=1200, lastModifiedDateTime=bc_iso(T0 + S))       # BC changed the price
    dv = dv_product(productid=DV_ID, statecode=1, modifiedon=dv_iso(T0 + 2 * S))        # Dataverse retired it
    to = decide(item, TO, source=bc, coupling=c, destination=dv, resolved=RESOLVED_TO)
    assert to.action is Action.MODIFY and to.both_modified and to.changes == {"price": 1200}
    dv = {**apply_dataverse(item, dv, to.changes), "modifiedon": dv_iso(T0 + 10 * S)}
    c = to.coupling_after_success(c, "job", bc_modified_on=bc["lastModifiedDateTime"],
                                  dataverse_modified_on=dv["modifiedon"])
    assert c.dataverse_modified_on == T0 + 10 * S - 999 * MS
    frm = decide(item, FROM, source=dv, coupling=c, destination=bc, resolved=RESOLVED_FROM)
    assert frm.action is Action.MODIFY and frm.changes == {"blocked": True} and not frm.both_modified
    # without the adjustment the retirement would have been lost
    plain = after_success(coupling("ITEM-PRODUCT"), TO, "job", bc["lastModifiedDateTime"], dv["modifiedon"])
    assert decide(item, FROM, source=dv, coupling=plain, destination=bc, resolved=RESOLVED_FROM).action is \
        Action.UNCHANGED


def test_unchanged_never_absorbs_a_destination_change():
    # To pass re-reads an unchanged BC record while the Dataverse row has a change not yet synced back
    mapping = m("CUSTOMER")
    c = coupling()
    dv = account(T0 + 30 * S, telephone1="+1 425 555 0111")
    d = decide(mapping, TO, source=customer(T0), coupling=c, destination=dv, resolved=RESOLVED_TO)
    assert d.action is Action.UNCHANGED and d.keep_destination_timestamp and not d.both_modified
    c = d.coupling_after_success(c, "job", bc_modified_on=T0, dataverse_modified_on=dv["modifiedon"])
    assert c.dataverse_modified_on == T0
    assert decide(mapping, FROM, source=dv, coupling=c, destination=customer(T0), resolved=RESOLVED_FROM).action \
        is Action.MODIFY


def test_decision_coupling_after_failure_uses_its_message():
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S), coupling=coupling(), destination=None)
    c = d.coupling_after_failure(coupling(), "job")
    assert c.last_error == d.message and c.to_result == RESULT_FAILURE
    assert d.coupling_after_failure(coupling(), "job", "write refused").last_error == "write refused"
    with pytest.raises(ValueError):
        Decision(Action.FAIL, TO).coupling_after_failure(coupling(), "job")


# --- sync now (5.1, 5.2) --------------------------------------------------------------------------------------------
def test_bulk_skip_reasons():
    assert bulk_skip_reason(TO, None, False) is Reason.NOT_COUPLED
    assert bulk_skip_reason(TO, coupling(skipped=True), False) is Reason.COUPLING_SKIPPED
    assert bulk_skip_reason(FROM, coupling(), True) is Reason.DESTINATION_MODIFIED
    assert bulk_skip_reason(TO, coupling(), False) is None
    # the destination of a To sync is the Dataverse row
    c = coupling()
    assert bulk_skip_reason(TO, c, dataverse_modified_since_last_sync(c, account(T0 + S))) is \
        Reason.DESTINATION_MODIFIED
    assert bulk_skip_reason(FROM, c, bc_modified_since_last_sync(c, customer(T0))) is None


def test_sync_now_direction_is_required_for_a_bidirectional_mapping():
    with pytest.raises(RequestError) as info:
        resolve_sync_now_direction(m("CUSTOMER"), None)
    assert type(info.value) is RequestError
    assert "ToIntegrationTable" in info.value.message and "FromIntegrationTable" in info.value.message
    assert info.value.details["choices"] == ["ToIntegrationTable", "FromIntegrationTable"]


def test_sync_now_direction_parsing_and_defaults():
    assert resolve_sync_now_direction(m("CUSTOMER"), "ToIntegrationTable") is TO
    assert resolve_sync_now_direction(m("CUSTOMER"), "from integration_table") is FROM
    assert resolve_sync_now_direction(m("CUSTOMER"), FROM) is FROM
    assert resolve_sync_now_direction(m("CURRENCY"), None) is TO
    assert resolve_sync_now_direction(m("SALESPEOPLE"), None) is FROM
    assert resolve_sync_now_direction(m("CURRENCY"), "toIntegrationTable") is TO
    with pytest.raises(RequestError):
        resolve_sync_now_direction(m("CUSTOMER"), "sideways")
    with pytest.raises(RequestError):
        resolve_sync_now_direction(m("CUSTOMER"), 1)


def test_sync_now_rejects_a_direction_the_mapping_does_not_allow():
    with pytest.raises(Unprocessable) as info:
        resolve_sync_now_direction(m("CURRENCY"), FROM)
    assert "not configured for FromIntegrationTable synchronization" in info.value.message
    assert info.value.details["choices"] == ["ToIntegrationTable"]
    with pytest.raises(Unprocessable):
        resolve_sync_now_direction(m("CURRENCY"), "Bidirectional")


def test_sync_now_merge_only_when_allowed():
    with pytest.raises(RequestError) as info:
        resolve_sync_now_direction(m("CUSTOMER"), "Bidirectional")
    assert type(info.value) is RequestError
    assert resolve_sync_now_direction(m("CUSTOMER"), "Bidirectional", allow_merge=True) is BI
    with pytest.raises(RequestError) as info:
        resolve_sync_now_direction(m("CUSTOMER"), None, allow_merge=True)
    assert "Bidirectional" in info.value.details["choices"]


# --- watermarks (6.2, 6.3) ------------------------------------------------------------------------------------------
def test_query_lower_bounds():
    assert dataverse_query_lower_bound(T0) == T0 - 999 * MS
    assert dataverse_query_lower_bound(None) is None
    assert bc_query_lower_bound("2025-05-16T08:00:00.250Z") == T0 + 250 * MS
    assert bc_query_lower_bound(None) is None
    assert dataverse_watermark_filter(T0) == "modifiedon gt 2025-05-16T07:59:59.001Z"
    assert bc_watermark_filter(T0 + 250 * MS) == "lastModifiedDateTime gt 2025-05-16T08:00:00.250Z"
    assert dataverse_watermark_filter(None) is None and bc_watermark_filter(None) is None


def test_next_watermark_is_the_earlier_of_max_seen_and_job_start():
    assert next_watermark(None, T0 + S, T0 + 10 * S) == T0 + S
    assert next_watermark(T0, T0 + 20 * S, T0 + 10 * S) == T0 + 10 * S  # never past the job start


def test_next_watermark_never_moves_back():
    assert next_watermark(T0 + 5 * S, T0 + S, T0 + 10 * S) == T0 + 5 * S
    assert next_watermark(T0 + 5 * S, None, T0 + 10 * S) == T0 + 5 * S   # nothing seen
    assert next_watermark(None, None, T0) is None
    assert next_watermark(T0 + 20 * S, T0 + 30 * S, T0 + 10 * S) == T0 + 20 * S
    assert next_watermark("2025-05-16T08:00:00Z", "2025-05-16T08:00:01.5Z", None) == T0 + 1500 * MS


# --- outcomes and counters ------------------------------------------------------------------------------------------
def test_job_counters():
    counters = JobCounters()
    for kind in ("inserted", "modified", "modified", "unchanged", "skipped", "failed", "ignored", "uncoupled"):
        counters.add(kind)
    counters.add(Outcome(OutcomeKind.FAILED, Reason.UPDATE_CONFLICT, "x", BC_ID, DV_ID))
    assert counters.to_json() == {"inserted": 1, "modified": 2, "unchanged": 1, "skipped": 1, "failed": 2}
    assert counters.total == 7 and not counters.idle
    assert JobCounters.from_json(counters.to_json()) == counters
    assert JobCounters(unchanged=4, skipped=2).idle
    assert JobCounters(inserted=1).merge(JobCounters(inserted=2, failed=1)) == JobCounters(inserted=3, failed=1)
    with pytest.raises(ValueError):
        counters.add("deleted")


def test_outcome_json():
    o = Outcome(OutcomeKind.SKIPPED, Reason.DESTINATION_MODIFIED, None, BC_ID, DV_ID)
    assert o.to_json() == {"result": "skipped", "reason": "destinationModified", "message": None, "bcId": BC_ID,
                           "dataverseId": DV_ID}
    assert Outcome.from_json(o.to_json()) == o
    d = decide(m("CUSTOMER"), TO, source=customer(T0 + S, displayName="X"), coupling=coupling(),
               destination=account(), resolved=RESOLVED_TO)
    assert d.outcome(BC_ID, DV_ID).to_json() == {"result": "modified", "reason": None, "message": None,
                                                 "bcId": BC_ID, "dataverseId": DV_ID}


def test_lcy_resolution_in_decide_from():
    # a From insert of an LCY account gives a blank BC currency code
    d = decide(m("CUSTOMER", sync_only_coupled_records=False), FROM,
               source=account(_transactioncurrencyid_value=DV_USD), coupling=None, destination=None,
               resolved=RESOLVED_FROM)
    assert d.changes["currencyCode"] == ""
    written = apply_bc(m("CUSTOMER"), {}, d.changes)
    assert written["currencyCode"] == "USD"
    eur = decide(m("CUSTOMER"), FROM, source=account(T0 + S, _transactioncurrencyid_value=DV_EUR),
                 coupling=coupling(), destination=customer(), resolved=RESOLVED_FROM)
    assert eur.changes == {"currencyCode": "EUR"}
    assert LookupResolution(lcy_code="USD").lcy_dataverse_currency_id is None


def test_each_direction_counts_its_own_repetition_in_a_two_way_conflict():
    """To and From fail alternately with different messages: each direction's second identical failure skips."""
    from coupling.model import Coupling as _C
    from sync.rules import after_failure as _fail

    c = _C("CUSTOMER", "5b2a3c1e-9f0d-4e8a-b7c6-1d2e3f4a5b6c", "6b2a3c1e-9f0d-4e8a-b7c6-1d2e3f4a5b6c")
    c = _fail(c, "ToIntegrationTable", "j1", "to conflict")
    c = _fail(c, "FromIntegrationTable", "j1", "from conflict")
    assert not c.skipped and c.last_error == "from conflict"
    c = _fail(c, "ToIntegrationTable", "j2", "to conflict")
    assert c.skipped
