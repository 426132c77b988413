"""`tapestry monitor --tenant T`: drift between the two latest exports, ANN recall vs exact search, training/serving
skew, quarantine rates, and the live per-tenant series of a running server (tapestry.reporting.monitor); text, or
`--json`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_monitor(args) -> None:
    from tapestry.artifacts import atomic_write_json
    from tapestry.reporting.monitor import format_text, monitor

    report = monitor(args.tenant, args.root, sample=args.sample, k=args.k, seed=args.seed,
                     metrics_url=args.metrics_url)
    if args.output:
        atomic_write_json(Path(args.output), report)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(format_text(report))


def add_monitor_command(add) -> None:
    """Register `monitor` through the CLI's `add(name, fn, help)` helper (which adds --tenant and --root)."""
    m = add("monitor", cmd_monitor, "drift between the two latest exports, ANN recall vs exact search, "
                                    "training/serving skew, quarantine rates (live per-request series: Triton's "
                                    "metrics port, README 'Monitoring')")
    m.add_argument("--sample", type=int, default=200, help="users sampled for recall and skew (default 200)")
    m.add_argument("-k", type=int, default=10, help="recall@k (default 10)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--metrics-url", help="a Triton metrics port (host:port) to read the tenant's live series from "
                   "(default: the running `tapestry serve` of the tenant, if any)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    m.add_argument("--output", help="also write the JSON report to this path (atomically)")
