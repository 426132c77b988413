"""Many tenants in one Triton server: its process (start, stop, foreground run) and the `tapestry` commands over it.

`tapestry serve --tenants a,b` (or `--all-tenants`) runs ONE tritonserver (--model-control-mode=explicit) on a
combined model repository that the server owns, <root>/_server/model_repository, with per tenant a stable ensemble
name, <tenant>__recommend, over the stage models of the export it serves (layout: tapestry.serving.tenant_repository).
Each tenant keeps its own stage processes, index and features, and every stage still refuses a TENANT other than
its export's (HTTP 400 / INVALID_ARGUMENT): a request to a's ensemble naming b never reaches b's data.

The work is split in three modules so that each reads on its own, importing only downwards (no cycle):
- tenant_repository: the combined repository's names and files (no server needed);
- model_control: hot swap, rollback, adding / removing a tenant through Triton's model-control API, and the state
  files (<root>/_server/server.json, each tenant's serve.json) and lock those changes share;
- this module: the server process's lifecycle, which writes that state at start and removes it at stop, and the
  command-line glue tapestry.cli calls.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tapestry.artifacts import latest_version
from tapestry.config import artifacts_root, validate_tenant
from tapestry.serving import status as st
from tapestry.serving.auth import ServerAuth, active_keys, metrics_host as metrics_bind
from tapestry.serving.model_control import (add_tenant, forget_tenant, live_server, locked, remove_tenant, rollback,
                                            save_state, server_state_path, swap, tenant_info)
from tapestry.serving.tenant_repository import (ENSEMBLE, SEPARATOR, SwapError, export_path, model_name, server_dir,
                                                write_ensemble, write_stages)
from tapestry.serving.triton_server import LOOPBACK, TritonServer, TritonServerError
from tapestry.serving.supervisor import SUPERVISE_ENV, Supervisor


# --- the server process -----------------------------------------------------------------------------------------

def all_tenants(root: Path | None = None) -> list[str]:
    """Every tenant under ``root`` with an export."""
    base, found = Path(root or artifacts_root()), []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        with contextlib.suppress(ValueError, FileNotFoundError):
            latest_version(validate_tenant(path.name), "export", root)
            found.append(path.name)
    return found


def start(tenants: list[str], root: Path | None = None, *, host: str = LOOPBACK, http_port: int | None = None,
          grpc_port: int | None = None, metrics_port: int | None = None, timeout: float = 300.0,
          versions: dict[str, str] | None = None, insecure: bool = False,
          metrics_host: str | None = None) -> TritonServer:
    """Start one Triton serving every tenant's latest export (or ``versions[tenant]``) and write the state files;
    ``stop`` undoes it."""
    if os.environ.get("TAPESTRY_ARTIFACT_DIR"):
        raise TritonServerError("TAPESTRY_ARTIFACT_DIR would point every tenant's models at one directory: unset it")
    if not tenants:
        raise TritonServerError("no tenant to serve")
    try:   # a fresh admin key; keys required off loopback (tapestry.serving.auth)
        auth = ServerAuth.for_serve(host, tenants, root, insecure)
    except ValueError as e:
        raise TritonServerError(str(e)) from None
    with locked(root):
        if live_server(root):
            raise TritonServerError(f"a multi-tenant server already runs under {server_dir(root)}")
        for tenant in tenants:
            if st.live_state(tenant, root):
                raise TritonServerError(f"a server for tenant {tenant} already runs: `tapestry stop --tenant "
                                        f"{tenant}` first")
        exports = {t: export_path(t, root, (versions or {}).get(t)) for t in tenants}
        repo = server_dir(root) / "model_repository"
        shutil.rmtree(repo, ignore_errors=True)   # the server's own: rebuilt at each start
        repo.mkdir(parents=True)
        stages = {}
        for tenant, export in exports.items():
            stages[tenant] = write_stages(repo, tenant, export)
            write_ensemble(repo, tenant, export)
        # Not strict readiness: with it, one model that ever failed to load (a bad export offered to `swap`, which
        # keeps serving the old one) makes /v2/health/ready fail for every tenant, for good (measured). Readiness
        # is checked per tenant instead: here, and by `tapestry status` (its ensemble + a real request).
        server = TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                              model_control_mode="explicit", load_models=["*"],
                              extra_args=["--strict-readiness=false", *auth.triton_args()], env=auth.triton_env(),
                              metrics_host=metrics_bind(host, metrics_host))
        server.start(timeout=timeout)
        try:
            failed = [t for t in tenants if not server.model_ready(model_name(t, ENSEMBLE))]
            if failed:
                raise TritonServerError(f"tenant(s) {', '.join(failed)} failed to load:\n{server.log_tail()}")
            save_state(root, {"pid": os.getpid(), "pid_start": st.process_start(os.getpid()),
                              "triton_pid": server.pid, "host": host,
                              **{f"{kind}_port": port for kind, port in server.ports.items()},
                              "http_url": server.http_url, "grpc_url": server.grpc_url,
                              "metrics_url": server.metrics_url, "model_repository": str(repo),
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **auth.state(),
                              "tenants": {t: tenant_info(t, e, [], stages[t]) for t, e in exports.items()}})
        except BaseException:
            server.stop()
            raise
    return server


def stop(server: TritonServer, root: Path | None = None) -> None:
    """Remove the state files (first: nobody reads the state of a stopping server), stop Triton, drop the repo."""
    with locked(root):
        state = st.read_state(server_state_path(root))
        if state and state.get("pid") == os.getpid():
            for tenant in state.get("tenants", {}):
                forget_tenant(root, tenant, state)
            server_state_path(root).unlink(missing_ok=True)
        server.stop()
        shutil.rmtree(server.model_repository, ignore_errors=True)


@contextlib.contextmanager
def serving(tenants: list[str], root: Path | None = None, supervise: bool = False, supervisor_log=print, **kwargs):
    """``with serving(["a", "b"], root) as server:`` one Triton for both tenants (tests, benchmarks); with
    ``supervise``, the self-healing thread runs too, as `server.supervisor` (tapestry.serving.supervisor)."""
    server = start(tenants, root, **kwargs)
    server.supervisor = Supervisor(root, log=supervisor_log) if supervise else None
    try:
        if server.supervisor:
            server.supervisor.start()
        yield server
    finally:
        if server.supervisor:
            server.supervisor.stop()
        stop(server, root)


def run_server(tenants: list[str], root: Path | None = None, log=print, **kwargs) -> None:
    """Foreground: one Triton for ``tenants`` until SIGTERM / Ctrl-C (what `tapestry serve --tenants` runs)."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    server = start(tenants, root, **kwargs)
    # Self-healing (tapestry.serving.supervisor) unless TAPESTRY_SUPERVISE=0; it logs here, in the serve log.
    supervisor = (Supervisor(root, log=lambda text: (log(text), sys.stdout.flush()))
                  if os.environ.get(SUPERVISE_ENV, "1") != "0" else None)
    try:
        log(f"[serve] tenants {', '.join(tenants)} in one Triton on {server.host}: HTTP {server.http_url}, gRPC "
            f"{server.grpc_url}, metrics {server.metrics_url}; ensembles <tenant>{SEPARATOR}{ENSEMBLE}; supervisor "
            f"{'on' if supervisor else 'off'}")
        sys.stdout.flush()
        if supervisor:
            supervisor.start()
        while not stopping and server.running:
            time.sleep(0.5)   # waiting for a signal, not timing anything
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor:
            supervisor.stop()
        stop(server, root)
        log("[serve] stopped")
        sys.stdout.flush()


# --- command line (tapestry.cli calls these) --------------------------------------------------------------------

def tenant_list(text: str) -> list[str]:
    """argparse type of `--tenants a,b,c`: validated ids, duplicates dropped."""
    try:
        tenants = [validate_tenant(t.strip()) for t in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return list(dict.fromkeys(tenants))


def cli_serve(args) -> None:
    """`tapestry serve --tenants a,b` / `--all-tenants`: start the server, or add the tenants to the running one."""
    chosen = [f for f, v in (("--tenant", args.tenant), ("--tenants", args.tenants), ("--all-tenants",
                                                                                   args.all_tenants)) if v]
    if len(chosen) != 1:
        raise SystemExit("tapestry serve: error: give one of --tenant T, --tenants A,B,... or --all-tenants")
    tenants = args.tenants or all_tenants(args.root)
    if not tenants:
        raise SystemExit(f"tapestry serve: error: no tenant under {args.root or artifacts_root()} has an export")
    try:
        if live_server(args.root):
            served = live_server(args.root)["tenants"]
            for tenant in tenants:
                if tenant in served:
                    print(f"[serve] tenant {tenant} is already served ({served[tenant]['export_version']})")
                elif live_server(args.root).get("keys_required") and not active_keys(tenant, args.root):
                    print(f"[serve] tenant {tenant} NOT added: this server requires API keys and it has none "
                          f"(`tapestry keys create --tenant {tenant}` first)")
                else:
                    info = add_tenant(tenant, args.root)
                    print(f"[serve] tenant {tenant} added: {info['export_version']} as {info['model_name']}")
            return
        if not args.detach:
            run_server(tenants, args.root, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, timeout=args.timeout, insecure=args.insecure,
                       metrics_host=args.metrics_host)
            return
    except (TritonServerError, SwapError) as e:
        raise SystemExit(f"tapestry serve: error: {e}")
    cmd = [sys.executable, "-m", "tapestry.cli", "serve", "--tenants", ",".join(tenants), "--host", args.host,
           "--timeout", str(args.timeout)]
    for flag, value in (("--root", args.root), ("--http-port", args.http_port), ("--grpc-port", args.grpc_port),
                        ("--metrics-port", args.metrics_port), ("--metrics-host", args.metrics_host)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.insecure:
        cmd.append("--insecure")
    try:   # refused here, not only in the child's log
        ServerAuth.for_serve(args.host, tenants, args.root, args.insecure)
    except ValueError as e:
        raise SystemExit(f"tapestry serve: error: {e}")
    log = server_dir(args.root) / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + args.timeout + 30   # the child's own start timeout, plus its imports
    while not (live_server(args.root) or {}).get("pid") == proc.pid:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {log}:\n" + log.read_text()[-3000:])
        time.sleep(0.2)   # waiting for the child's state file
    info = live_server(args.root)
    print(f"[serve] tenants {', '.join(tenants)} in one Triton (pid {info['pid']}): HTTP {info['http_url']}, gRPC "
          f"{info['grpc_url']}, metrics {info['metrics_url']}; call <tenant>{SEPARATOR}{ENSEMBLE}; log {log}")


def _described(tenant: str, info: dict) -> str:
    back = f"; `tapestry rollback` serves {info['history'][-1]}" if info["history"] else ""
    return (f"tenant {tenant} serves {info['export_version']} ({info['served_model']}, exported "
            f"{info['created_at']}) as {info['model_name']}{back}")


def cli_swap(args) -> None:
    try:
        print(f"[swap] {_described(args.tenant, swap(args.tenant, args.root, args.version))}")
    except SwapError as e:
        raise SystemExit(f"tapestry swap: error: {e}")


def cli_rollback(args) -> None:
    try:
        print(f"[rollback] {_described(args.tenant, rollback(args.tenant, args.root))}")
    except SwapError as e:
        raise SystemExit(f"tapestry rollback: error: {e}")


def cli_stop(args) -> None:
    try:
        remove_tenant(args.tenant, args.root)
    except SwapError as e:
        raise SystemExit(f"tapestry stop: error: {e}")
