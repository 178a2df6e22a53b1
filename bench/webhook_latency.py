"""Benchmark: the Dataverse webhook receiver (POST /api/webhooks/dataverse) and its queue worker.

    .venv/bin/python -m bench.webhook_latency [--pairs 1000] [--deliveries 1000] [--burst 5000] [--latency-ms 20]
                                              [--worker-concurrency 16]

The emulators (and Azurite) run in a child process with 20 ms latency per request. Setup (not measured): N
customers and N accounts, coupled as if synchronized; a person then edits half of the accounts in Dataverse.

1. **Receiver latency**: ``--deliveries`` webhook requests for coupled-row updates (the RemoteExecutionContext
   Dataverse posts for an asynchronous Update step, ~3 KB, with the X-Webhook-Secret header), one after the
   other, through the registered function exactly as the host calls it. Measured: from the request to the
   answer, i.e. authentication, parsing, the mapping check (one Table Storage query) and the queue message handed
   to the output binding. Processing is **not** included: it is deferred to the queue. (The binding's write to
   Azure Queue Storage is done by the host after the function returns; add one Storage round trip.)
2. **Burst**: ``--burst`` deliveries at once (200 in flight): deliveries acknowledged per second.
3. **Processing** (the queue worker, ``--worker-concurrency`` messages at a time, like host.json's batchSize):
   the messages of step 1 - half real changes (a From pass: the row re-read, BC written), half rows that did not
   change since the last synchronization (the echo/duplicate path: "unchanged", no write) - then the burst's
   messages (all duplicates by then). Per-message latency, messages per second, API requests and BC writes.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from .common import emulators, peak_rss_mb, row

SECRET = "bench-secret-1b8e"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _ms(values: list[float]) -> str:
    return (f"p50 {_pct(values, 50) * 1000:.1f} ms, p95 {_pct(values, 95) * 1000:.1f} ms, "
            f"p99 {_pct(values, 99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms "
            f"(mean {statistics.fmean(values) * 1000:.1f} ms)")


async def requests_for(org_host: str) -> list[tuple[dict, bytes]]:
    """One Update context per account, as Dataverse posts it for an asynchronous step (values as stored now)."""
    from emulators import dataverse_webhook as wh
    from sync import rules
    from sync.runtime import close_runtime, get_runtime

    rt = get_runtime()
    rows = await rt.dataverse.list_all("accounts", select=["accountid", "name", "address1_city", "modifiedon"])
    out = []
    for r in sorted(rows, key=lambda r: r["name"]):
        ctx = wh.build_remote_execution_context(
            "Update", "account", r["accountid"], mode=1, pk_name="accountid", primary_name=("name", r["name"]),
            target_attributes={"address1_city": r.get("address1_city")},
            modified_on=rules.dataverse_timestamp(r), step_name="bc-dataverse-sync: Update of account")
        out.append(wh.webhook_request(ctx, org_host))
    await close_runtime()
    return out


class Capture:
    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value


async def receive(requests: list[tuple[dict, bytes]], burst: int, concurrency: int = 200) -> dict:
    import azure.functions as func

    from sandbox.host import registered_functions
    from sync.runtime import close_runtime, get_runtime

    fn = registered_functions()["dataverse_webhook"].get_user_function()
    rt = get_runtime()
    await rt.mappings()  # warm: tables created, clients connected

    async def one(headers: dict, body: bytes) -> tuple[float, int, str | None]:
        h = {**headers, "X-Webhook-Secret": SECRET}
        req = func.HttpRequest("POST", "https://app.azurewebsites.net/api/webhooks/dataverse?code=k", body=body,
                               headers=h, params={"code": "k"})
        queue = Capture()
        started = time.perf_counter()
        resp = await fn(req, queue)
        return time.perf_counter() - started, resp.status_code, queue.value

    for headers, body in requests[:20]:  # warm-up, not counted
        await one(headers, body)
    ops = rt.tables.ops
    sequential = [await one(h, b) for h, b in requests]
    ops_per_delivery = (rt.tables.ops - ops) / len(requests)

    sem = asyncio.Semaphore(concurrency)
    burst_requests = [requests[i % len(requests)] for i in range(burst)]

    async def limited(h, b):
        async with sem:
            return await one(h, b)

    started = time.perf_counter()
    burst_results = await asyncio.gather(*(limited(h, b) for h, b in burst_requests))
    burst_seconds = time.perf_counter() - started
    await close_runtime()
    return {
        "latencies": [t for t, _, _ in sequential], "statuses": sorted({s for _, s, _ in sequential}),
        "messages": [m for _, _, m in sequential if m], "ops_per_delivery": ops_per_delivery,
        "body_bytes": statistics.fmean(len(b) for _, b in requests),
        "burst_seconds": burst_seconds, "burst_statuses": sorted({s for _, s, _ in burst_results}),
        "burst_messages": [m for _, _, m in burst_results if m],
        "burst_latencies": [t for t, _, _ in burst_results],
    }


async def process(messages: list[str], concurrency: int) -> dict:
    import azure.functions as func

    from sandbox.host import registered_functions
    from sync import dataverse_webhook as service
    from sync.runtime import close_runtime, get_runtime

    worker = registered_functions()["dataverse_change_worker"].get_user_function()
    rt = get_runtime()
    await rt.mappings()
    bc0, dv0, ops0 = rt.bc.counters.snapshot(), rt.dataverse.counters.snapshot(), rt.tables.ops
    results: dict[str, list[float]] = {}
    real = service.process

    async def timed(rt_, work, **kw):
        started = time.perf_counter()
        outcomes = await real(rt_, work, **kw)
        key = outcomes[0].result if outcomes else "none"
        results.setdefault(key, []).append(time.perf_counter() - started)
        return outcomes

    service.process = timed
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(message: str) -> None:
        nonlocal failures
        async with sem:
            for _ in range(5):  # the queue's redelivery
                try:
                    await worker(func.QueueMessage(id=uuid.uuid4().hex, body=message.encode()))
                    return
                except Exception:  # noqa: BLE001
                    failures += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(m) for m in messages))
    finally:
        service.process = real
    seconds = time.perf_counter() - started
    bc1, dv1 = rt.bc.counters.snapshot(), rt.dataverse.counters.snapshot()
    figures = {"seconds": seconds, "by_result": results, "failures": failures,
               "bc_requests": bc1["requests"] - bc0["requests"], "dv_requests": dv1["requests"] - dv0["requests"],
               "table_ops": rt.tables.ops - ops0}
    await close_runtime()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--deliveries", type=int, default=1000)
    p.add_argument("--burst", type=int, default=5000)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--worker-concurrency", type=int, default=16)
    p.add_argument("--skip-processing", action="store_true")
    args = p.parse_args()
    from bench.sync_run import couple_as_synchronized
    from emulators.dataverse import DataverseEmulator

    baseline = peak_rss_mb()
    with emulators("--no-seed", "--customers", str(args.pairs), "--accounts", str(args.pairs),
                   "--latency-ms", str(args.latency_ms)) as command:
        os.environ["DATAVERSE_WEBHOOK_SECRET"] = SECRET
        from sync.settings import reset_settings
        reset_settings()
        asyncio.run(couple_as_synchronized(args.pairs))
        changed = args.pairs // 2
        command(f"edit-dv {changed} 0")  # a person edits half of the accounts
        reqs = asyncio.run(requests_for(DataverseEmulator.ORG_HOST))
        reqs = [reqs[i % len(reqs)] for i in range(args.deliveries)]
        before = command()
        r = asyncio.run(receive(reqs, args.burst))
        after_receive = command()
        proc = burst_proc = None
        if not args.skip_processing:
            proc = asyncio.run(process(r["messages"], args.worker_concurrency))
            after_proc = command()
            burst_proc = asyncio.run(process(r["burst_messages"], args.worker_concurrency))
            after_burst = command()

    print(f"Dataverse webhook receiver: {args.pairs} coupled pairs, emulators at {args.latency_ms:.0f} ms latency")
    print("1. Receiver latency (auth + parse + mapping check + queue message; processing deferred to the queue)")
    row("deliveries (one after the other)", f"{len(r['latencies'])}, answered {r['statuses']}, "
                                           f"body ~{r['body_bytes'] / 1024:.1f} KB")
    row("latency", _ms(r["latencies"]))
    row("Table Storage operations per delivery", f"{r['ops_per_delivery']:.2f} (the mapping settings)")
    row("emulator requests during receiving", {k: after_receive[k]["requests"] - before[k]["requests"]
                                               for k in before})
    print("2. Burst")
    row(f"{args.burst} deliveries, 200 in flight", f"{r['burst_seconds']:.2f} s = "
                                                   f"{args.burst / r['burst_seconds']:.0f} deliveries/s, "
                                                   f"answered {r['burst_statuses']}")
    row("latency under the burst", _ms(r["burst_latencies"]))
    if proc:
        print(f"3. Processing by the queue worker ({args.worker_concurrency} messages at a time)")
        n = len(r["messages"])
        row(f"{n} messages ({changed} rows changed)", f"{proc['seconds']:.1f} s = {n / proc['seconds']:.0f} "
                                                       f"messages/s, redeliveries {proc['failures']}")
        for result, values in sorted(proc["by_result"].items()):
            row(f"  {result} ({len(values)})", _ms(values))
        row("  BC writes", after_proc["bc"]["writes"] - after_receive["bc"]["writes"])
        row("  API requests per message", f"BC {proc['bc_requests'] / n:.2f}, Dataverse {proc['dv_requests'] / n:.2f},"
                                          f" Table Storage ops {proc['table_ops'] / n:.1f}")
        m = len(r["burst_messages"])
        row(f"{m} burst messages (all already synchronized)",
            f"{burst_proc['seconds']:.1f} s = {m / burst_proc['seconds']:.0f} messages/s, "
            f"redeliveries {burst_proc['failures']}")
        for result, values in sorted(burst_proc["by_result"].items()):
            row(f"  {result} ({len(values)})", _ms(values))
        row("  BC writes", after_burst["bc"]["writes"] - after_proc["bc"]["writes"])
    row("peak memory of the app process", f"{peak_rss_mb():.0f} MB (baseline after imports {baseline:.0f} MB)")


if __name__ == "__main__":
    main()
