"""The serving side of the `tapestry` command line: serve / stop / status / recommend, the multi-tenant swap and
rollback, and the online store's ingest / erase / load-store. `tapestry.cli` builds the parser and registers these
through `add_serving_commands`."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tapestry.artifacts import latest_version, tenant_dir
from tapestry.cli_experiment import add_experiment_command
from tapestry.cli_keys import add_keys_command
from tapestry.cli_tiers import add_tier_command
from tapestry.config import validate_tenant


def _serve_state(tenant: str, root) -> Path:
    from tapestry.serving.status import state_path

    return state_path(tenant, root)


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def serve_child_command(args) -> list[str]:
    """The foreground `tapestry serve` a detached one starts: every serving option is passed on."""
    cmd = [sys.executable, "-m", "tapestry.cli", "serve", "--tenant", args.tenant, "--host", args.host,
           "--timeout", str(args.timeout)]
    for flag, value in (("--root", args.root), ("--http-port", args.http_port), ("--grpc-port", args.grpc_port),
                        ("--metrics-port", args.metrics_port), ("--metrics-host", args.metrics_host)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + (["--insecure"] if args.insecure else [])


def cmd_serve(args) -> None:
    from tapestry.serving import status as st
    from tapestry.serving.service import run_foreground
    from tapestry.serving.triton_server import TritonServerError

    if args.tenant is None or args.tenants or args.all_tenants:   # one Triton for many tenants
        from tapestry.serving.multi_tenant import cli_serve

        return cli_serve(args)
    state = _serve_state(args.tenant, args.root)
    running = st.live_state(args.tenant, args.root)
    if running:
        raise SystemExit(f"a server for tenant {args.tenant} already runs (pid {running['pid']}, HTTP "
                         f"{running['http_url']}, gRPC {running['grpc_url']}): `tapestry stop --tenant "
                         f"{args.tenant}` first")
    ports = [p for p in (args.http_port, args.grpc_port, args.metrics_port) if p is not None]
    if len(set(ports)) != len(ports):
        raise SystemExit(f"--http-port, --grpc-port and --metrics-port must differ, got {ports}")
    if args.detach:
        from tapestry.serving.auth import ServerAuth

        try:   # refused here, not only in the child's log
            ServerAuth.for_serve(args.host, [args.tenant], args.root, args.insecure)
        except ValueError as e:
            raise SystemExit(f"tapestry serve: error: {e}")
        log = tenant_dir(args.tenant, args.root) / "serve.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        state.unlink(missing_ok=True)  # stale (checked above): the child's own file is the "ready" signal
        with open(log, "ab") as log_file:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(serve_child_command(args), stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + args.timeout + 30  # the child's own start timeout, plus its imports
        while not state.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {log}:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        info = json.loads(state.read_text())
        print(f"[serve] tenant={args.tenant} started in the background (pid {info['pid']}): HTTP {info['http_url']}, "
              f"gRPC {info['grpc_url']}, metrics {info['metrics_url']}, listening on {info['host']}; log {log}")
        return
    try:
        run_foreground(args.tenant, args.root, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, timeout=args.timeout, insecure=args.insecure,
                       metrics_host=args.metrics_host)
    except TritonServerError as e:  # port in use, bad host, a model that fails to load: the message says which
        raise SystemExit(f"tapestry serve: error: {e}")


def cmd_stop(args) -> None:
    from tapestry.serving import status as st

    state = _serve_state(args.tenant, args.root)
    info = st.read_state(state)
    if info is None:
        print(f"[stop] no server running for tenant {args.tenant}")
        return
    if not st.is_serve_process(info):
        # Its process is gone (or the pid now belongs to another process, which must not be signalled).
        state.unlink(missing_ok=True)
        print(f"[stop] no server running for tenant {args.tenant} (removed a stale {state.name})")
        return
    if info.get("multi_tenant"):   # unloaded from the shared server; the last tenant stops it
        from tapestry.serving.multi_tenant import cli_stop

        return cli_stop(args)
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:  # exited since the check: it removes its own state file
        pass
    # Wait for the process itself, not only its state file (removed first): when `stop` returns, Triton is down
    # and its ports are free for the next `serve`.
    deadline = time.monotonic() + 60  # Triton's own exit timeout, plus stopping five python stubs
    while st.is_serve_process(info) and time.monotonic() < deadline:
        time.sleep(0.2)
    if st.is_serve_process(info):
        raise SystemExit(f"[stop] server for tenant {args.tenant} (pid {info['pid']}) did not stop within 60 s")
    print(f"[stop] server for tenant {args.tenant} stopped")


def cmd_status(args) -> None:
    from tapestry.serving import status as st

    statuses = ([s for s in [st.server_status(args.tenant, args.root)] if s] if args.tenant
                else st.all_statuses(args.root))
    if args.json:
        print(json.dumps(statuses, indent=2))
    elif not statuses:
        print(f"no server running for tenant {args.tenant}" if args.tenant else "no server running")
    else:
        print("\n".join(st.describe(s) for s in statuses))


def print_recommendations(result, user: str, protocol: str, recent=None) -> None:
    extra = f", {len(recent)} recent events" if recent else ""
    extra += f", {result.ignored_items} unknown recent items ignored" if result.ignored_items else ""
    print(f"top {len(result.item_ids)} for user {user} ({result.strategy}{extra}, via Triton {protocol}):")
    reasons = result.reason_texts() if getattr(result, "reasons", None) else [""] * len(result.item_ids)
    for rank, (iid, title, score, why) in enumerate(zip(result.item_ids, result.titles, result.scores, reasons), 1):
        print(f"  {rank:>2}. {iid:>8}  {score:8.3f}  {title}" + (f"\n{'':>24}({why})" if why else ""))


def cmd_recommend(args) -> None:
    from tapestry.serving.client import RecommendClient, RecommendError, ensemble_name

    url, model = args.url, ensemble_name(args.tenant, multi_tenant=args.multi_tenant)
    if not url:
        state = _serve_state(args.tenant, args.root)
        if not state.exists():
            raise SystemExit(f"no server running for tenant {args.tenant}: run `tapestry serve --tenant "
                             f"{args.tenant} --detach` first, or pass --url")
        info = json.loads(state.read_text())
        url, model = info["grpc_url" if args.protocol == "grpc" else "http_url"], info.get("model_name", model)
    exclude = [x for x in (args.exclude or "").split(",") if x]
    recent = [x for x in args.recent.split(",") if x] if args.recent is not None else None
    try:
        with RecommendClient(url, protocol=args.protocol, model_name=model, api_key=args.api_key) as client:
            result = client.recommend(args.tenant, args.user, k=args.k, exclude_item_ids=exclude,
                                      recent_item_ids=recent)
    except RecommendError as e:
        raise SystemExit(f"recommend failed: {e}")
    print_recommendations(result, args.user, args.protocol, recent)


def tenant_list(text: str) -> list[str]:
    from tapestry.serving.multi_tenant import tenant_list as parse

    return parse(text)


def cmd_swap(args) -> None:
    from tapestry.serving.multi_tenant import cli_swap

    cli_swap(args)


def cmd_rollback(args) -> None:
    from tapestry.serving.multi_tenant import cli_rollback

    cli_rollback(args)


def _redis_url(args) -> str | None:
    return args.redis or os.environ.get("TAPESTRY_REDIS_URL") or None


def cmd_ingest(args) -> None:
    from tapestry.online.ingest import cli_ingest

    cli_ingest(args.tenant, args.source, args.root, _redis_url(args), args.follow, args.batch_size, args.poll_interval)


def cmd_erase(args) -> None:
    from tapestry.online.erase import erase_user
    from tapestry.online.store import StoreUnavailable

    try:
        e = erase_user(args.tenant, args.user, args.root, _redis_url(args))
    except StoreUnavailable as err:
        raise SystemExit(f"tapestry erase: error: {err}")
    where = {True: "removed from the Redis store", False: "not in the Redis store",
             None: "an embedded store drops them on its next lookup"}[e["removed_from_store"]]
    print(f"[erase] tenant={args.tenant} user {e['user_id']}: tombstoned at {e['erased_at']}; {where}")


def cmd_load_store(args) -> None:
    from tapestry.online.load import load_export_into_redis

    url = _redis_url(args)
    if not url:
        raise ValueError("--redis URL (or $TAPESTRY_REDIS_URL) is required")
    load_export_into_redis(latest_version(args.tenant, "export", args.root) / "artifacts", url)


def add_serving_commands(sub, add) -> None:
    """Register the serving subcommands on `sub` (argparse subparsers); `add(name, fn, help, tenant_required)` is
    the CLI's helper that adds --tenant and --root."""
    s = add("serve", cmd_serve, "run the real Triton server on the latest export", tenant_required=False)
    s.add_argument("--tenants", type=tenant_list, help="a,b,c: ONE Triton for these tenants (explicit model control; "
                                                       "ensembles <tenant>__recommend; added to it if it runs)")
    s.add_argument("--all-tenants", action="store_true", help="like --tenants, every tenant with an export")
    s.add_argument("--detach", action="store_true", help="start in the background and return when ready")
    s.add_argument("--host", default="127.0.0.1",
                   help="IPv4 address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    s.add_argument("--http-port", type=port_number, help="default: a free port")
    s.add_argument("--grpc-port", type=port_number, help="default: a free port")
    s.add_argument("--metrics-port", type=port_number, help="default: a free port")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to be ready")
    s.add_argument("--insecure", action="store_true", help="with a non-loopback --host: serve tenants that have no "
                                                           "API key to anyone (default: refuse to start)")
    s.add_argument("--metrics-host", help="address of the metrics port (default: --host when loopback, else "
                                          "127.0.0.1: its counters name every tenant's models)")
    add("stop", cmd_stop, "stop a detached server (a tenant of a multi-tenant server: unload it from it)")
    sw = add("swap", cmd_swap, "hot swap: the multi-tenant server serves this tenant's latest (or --version) "
                               "export, with no failed request")
    sw.add_argument("--version", help="export version to serve, e.g. v0003 (default: the latest)")
    add("rollback", cmd_rollback, "serve again the export the tenant served before its last swap")
    stat = sub.add_parser("status", help="what runs for which tenant: pid, host, ports, model version, health")
    stat.add_argument("--tenant", type=validate_tenant, help="one tenant (default: every tenant under --root)")
    stat.add_argument("--root", type=Path, default=None, help="artifact root (default $TAPESTRY_HOME or ./artifacts)")
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(fn=cmd_status)
    r = add("recommend", cmd_recommend, "ask the served ensemble for recommendations")
    r.add_argument("--user", required=True)
    r.add_argument("-k", type=int, default=10)
    r.add_argument("--protocol", choices=("http", "grpc"), default="http")
    r.add_argument("--exclude", help="comma-separated item ids never to return")
    r.add_argument("--recent", help="comma-separated item ids the user interacted with since the export, oldest "
                                    "first (with an unknown --user: an anonymous session)")
    r.add_argument("--url", help="host:port (default: from the running `tapestry serve`)")
    r.add_argument("--multi-tenant", action="store_true", help="with --url: call <tenant>__recommend (a server "
                                                               "started with --tenants)")
    r.add_argument("--api-key", help="the tenant's API key (default $TAPESTRY_API_KEY; the variable keeps it out of "
                                     "the process list and shell history)")
    redis_help = "Redis online store URL, e.g. redis://host:6379/0 (default $TAPESTRY_REDIS_URL; none: embedded)"
    ing = add("ingest", cmd_ingest, "stream new events (CSV lines) into the online store, resumably")
    ing.add_argument("--source", required=True, help="CSV file with a header line (the generic event columns), or - "
                                                     "for stdin")
    ing.add_argument("--follow", action="store_true", help="keep polling the file for appended lines until stopped")
    ing.add_argument("--redis", help=redis_help)
    ing.add_argument("--batch-size", type=int, default=500, help="lines per committed batch (default 500)")
    ing.add_argument("--poll-interval", type=float, default=0.2, help="seconds between polls in --follow mode")
    er = add("erase", cmd_erase, "GDPR erasure: tombstone a user and remove them from the online store")
    er.add_argument("--user", required=True)
    er.add_argument("--redis", help=redis_help)
    ldr = add("load-store", cmd_load_store, "load the latest export into the Redis online store (atomic switch)")
    ldr.add_argument("--redis", help=redis_help)
    add_keys_command(add)
    add_experiment_command(add)
    add_tier_command(add)
