"""`tapestry experiment start|status|stop|report --tenant T`: A/B experiments on the multi-tenant server
(tapestry.serving.experiment; the split and the report's maths: tapestry.serving.ab)."""
from __future__ import annotations

import json
from pathlib import Path


def _event_sources(tenant: str, root, given: list[str] | None) -> list[tuple[Path, int | None]]:
    """--events files (whole), else the files `tapestry ingest` committed, up to their committed offsets (the
    embedded store's mirror, <root>/<tenant>/ingest/offsets.json)."""
    if given:
        return [(Path(p), None) for p in given]
    from tapestry.artifacts import tenant_dir

    path = tenant_dir(tenant, root) / "ingest" / "offsets.json"
    try:
        offsets = json.loads(path.read_text()).get("offsets", {})
    except (OSError, ValueError):
        offsets = {}
    return [(Path(src), int(end)) for src, end in offsets.items() if Path(src).is_file()]


def experiment_report(tenant: str, root=None, experiment: str | None = None, window: float = 86400.0,
                      events: list[str] | None = None, control: str | None = None) -> tuple[dict, list]:
    """(the experiment's record, per-arm ArmReport rows)."""
    from tapestry.serving import ab
    from tapestry.serving.experiment import find

    record = find(tenant, root, experiment)
    exposures = ab.read_exposures(Path(record["exposure_log"]))
    outcome = [e for path, limit in _event_sources(tenant, root, events) for e in ab.read_events(path, limit)]
    rows = ab.report(exposures, outcome, window, arms=list(record["split"]["arms"]),
                     control=control or record["control"])
    return record, rows


def cmd_experiment(args) -> None:
    from tapestry.serving import ab
    from tapestry.serving import experiment as ex
    from tapestry.serving.tenant_repository import SwapError

    try:
        if args.action == "start":
            arms = [ex.parse_arm(a) for a in args.arm] if args.arm else [("control", "served", 50.0),
                                                                        ("treatment", "latest", 50.0)]
            info = ex.start(args.tenant, arms, args.root, args.id)
            print(f"[experiment] tenant {args.tenant}: {info['experiment']['id']} runs; call "
                  f"{info['model_name']} as before, the ARM output names the arm; exposures are logged to "
                  f"{info['experiment']['exposure_log']}")
        elif args.action == "stop":
            info = ex.stop(args.tenant, args.root, args.keep)
            print(f"[experiment] tenant {args.tenant} serves {info['export_version']} alone again")
        elif args.action == "status":
            record = ex.running(args.tenant, args.root)
            if args.json:
                print(json.dumps(record, indent=2))
            elif not record:
                print(f"tenant {args.tenant}: no experiment runs")
            else:
                print(f"tenant {args.tenant}: experiment {record['id']} since {record['started_at']} "
                      f"(control: {record['control']})")
                for arm, a in record["arms"].items():
                    print(f"  {arm:<14}{a['percent']:>6g}%  {a['export_version']}  {a['ensemble']}")
                print(f"  exposures: {len(ab.read_exposures(Path(record['exposure_log'])))} logged to "
                      f"{record['exposure_log']}")
        else:
            window = ab.parse_window(args.window)
            record, rows = experiment_report(args.tenant, args.root, args.id, window, args.events, args.control)
            if args.json:
                print(json.dumps({"experiment": record["id"], "window_s": window,
                                  "arms": [r.__dict__ for r in rows]}, indent=2))
            else:
                print(f"tenant {args.tenant}: experiment {record['id']} "
                      f"({'running' if 'stopped_at' not in record else 'stopped ' + record['stopped_at']})")
                print(ab.format_report(rows, window, args.control or record["control"]))
    except (SwapError, ValueError) as e:
        raise SystemExit(f"tapestry experiment {args.action}: error: {e}")


def add_experiment_command(add) -> None:
    """Register `experiment` through the CLI's `add(name, fn, help)` helper (which adds --tenant and --root)."""
    e = add("experiment", cmd_experiment, "A/B experiments: serve several exports as arms (split by user id), "
                                          "report each arm's hit rate and lift")
    e.add_argument("action", choices=("start", "status", "stop", "report"))
    e.add_argument("--arm", action="append", metavar="NAME=VERSION:PERCENT",
                   help="start: an arm (repeat; the first is the control), VERSION vNNNN, served or latest; default "
                        "control=served:50 treatment=latest:50")
    e.add_argument("--id", help="start: the experiment's id (default exp<UTC time>); report: which one (default the "
                                "running one, else the latest)")
    e.add_argument("--keep", help="stop: the arm whose export is served afterwards (default the control)")
    e.add_argument("--window", default="24h", help="report: how long after a recommendation an event counts "
                                                   "(seconds, or 30m, 2h, 7d; default 24h)")
    e.add_argument("--events", action="append", help="report: outcome events CSV (ingest's format; repeat); "
                                                     "default the files `tapestry ingest` committed")
    e.add_argument("--control", help="report: the arm lift is measured against (default the experiment's control)")
    e.add_argument("--json", action="store_true", help="status / report: machine-readable output")
