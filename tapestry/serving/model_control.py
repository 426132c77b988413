"""Changing what the running multi-tenant server serves, through Triton's model-control API: hot swap, rollback,
adding and removing a tenant, and the state files that record each tenant's export.

A separate module because these calls act on a server that is already running (often from another process:
`tapestry swap` talks to the detached `tapestry serve --tenants`), while `multi_tenant` owns that server's process.

Hot swap (`tapestry swap --tenant t [--version vNNNN]`; `tapestry export` never swaps by itself), three
model-control steps:
1. write the new export's stage models and load them (load_model): new processes start beside the serving ones;
   if one fails, they are unloaded and removed and nothing else changed;
2. point the ensemble at them and load it: requests switch once it is ready; a request already inside the old
   ensemble holds its stage models until it finishes (Triton's ensemble takes a handle on each composing model when
   a request starts);
3. unload the old export's stage models (unload_model) and remove their folders.
A request sees one export end to end, never a mix (two exports of different ETL runs number items differently).
Loading the ensemble alone (its composing models as dependencies) is not safe, measured on this Triton build: a
composing model that fails to load then unloads the serving ensemble (a 7 s outage in our test). Hence step 1
first. Why each export's stages get their own names, and their bytecode is written beforehand: tenant_repository.
`tapestry rollback --tenant t` serves the export served before the last swap, the same way.

State: <root>/_server/server.json (the server and each tenant's export) and, per tenant, the usual
<root>/<t>/serve.json (tapestry.serving.status) with `multi_tenant`, `model_name` (the ensemble to call),
`export_version` and `history` (exports served before, oldest first), so `status`, `recommend` and a single-tenant
`serve` (which refuses: the tenant is served) work unchanged. Changes hold <root>/_server/lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tapestry.artifacts import latest_version
from tapestry.serving import status as st
from tapestry.serving.auth import admin_headers
from tapestry.serving.tenant_repository import (ENSEMBLE, SwapError, export_path, model_name, remove_models,
                                                server_dir, write_ensemble, write_stages)

LOAD_TIMEOUT_S = 600.0    # one model-control call: python stubs import torch and faiss, slow on a busy machine


class ModelControl:
    """Triton's model-repository API (tritonclient load_model / unload_model), with the server's admin key (a
    restricted API: tapestry.serving.auth); ``ModelControl.of(server_state)`` reads both from the state.

    Over gRPC when the server's gRPC address is known: Triton's HTTP frontend (evhtp) runs a load or unload on the
    worker thread that accepted it, and every other connection that thread serves waits for it: inference requests
    on a keep-alive connection stalled for the whole load (measured: 4.2 s during a swap on a quiet machine, over
    the clients' 10 s on a busy one; triton-inference-server/server#8958). Its gRPC frontend answers repository
    calls apart from inference, so a swap never stalls a request."""

    def __init__(self, http_url: str, admin_key: str | None = None, grpc_url: str | None = None):
        self.http_url, self.grpc_url, self.admin_key = http_url, grpc_url, admin_key
        self.headers = admin_headers(admin_key, "grpc" if grpc_url else "http") or None

    @classmethod
    def of(cls, server: dict) -> "ModelControl":
        return cls(server["http_url"], server.get("admin_key"), server.get("grpc_url"))

    def _client(self):
        if self.grpc_url:
            import tritonclient.grpc as tc

            return tc.InferenceServerClient(self.grpc_url)
        import tritonclient.http as tc

        return tc.InferenceServerClient(self.http_url, connection_timeout=LOAD_TIMEOUT_S,
                                        network_timeout=LOAD_TIMEOUT_S)

    def _call(self, client, call: str, *args, **kwargs):
        if self.grpc_url:
            kwargs["client_timeout"] = LOAD_TIMEOUT_S
        return getattr(client, call)(*args, headers=self.headers, **kwargs)

    def _each(self, call: str, names: list[str]) -> None:
        """One request per model, in parallel (Triton loads models on its own threads); raises the first error."""
        def one(name):
            client = self._client()
            try:
                self._call(client, call, name)
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
            index = (self._call(client, "get_model_repository_index", as_json=True).get("models", [])
                     if self.grpc_url else self._call(client, "get_model_repository_index"))
            return {m["name"] for m in index if m.get("state") == "READY"}
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


def tenant_info(tenant: str, export: Path, history: list[str], stages: list[str]) -> dict:
    """What server.json and the tenant's serve.json record of the export a tenant serves."""
    manifest = json.loads((Path(export) / "artifacts" / "manifest.json").read_text())
    return {"export": str(export), "export_version": Path(export).name, "served_model": manifest.get("served_model"),
            "created_at": manifest.get("created_at"), "models_version": Path(manifest.get("models_version", "")).name,
            "history": list(history), "stage_models": stages, "multi_tenant": True,
            "model_name": model_name(tenant, ENSEMBLE)}


def save_state(root: Path | None, server: dict) -> None:
    """server.json, then every tenant's serve.json (the server's facts plus the tenant's)."""
    st.write_state(server_state_path(root), server)
    common = {k: v for k, v in server.items() if k != "tenants"}
    for tenant, info in server["tenants"].items():
        st.write_state(st.state_path(tenant, root), {**common, **info, "tenants": sorted(server["tenants"])})


def forget_tenant(root: Path | None, tenant: str, server: dict) -> None:
    """Remove the tenant's serve.json if this server wrote it."""
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


def _no_experiment(tenant: str, info: dict, what: str) -> None:
    if info.get("experiment"):
        raise SwapError(f"tenant {tenant} runs A/B experiment {info['experiment']['id']}: `tapestry experiment stop "
                        f"--tenant {tenant}` before you {what}")


# --- swaps ------------------------------------------------------------------------------------------------------

def _switch(server: dict, tenant: str, old: dict | None, new: Path, log=print) -> list[str]:
    """Serve ``new`` for ``tenant`` instead of ``old`` (its tenant info; None: new to the server); returns the new
    stage model names. On failure the tenant serves what it served before, and SwapError says why."""
    repo, control = Path(server["model_repository"]), ModelControl.of(server)
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
        _no_experiment(tenant, info, "swap")
        new = export_path(tenant, root, version)
        if new.name == info["export_version"]:
            # Served, but is it loaded and answering? (a model unloaded or a stage process killed behind our back)
            from tapestry.serving.supervisor import repair   # it builds on this module

            try:
                repaired = repair(server, tenant, log)
            except Exception as e:
                raise SwapError(f"tenant {tenant}: {new.name} is served but broken, and reloading it failed: "
                                f"{error_text(e)}") from e
            log(f"[swap] tenant={tenant} " + (f"repaired {new.name}: {repaired}" if repaired else
                                              f"already serves {new.name}"))
            return info
        stages = _switch(server, tenant, info, new, log)
        server["tenants"][tenant] = tenant_info(tenant, new, info["history"] + [info["export_version"]], stages)
        save_state(root, server)
        return server["tenants"][tenant]


def rollback(tenant: str, root: Path | None = None, log=print) -> dict:
    """Serve again the export ``tenant`` served before its last swap."""
    with locked(root):
        server, info = _require(root, tenant)
        _no_experiment(tenant, info, "roll back")
        if not info["history"]:
            raise SwapError(f"tenant {tenant}: nothing to roll back to ({info['export_version']} is the first "
                            "export this server served for it)")
        new = export_path(tenant, root, info["history"][-1])
        stages = _switch(server, tenant, info, new, log)
        server["tenants"][tenant] = tenant_info(tenant, new, info["history"][:-1], stages)
        save_state(root, server)
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
        server["tenants"][tenant] = tenant_info(tenant, new, [], stages)
        save_state(root, server)
        return server["tenants"][tenant]


def remove_tenant(tenant: str, root: Path | None = None, log=print) -> list[str]:
    """Stop serving ``tenant`` (models unloaded, folders removed); returns the tenants still served. The last
    tenant's removal stops the server."""
    with locked(root):
        server, info = _require(root, tenant)
        del server["tenants"][tenant]
        forget_tenant(root, tenant, server)
        if server["tenants"]:
            arms = info.get("arm_ensembles", [])   # an experiment's (tapestry.serving.experiment)
            names = [model_name(tenant, ENSEMBLE)] + arms + info["stage_models"]
            ModelControl.of(server).unload(names[:1])   # the ensemble first: no new request reaches
            if arms:
                ModelControl.of(server).unload(arms)
            ModelControl.of(server).unload(info["stage_models"])   # the stages, in-flight ones finish
            remove_models(Path(server["model_repository"]), names)
            save_state(root, server)
            log(f"[stop] tenant {tenant} unloaded; still served: {', '.join(sorted(server['tenants']))}")
            return sorted(server["tenants"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(server["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 60   # Triton's exit timeout plus the stubs
    while st.is_serve_process(server) and time.monotonic() < deadline:
        time.sleep(0.2)   # waiting for the process to exit, not timing anything
    log(f"[stop] tenant {tenant} was the last one served: the multi-tenant server stopped")
    return []
