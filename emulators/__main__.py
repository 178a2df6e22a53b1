"""Run the emulators (and Azurite) in their own process, for benchmarks and manual work.

    python -m emulators [--customers N] [--accounts N] [--matching N] [--latency-ms MS] [--no-seed]

Prints one JSON line with the URLs and the connection string, then serves until stdin closes (or Ctrl+C).
Running them in another process keeps their memory and CPU out of the app's figures. Commands on stdin, each
answered with one JSON line: ``stats`` (request counters), ``edit-bc <count> <offset>`` and
``edit-dv <count> <offset>`` (edits "by a person" of customers / accounts, in name order).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone

from .azurite import Azurite
from .bc import BCEmulator
from .dataverse import DataverseEmulator
from .server import DEFAULT_TOKEN, RateLimit

COMPANY_ID = "f64eba74-dacd-4854-a584-1834f68cfc3a"


def bulk_names(n: int, prefix: str = "Bench") -> list[str]:
    return [f"{prefix} Company {i:06d}" for i in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=0, help="extra BC customers named 'Bench Company NNNNNN'")
    p.add_argument("--accounts", type=int, default=0, help="extra Dataverse accounts (customers) named alike")
    p.add_argument("--matching", type=int, default=None,
                   help="how many of the accounts share a customer's name (default: all that can)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every request")
    p.add_argument("--limits", action="store_true",
                   help="enforce the services' limits (BC 6000 req/5 min, 5 concurrent; Dataverse 6000/5 min, 52)")
    p.add_argument("--no-seed", action="store_true", help="no seed data")
    args = p.parse_args()

    latency = args.latency_ms / 1000.0
    # Bulk records get realistic, spread-out modified-on times in the past (a real tenant's records weren't all
    # touched in the same second), then the clock runs normally.
    backdate = {"by": timedelta(days=1), "step": timedelta(0)}

    def clock() -> datetime:
        if backdate["by"]:
            backdate["step"] += timedelta(milliseconds=5)
            return datetime.now(timezone.utc) - backdate["by"] + backdate["step"]
        return datetime.now(timezone.utc)

    bc_limits = RateLimit(max_requests=6000, window_seconds=300, max_concurrent=5, queue_concurrent=True) \
        if args.limits else None
    dv_limits = RateLimit(max_requests=6000, window_seconds=300, max_concurrent=52) if args.limits else None
    with Azurite() as azurite, \
            BCEmulator(company_id=COMPANY_ID, seed=not args.no_seed, latency=latency, rate_limit=bc_limits,
                       clock=clock) as bc, \
            DataverseEmulator(seed=not args.no_seed, latency=latency, rate_limit=dv_limits, clock=clock) as dv:
        names = bulk_names(max(args.customers, args.accounts))
        for name in names[:args.customers]:
            bc.create("customers", {"displayName": name})
        matching = args.accounts if args.matching is None else args.matching
        for i in range(args.accounts):
            name = names[i] if i < matching else f"Unmatched Account {i:06d}"
            dv.create("accounts", {"name": name, "customertypecode": 3})
        backdate["by"] = timedelta(0)
        print(json.dumps({"BC_API_BASE_URL": bc.base_url, "BC_COMPANY_ID": COMPANY_ID, "DATAVERSE_URL": dv.url,
                          "SYNC_STORAGE_CONNECTION": azurite.connection_string, "LOCAL_DEV_TOKEN": DEFAULT_TOKEN}),
              flush=True)
        try:
            for line in sys.stdin:
                command, *args = line.split()
                if command == "stats":
                    print(json.dumps({"bc": _stats(bc), "dataverse": _stats(dv)}), flush=True)
                elif command == "edit-bc":  # edit-bc <count> <offset>: a person edits customers in BC
                    count, offset = int(args[0]), int(args[1])
                    for rec in sorted(bc.all("customers"), key=lambda r: r["number"])[offset:offset + count]:
                        bc.update("customers", rec["id"], {"phoneNumber": f"+1 555 {offset:04d}"})
                    print(json.dumps({"edited": count}), flush=True)
                elif command == "edit-dv":  # edit-dv <count> <offset>: a person edits accounts in Dataverse
                    count, offset = int(args[0]), int(args[1])
                    rows = sorted(dv.all("accounts"), key=lambda r: r["name"])[offset:offset + count]
                    for row in rows:
                        dv.update("accounts", row["accountid"], {"address1_city": f"City {offset}"})
                    print(json.dumps({"edited": len(rows)}), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def _stats(emu) -> dict:
    s = emu.stats
    return {"requests": s.requests, "operations": s.operations, "writes": s.writes, "throttled": s.throttled}


if __name__ == "__main__":
    sys.exit(main())
