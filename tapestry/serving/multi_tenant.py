"""Many tenants in one Triton server, and hot swaps of a tenant's export, through explicit model control.

`tapestry serve --tenants a,b` (or `--all-tenants`) runs ONE tritonserver (--model-control-mode=explicit) on a
combined model repository that the server owns, <root>/_server/model_repository ("_server" is no tenant id: those
start with a letter or digit), built from each tenant's export:

    <t>__recommend/config.pbtxt            the tenant's exported ensemble, renamed (a stable name: what clients
    <t>__recommend/1/                      call), its steps naming the stage models of the export it serves
    <t>__<stage>__vNNNN/config.pbtxt       export vNNNN's stage config, renamed, ARTIFACT_DIR = that export's
    <t>__<stage>__vNNNN/1/model.py         artifacts/ (absolute); model.py is a symlink to the exported one

Each tenant keeps its own stage processes, index and features, and every stage still refuses a TENANT other than
its export's (HTTP 400 / INVALID_ARGUMENT): a request to a's ensemble naming b never reaches b's data.

Hot swap (`tapestry swap --tenant t [--version vNNNN]`; `tapestry export` never swaps by itself), three
model-control steps:
1. write the new export's stage models and load them (load_model): new processes start beside the serving ones;
   if one fails, they are unloaded and removed and nothing else changed;
2. point the ensemble at them and load it: requests switch once it is ready; a request already inside the old
   ensemble holds its stage models until it finishes (Triton's ensemble takes a handle on each composing model when
   a request starts);
3. unload the old export's stage models (unload_model) and remove their folders.
A request sees one export end to end, never a mix (two exports of different ETL runs number items differently).
Measured on this Triton build (2.51, the nvidia-pytriton 0.7.0 binary), and why the steps are these:
- Triton model versions 1, 2, ... under one name: adding a version folder modifies the model, and Triton then
  reloads EVERY version of it, the serving one too; so each export gets its own stage names instead.
- Loading the ensemble alone (its composing models as dependencies) is not safe: a composing model that fails
  to load then unloads the serving ensemble (a 7 s outage in our test). Hence step 1 first.
- The python backend writes __pycache__/ into a model's folder after Triton read its timestamps, so the
  ensemble load of step 2 saw the new stages as modified and started them all again: model.py's bytecode is
  written beforehand (_precompile), and each stage process now starts once per swap.
`tapestry rollback --tenant t` serves the export served before the last swap, the same way.

State: <root>/_server/server.json (the server and each tenant's export) and, per tenant, the usual
<root>/<t>/serve.json (tapestry.serving.status) with `multi_tenant`, `model_name` (the ensemble to call),
`export_version` and `history` (exports served before, oldest first), so `status`, `recommend` and a single-tenant
`serve` (which refuses: the tenant is served) work unchanged. Changes hold <root>/_server/lock.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tapestry.artifacts import atomic_write_text, latest_version, stage_dir
from tapestry.config import artifacts_root, validate_tenant
from tapestry.serving import status as st
from tapestry.serving.triton_server import LOOPBACK, TritonServer, TritonServerError

SERVER_DIR = "_server"
SEPARATOR = "__"          # <tenant>__<model>: no exported model name contains "__", so names never collide
ENSEMBLE = "recommend"    # the exported ensemble's name (tapestry.serving.client.ensemble_name mirrors this)
LOAD_TIMEOUT_S = 600.0    # one model-control call: python stubs import torch and faiss, slow on a busy machine


class SwapError(RuntimeError):
    """A swap, rollback or tenant change that could not be made; the server serves what it served before."""


def model_name(tenant: str, model: str) -> str:
    return f"{validate_tenant(tenant)}{SEPARATOR}{model}"


def stage_name(tenant: str, stage: str, export: Path) -> str:
    """The combined repository's name for one export's stage: <tenant>__<stage>__vNNNN."""
    return f"{model_name(tenant, stage)}{SEPARATOR}{Path(export).name}"


def server_dir(root: Path | None = None) -> Path:
    return Path(root or artifacts_root()) / SERVER_DIR


def server_state_path(root: Path | None = None) -> Path:
    return server_dir(root) / "server.json"


def live_server(root: Path | None = None) -> dict | None:
    """The running multi-tenant server's state, or None (a stale file is not a server)."""
    state = st.read_state(server_state_path(root))
    return state if state and st.is_serve_process(state) else None


@contextlib.contextmanager
def locked(root: Path | None = None):
    """One change at a time (start, add, swap, rollback, remove, stop) per artifact root."""
    path = server_dir(root)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- the combined repository ------------------------------------------------------------------------------------

def _read_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _write_config(path: Path, config, header: str) -> None:
    from google.protobuf import text_format

    atomic_write_text(path, f"# {header} (written by tapestry.serving.multi_tenant)\n"
                      + text_format.MessageToString(config))


def exported_models(export: Path) -> tuple[object, list[str]]:
    """(the export's ensemble config, its step models in order); every step must be a model of the export."""
    repo = Path(export) / "model_repository"
    if not (repo / ENSEMBLE / "config.pbtxt").is_file():
        raise SwapError(f"{export} has no {ENSEMBLE} ensemble: not a tapestry export")
    ensemble = _read_config(repo / ENSEMBLE / "config.pbtxt")
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    bad = [m for m in steps if SEPARATOR in m or not (repo / m / "config.pbtxt").is_file()]
    if not steps or bad:
        raise SwapError(f"{export}: ensemble steps {steps} are not all models of the export ({bad})")
    return ensemble, steps


def write_stages(repo: Path, tenant: str, export: Path) -> list[str]:
    """Every stage model of one export under its own names; returns the names in step order."""
    names = []
    for stage in exported_models(export)[1]:
        source = Path(export) / "model_repository" / stage
        config = _read_config(source / "config.pbtxt")
        config.name = stage_name(tenant, stage, export)
        config.parameters["ARTIFACT_DIR"].string_value = str((Path(export) / "artifacts").resolve())
        folder = repo / config.name
        shutil.rmtree(folder, ignore_errors=True)   # left by a failed attempt
        for version in (p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
            (folder / version.name).mkdir(parents=True)
            for file in (f for f in version.iterdir() if f.name != "__pycache__"):   # the exported code, linked
                (folder / version.name / file.name).symlink_to(file.resolve())
                if file.suffix == ".py":
                    _precompile(folder / version.name / file.name)
        _write_config(folder / "config.pbtxt", config, f"tenant {tenant}: {stage} of {export}")
        names.append(config.name)
    return names


def _precompile(model_py: Path) -> None:
    """Write model.py's bytecode cache now. The python backend's stub imports model.py and writes __pycache__/ into
    the model's folder AFTER Triton noted the folder's timestamps (it ignores PYTHONDONTWRITEBYTECODE), so Triton's
    next poll of that model, which every ensemble load makes of its composing models, saw it modified and started
    its processes again (measured: every stage of a swap loaded twice). A valid cache is not rewritten."""
    import importlib.util
    import py_compile

    py_compile.compile(str(model_py), cfile=importlib.util.cache_from_source(str(model_py)), doraise=True)


def write_ensemble(repo: Path, tenant: str, export: Path) -> str:
    """The tenant's ensemble (stable name <tenant>__recommend), its steps naming ``export``'s stage models."""
    ensemble, _ = exported_models(export)
    ensemble.name = model_name(tenant, ENSEMBLE)
    for step in ensemble.ensemble_scheduling.step:
        step.model_name = stage_name(tenant, step.model_name, export)
    (repo / ensemble.name / "1").mkdir(parents=True, exist_ok=True)
    _write_config(repo / ensemble.name / "config.pbtxt", ensemble, f"tenant {tenant}: serves {export}")
    return ensemble.name


def remove_models(repo: Path, names: list[str]) -> None:
    for name in names:
        shutil.rmtree(repo / name, ignore_errors=True)


class ModelControl:
    """Triton's model-repository API over HTTP (tritonclient load_model / unload_model)."""

    def __init__(self, http_url: str):
        self.http_url = http_url

    def _client(self):
        import tritonclient.http as tc

        return tc.InferenceServerClient(self.http_url, connection_timeout=LOAD_TIMEOUT_S,
                                        network_timeout=LOAD_TIMEOUT_S)

    def _each(self, call: str, names: list[str]) -> None:
        """One request per model, in parallel (Triton loads models on its own threads); raises the first error."""
        def one(name):
            client = self._client()
            try:
                getattr(client, call)(name)
            finally:
                client.close()
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            list(pool.map(one, names))

    def load(self, names: list[str]) -> None:
        self._each("load_model", names)

    def unload(self, names: list[str]) -> None:
        self._each("unload_model", names)

    def ready_models(self) -> set[str]:
        client = self._client()
        try:
            return {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}
        finally:
            client.close()

    def quietly(self, call: str, names: list[str]) -> None:
        """Best effort, while reporting another error."""
        with contextlib.suppress(Exception):
            self._each(call, names)


def error_text(e: Exception) -> str:
    """tritonclient's exceptions carry the server's message in .message()."""
    message = e.message() if callable(getattr(e, "message", None)) else None
    return message or str(e)


# --- state ------------------------------------------------------------------------------------------------------

def _tenant_info(tenant: str, export: Path, history: list[str], stages: list[str]) -> dict:
    manifest = json.loads((Path(export) / "artifacts" / "manifest.json").read_text())
    return {"export": str(export), "export_version": Path(export).name, "served_model": manifest.get("served_model"),
            "created_at": manifest.get("created_at"), "models_version": Path(manifest.get("models_version", "")).name,
            "history": list(history), "stage_models": stages, "multi_tenant": True,
            "model_name": model_name(tenant, ENSEMBLE)}


def _save(root: Path | None, server: dict) -> None:
    """server.json, then every tenant's serve.json (the server's facts plus the tenant's)."""
    st.write_state(server_state_path(root), server)
    common = {k: v for k, v in server.items() if k != "tenants"}
    for tenant, info in server["tenants"].items():
        st.write_state(st.state_path(tenant, root), {**common, **info, "tenants": sorted(server["tenants"])})


def _forget(root: Path | None, tenant: str, server: dict) -> None:
    path = st.state_path(tenant, root)
    state = st.read_state(path)
    if state and state.get("pid") == server.get("pid"):
        path.unlink(missing_ok=True)


def _require(root: Path | None, tenant: str) -> tuple[dict, dict]:
    server = live_server(root)
    if server is None or tenant not in server.get("tenants", {}):
        why = ("its server serves one tenant without model control: `tapestry stop` it, then `tapestry serve "
               f"--tenants {tenant}`" if st.live_state(tenant, root) else
               f"no multi-tenant server serves it: `tapestry serve --tenants {tenant} --detach` first")
        raise SwapError(f"tenant {tenant}: {why}")
    return server, server["tenants"][tenant]


def export_path(tenant: str, root: Path | None = None, version: str | None = None) -> Path:
    """A tenant's export (version "vNNNN" or "NNNN"), or its latest one."""
    if version is None:
        return latest_version(tenant, "export", root)
    name = version if version.startswith("v") else f"v{version.zfill(4)}"
    path = stage_dir(tenant, "export", root) / name
    if not name[1:].isdigit() or not (path / "model_repository").is_dir():
        raise SwapError(f"tenant {tenant} has no export {version!r} under {path.parent}")
    return path


# --- swaps ------------------------------------------------------------------------------------------------------

def _switch(server: dict, tenant: str, old: dict | None, new: Path, log=print) -> list[str]:
    """Serve ``new`` for ``tenant`` instead of ``old`` (its tenant info; None: new to the server); returns the new
    stage model names. On failure the tenant serves what it served before, and SwapError says why."""
    repo, control = Path(server["model_repository"]), ModelControl(server["http_url"])
    t0 = time.perf_counter()
    stages = write_stages(repo, tenant, new)
    try:
        control.load(stages)
    except Exception as e:
        control.quietly("unload_model", stages)
        remove_models(repo, stages)
        raise SwapError(f"tenant {tenant}: export {new.name} failed to load, "
                        f"{old['export_version'] if old else 'nothing'} still served: {error_text(e)}") from e
    t1 = time.perf_counter()
    ensemble = write_ensemble(repo, tenant, new)
    try:
        control.load([ensemble])
    except Exception as e:
        if old is not None:
            write_ensemble(repo, tenant, Path(old["export"]))
            control.quietly("load_model", [ensemble])
        control.quietly("unload_model", stages)
        remove_models(repo, stages)
        raise SwapError(f"tenant {tenant}: ensemble over export {new.name} failed to load: {error_text(e)}") from e
    t2 = time.perf_counter()
    if old is not None:
        control.unload(old["stage_models"])
        remove_models(repo, old["stage_models"])
    log(f"[swap] tenant={tenant} {old['export_version'] if old else '-'} -> {new.name}: stage models loaded in "
        f"{t1 - t0:.1f}s, ensemble switched in {t2 - t1:.1f}s, old ones unloaded in {time.perf_counter() - t2:.1f}s")
    return stages


def swap(tenant: str, root: Path | None = None, version: str | None = None, log=print) -> dict:
    """Serve ``version`` (default: the latest export) of ``tenant`` in the running multi-tenant server."""
    with locked(root):
        server, info = _require(root, tenant)
        new = export_path(tenant, root, version)
        if new.name == info["export_version"]:
            log(f"[swap] tenant={tenant} already serves {new.name}")
            return info
        stages = _switch(server, tenant, info, new, log)
        server["tenants"][tenant] = _tenant_info(tenant, new, info["history"] + [info["export_version"]], stages)
        _save(root, server)
        return server["tenants"][tenant]


def rollback(tenant: str, root: Path | None = None, log=print) -> dict:
    """Serve again the export ``tenant`` served before its last swap."""
    with locked(root):
        server, info = _require(root, tenant)
        if not info["history"]:
            raise SwapError(f"tenant {tenant}: nothing to roll back to ({info['export_version']} is the first "
                            "export this server served for it)")
        new = export_path(tenant, root, info["history"][-1])
        stages = _switch(server, tenant, info, new, log)
        server["tenants"][tenant] = _tenant_info(tenant, new, info["history"][:-1], stages)
        _save(root, server)
        return server["tenants"][tenant]


def add_tenant(tenant: str, root: Path | None = None, log=print) -> dict:
    """Serve ``tenant``'s latest export in the running multi-tenant server too."""
    with locked(root):
        server = live_server(root)
        if server is None:
            raise SwapError("no multi-tenant server runs")
        if tenant in server["tenants"] or st.live_state(tenant, root):
            raise SwapError(f"tenant {tenant} is already served")
        new = latest_version(tenant, "export", root)
        stages = _switch(server, tenant, None, new, log)
        server["tenants"][tenant] = _tenant_info(tenant, new, [], stages)
        _save(root, server)
        return server["tenants"][tenant]


def remove_tenant(tenant: str, root: Path | None = None, log=print) -> list[str]:
    """Stop serving ``tenant`` (models unloaded, folders removed); returns the tenants still served. The last
    tenant's removal stops the server."""
    with locked(root):
        server, info = _require(root, tenant)
        del server["tenants"][tenant]
        _forget(root, tenant, server)
        if server["tenants"]:
            names = [model_name(tenant, ENSEMBLE)] + info["stage_models"]
            ModelControl(server["http_url"]).unload(names[:1])   # the ensemble first: no new request reaches
            ModelControl(server["http_url"]).unload(names[1:])   # the stages, in-flight ones finish
            remove_models(Path(server["model_repository"]), names)
            _save(root, server)
            log(f"[stop] tenant {tenant} unloaded; still served: {', '.join(sorted(server['tenants']))}")
            return sorted(server["tenants"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(server["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 60   # Triton's exit timeout plus the stubs
    while st.is_serve_process(server) and time.monotonic() < deadline:
        time.sleep(0.2)   # waiting for the process to exit, not timing anything
    log(f"[stop] tenant {tenant} was the last one served: the multi-tenant server stopped")
    return []


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
          versions: dict[str, str] | None = None) -> TritonServer:
    """Start one Triton serving every tenant's latest export (or ``versions[tenant]``) and write the state files;
    ``stop`` undoes it."""
    if os.environ.get("TAPESTRY_ARTIFACT_DIR"):
        raise TritonServerError("TAPESTRY_ARTIFACT_DIR would point every tenant's models at one directory: unset it")
    if not tenants:
        raise TritonServerError("no tenant to serve")
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
                              extra_args=["--strict-readiness=false"])
        server.start(timeout=timeout)
        try:
            failed = [t for t in tenants if not server.model_ready(model_name(t, ENSEMBLE))]
            if failed:
                raise TritonServerError(f"tenant(s) {', '.join(failed)} failed to load:\n{server.log_tail()}")
            _save(root, {"pid": os.getpid(), "pid_start": st.process_start(os.getpid()), "triton_pid": server.pid,
                         "host": host, **{f"{kind}_port": port for kind, port in server.ports.items()},
                         "http_url": server.http_url, "grpc_url": server.grpc_url,
                         "metrics_url": server.metrics_url, "model_repository": str(repo),
                         "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "tenants": {t: _tenant_info(t, e, [], stages[t]) for t, e in exports.items()}})
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
                _forget(root, tenant, state)
            server_state_path(root).unlink(missing_ok=True)
        server.stop()
        shutil.rmtree(server.model_repository, ignore_errors=True)


@contextlib.contextmanager
def serving(tenants: list[str], root: Path | None = None, **kwargs):
    """``with serving(["a", "b"], root) as server:`` one Triton for both tenants (tests, benchmarks)."""
    server = start(tenants, root, **kwargs)
    try:
        yield server
    finally:
        stop(server, root)


def run_server(tenants: list[str], root: Path | None = None, log=print, **kwargs) -> None:
    """Foreground: one Triton for ``tenants`` until SIGTERM / Ctrl-C (what `tapestry serve --tenants` runs)."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    server = start(tenants, root, **kwargs)
    try:
        log(f"[serve] tenants {', '.join(tenants)} in one Triton on {server.host}: HTTP {server.http_url}, gRPC "
            f"{server.grpc_url}, metrics {server.metrics_url}; ensembles <tenant>{SEPARATOR}{ENSEMBLE}")
        sys.stdout.flush()
        while not stopping and server.running:
            time.sleep(0.5)   # waiting for a signal, not timing anything
    except KeyboardInterrupt:
        pass
    finally:
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
                else:
                    info = add_tenant(tenant, args.root)
                    print(f"[serve] tenant {tenant} added: {info['export_version']} as {info['model_name']}")
            return
        if not args.detach:
            run_server(tenants, args.root, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, timeout=args.timeout)
            return
    except (TritonServerError, SwapError) as e:
        raise SystemExit(f"tapestry serve: error: {e}")
    cmd = [sys.executable, "-m", "tapestry.cli", "serve", "--tenants", ",".join(tenants), "--host", args.host,
           "--timeout", str(args.timeout)]
    for flag, value in (("--root", args.root), ("--http-port", args.http_port), ("--grpc-port", args.grpc_port),
                        ("--metrics-port", args.metrics_port)):
        if value is not None:
            cmd += [flag, str(value)]
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
