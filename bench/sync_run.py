"""Benchmark: one scheduled run over 10,000 coupled pairs with 1,000 changes on each side.

    .venv/bin/python -m bench.sync_run [--pairs 10000] [--changes 1000] [--latency-ms 20]

The emulators run in a child process with 20 ms latency per request and the services' limits enforced (BC:
6,000 requests per 5 minutes, 5 concurrent, queued; Dataverse: 6,000 per 5 minutes, 52 concurrent). Setup (not
measured): 10,000 customers and 10,000 accounts with the same data, coupled as if synchronized, and a first run
with no changes (which sets the watermarks and must write nothing). Then a person edits 1,000 customers in BC and
1,000 other accounts in Dataverse, and one scheduled run (every mapping, in dependency order, through the queue
worker's code) is measured; a last run with no changes must write nothing again.

Figures: API operations (each $batch part counted, as the services count them) and HTTP round trips per changed
record, writes, throttling, failures, wall time, records per second, Table Storage operations per changed
record and the peak memory of the app's process.
"""
from __future__ import annotations

import argparse
import asyncio
import time

from .common import emulators, peak_rss_mb, row


async def couple_as_synchronized(pairs: int) -> None:
    """Couple customer i with account i, with the timestamps a completed synchronization leaves behind."""
    from coupling.model import Coupling
    from sync import rules
    from sync.runtime import close_runtime, get_runtime

    rt = get_runtime()
    customers = await rt.bc.list_all("customers", select=["id", "displayName", "lastModifiedDateTime"])
    accounts = await rt.dataverse.list_all("accounts", select=["accountid", "name", "modifiedon", "versionnumber"])
    by_name = {a["name"]: a for a in accounts}
    couplings = []
    for c in customers:
        a = by_name[c["displayName"]]
        couplings.append(Coupling("CUSTOMER", c["id"], a["accountid"], bc_modified_on=rules.bc_timestamp(c),
                                  dataverse_modified_on=rules.dataverse_timestamp(a),
                                  dataverse_version=rules.row_version(a), to_result="Success",
                                  from_result="Success"))
    assert len(couplings) == pairs
    for start in range(0, len(couplings), 5000):
        await rt.couplings.create_many("CUSTOMER", couplings[start:start + 5000])
    await close_runtime()


async def scheduled_run() -> dict:
    """One scheduled run as the timer and the queue worker do it, all messages handled in this process."""
    from sync import schedule
    from sync.runtime import close_runtime, get_runtime

    rt = get_runtime()
    ops_before = rt.tables.ops
    started = time.perf_counter()
    counters = await schedule.run_inline(rt, owner="bench")
    elapsed = time.perf_counter() - started
    figures = {"seconds": elapsed, "counters": counters, "table_ops": rt.tables.ops - ops_before,
               "app_bc": rt.bc.counters.snapshot(), "app_dv": rt.dataverse.counters.snapshot()}
    await close_runtime()
    return figures


def _delta(after: dict, before: dict) -> dict:
    return {side: {k: after[side][k] - before[side][k] for k in after[side]} for side in after}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000)
    p.add_argument("--changes", type=int, default=1_000)
    p.add_argument("--latency-ms", type=float, default=20.0)
    args = p.parse_args()
    n, k = args.pairs, args.changes
    with emulators("--no-seed", "--customers", str(n), "--accounts", str(n), "--latency-ms", str(args.latency_ms),
                   "--limits") as command:
        asyncio.run(couple_as_synchronized(n))
        before = command()
        asyncio.run(scheduled_run())  # sets the watermarks; must write nothing
        after_baseline = command()
        command(f"edit-bc {k} 0")
        command(f"edit-dv {k} {n // 2}")
        start_stats = command()
        measured = asyncio.run(scheduled_run())
        end_stats = command()
        quiet = asyncio.run(scheduled_run())
        final = command()
    base, run, idle = _delta(after_baseline, before), _delta(end_stats, start_stats), _delta(final, end_stats)
    changed = 2 * k
    ops = run["bc"]["operations"] + run["dataverse"]["operations"]
    trips = run["bc"]["requests"] + run["dataverse"]["requests"]
    cust = {d: measured["counters"].get(f"CUSTOMER {d}", {}) for d in ("ToIntegrationTable", "FromIntegrationTable")}
    print(f"Scheduled run: {n} coupled pairs, {k} changes in BC and {k} in Dataverse, "
          f"{args.latency_ms:g} ms latency, service limits enforced")
    row("setup run with no changes: API writes", base["bc"]["writes"] + base["dataverse"]["writes"])
    row("CUSTOMER To pass", cust["ToIntegrationTable"])
    row("CUSTOMER From pass", cust["FromIntegrationTable"])
    row("wall time of the run", f"{measured['seconds']:.1f} s ({changed / measured['seconds']:.0f} changed "
                                f"records/s)")
    row("API operations (BC + Dataverse)", f"{ops} = {ops / changed:.3f} per changed record")
    row("  of which writes", f"{run['bc']['writes'] + run['dataverse']['writes']}")
    row("HTTP round trips (BC + Dataverse)", f"{trips} = {trips / changed:.4f} per changed record")
    row("  BC / Dataverse round trips", f"{run['bc']['requests']} / {run['dataverse']['requests']}")
    row("429 answers (ridden out)", f"{run['bc']['throttled'] + run['dataverse']['throttled']}")
    failed = sum(c.get("failed", 0) for c in measured["counters"].values())
    row("records failed", failed)
    row("Table Storage operations", f"{measured['table_ops']} = {measured['table_ops'] / changed:.2f} per "
                                    f"changed record")
    row("next run with no changes: API writes", idle["bc"]["writes"] + idle["dataverse"]["writes"])
    row("next run with no changes: counters", quiet["counters"].get("CUSTOMER ToIntegrationTable"))
    row("peak memory of the app process", f"{peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
