"""A bounded headless locust run (benchmarks/locustfile.py: HTTP/KServe) against a running `tapestry serve`.

    make locust TENANT=ml1m                 # .venv-load with locust (made once), then this script
    python benchmarks/locust_run.py --tenant ml1m [--root DIR] [--users 8] [--seconds 20] [--locust PATH]

The server's HTTP address and model come from the tenant's serve.json (`tapestry serve --tenant T --detach` or
`--tenants ...`); the user ids from the export it serves; TAPESTRY_API_KEY, when set, is sent by every request
(keys on). Runs `locust --headless -u N -r N -t Ss` (loopback only, stops by itself) and writes locust's aggregated
numbers (requests, failures, req/s, p50/p95/p99/max ms) to benchmarks/results/locust-<tenant>.json.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from tapestry.artifacts import atomic_write_json
from tapestry.serving import status as st


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenant", required=True)
    p.add_argument("--root", type=Path)
    p.add_argument("--users", type=int, default=8, help="locust users (concurrent clients), spawned at once")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--locust", help="the locust executable (default: .venv-load/bin/locust, else on PATH)")
    args = p.parse_args()
    state = st.live_state(args.tenant, args.root)
    if state is None:
        raise SystemExit(f"no server runs for tenant {args.tenant}: `tapestry serve --tenant {args.tenant} --detach` "
                         "first")
    local = Path(__file__).resolve().parents[1] / ".venv-load" / "bin" / "locust"
    locust = args.locust or (str(local) if local.exists() else shutil.which("locust"))
    if not locust:
        raise SystemExit("locust is not installed: `make locust` makes .venv-load, or pip install 'tapestry[load]'")
    ids = pl.read_parquet(Path(state["export"]) / "artifacts" / "users.parquet")["user_id"][:1000].to_list()
    with tempfile.TemporaryDirectory(prefix="tapestry-locust-") as work:
        users = Path(work) / "users.txt"
        users.write_text("\n".join(ids) + "\n")
        env = {**os.environ, "TAPESTRY_TENANT": args.tenant, "TAPESTRY_MODEL": state.get("model_name", "recommend"),
               "TAPESTRY_USERS_FILE": str(users)}
        cmd = [locust, "-f", str(Path(__file__).parent / "locustfile.py"), "--headless", "-u", str(args.users),
               "-r", str(args.users), "-t", f"{args.seconds}s", "--host", f"http://{state['http_url']}",
               "--csv", f"{work}/stats", "--only-summary", "--stop-timeout", "5"]
        print("[locust]", " ".join(cmd), flush=True)
        run = subprocess.run(cmd, env=env, timeout=args.seconds + 120, capture_output=True, text=True)
        sys.stdout.write(run.stdout[-3000:] + run.stderr[-3000:])
        rows = {r["Name"]: r for r in csv.DictReader(open(f"{work}/stats_stats.csv"))}
    total, rec = rows["Aggregated"], rows.get("recommend", rows["Aggregated"])
    report = {"benchmark": "locust", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "command": " ".join(cmd[1:]).replace(work, "<tmp>"), "locust_exit_code": run.returncode,
              "api_key_sent": bool(os.environ.get("TAPESTRY_API_KEY")), "model": env["TAPESTRY_MODEL"],
              "recommend": {"requests": int(rec["Request Count"]), "failures": int(rec["Failure Count"]),
                            "requests_per_s": round(float(rec["Requests/s"]), 1),
                            **{f"p{q}_ms": float(rec[f"{q}%"]) for q in ("50", "95", "99")},
                            "max_ms": float(rec["Max Response Time"])},
              "all_requests": int(total["Request Count"]), "all_failures": int(total["Failure Count"])}
    out = Path(__file__).parent / "results" / f"locust-{args.tenant}.json"
    atomic_write_json(out, report)
    print(f"[locust] {report['recommend']}; written {out}")


if __name__ == "__main__":
    main()
