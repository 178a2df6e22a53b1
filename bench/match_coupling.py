"""Benchmark: match-based coupling of 10,000 BC customers to 10,000 Dataverse accounts.

    .venv/bin/python -m bench.match_coupling [--records 10000] [--latency-ms 0]

Prints wall time, API requests per service (HTTP round trips and list pages), Table Storage operations and peak
memory of the app's process (the emulators and Azurite run in a child process). The request counts must grow
with N / page size, not N: the Dataverse side is read in pages of 5000 and indexed, the BC side in pages of 1000.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from .common import emulators, peak_rss_mb, row


async def run(records: int) -> dict:
    from sandbox.host import invoke
    from sync.runtime import close_runtime, get_runtime

    rt = get_runtime()
    await rt.tables.table(rt.names.couplings)  # create the table outside the measurement
    ops_before = rt.tables.ops
    started = time.perf_counter()
    resp = await invoke("couple_match", "POST", body={"mapping": "CUSTOMER"})
    elapsed = time.perf_counter() - started
    body = json.loads(resp.get_body())
    figures = {
        "status": resp.status_code, "seconds": elapsed, "counts": body.get("counts"),
        "bc": rt.bc.counters.snapshot(), "dataverse": rt.dataverse.counters.snapshot(),
        "table_ops": rt.tables.ops - ops_before,
    }
    await close_runtime()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--latency-ms", type=float, default=0.0)
    args = p.parse_args()
    baseline = peak_rss_mb()
    with emulators("--no-seed", "--customers", str(args.records), "--accounts", str(args.records),
                   "--latency-ms", str(args.latency_ms)) as stats:
        before = stats()
        f = asyncio.run(run(args.records))
        after = stats()
    n = args.records
    print(f"Match-based coupling: {n} BC customers x {n} Dataverse accounts (latency {args.latency_ms} ms)")
    row("HTTP status", f["status"])
    row("outcomes", f["counts"])
    row("wall time", f"{f['seconds']:.1f} s ({n / f['seconds']:.0f} records/s)")
    row("BC API requests (app side)", f"{f['bc']['requests']} ({f['bc']['requests'] / n:.4f} per record)")
    row("Dataverse API requests (app side)",
        f"{f['dataverse']['requests']} ({f['dataverse']['requests'] / n:.4f} per record)")
    row("requests seen by the emulators", {k: after[k]["requests"] - before[k]["requests"] for k in after})
    row("Table Storage operations", f"{f['table_ops']} ({f['table_ops'] / n:.2f} per record)")
    row("peak memory of the app process", f"{peak_rss_mb():.0f} MB (baseline after imports {baseline:.0f} MB)")


if __name__ == "__main__":
    main()
