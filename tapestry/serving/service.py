"""`tapestry serve` in the foreground: Triton on the tenant's latest export until SIGTERM or Ctrl-C.

The state file (tapestry.serving.status) is written only once Triton is ready, so its appearance is what a detached
`tapestry serve` waits for, and it is removed before Triton stops, so no one reads a state of a stopping server.
Triton runs with explicit model control (every model loaded at start) so that the supervisor
(tapestry.serving.supervisor; TAPESTRY_SUPERVISE=0 turns it off) can reload a stage whose process died.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tapestry.artifacts import latest_version
from tapestry.serving import status as st
from tapestry.serving.auth import ServerAuth, metrics_host as metrics_bind
from tapestry.serving.supervisor import SUPERVISE_ENV, Supervisor
from tapestry.serving.tenant_repository import _precompile, exported_models
from tapestry.serving.triton_server import LOOPBACK, TritonServer, TritonServerError


def run_foreground(tenant: str, root: Path | None = None, *, host: str = LOOPBACK, http_port: int | None = None,
                   grpc_port: int | None = None, metrics_port: int | None = None, timeout: float = 120.0,
                   insecure: bool = False, metrics_host: str | None = None) -> None:
    export = latest_version(tenant, "export", root)
    manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
    try:   # a fresh admin key; keys required off loopback (tapestry.serving.auth)
        auth = ServerAuth.for_serve(host, [tenant], root, insecure)
    except ValueError as e:
        raise TritonServerError(str(e)) from None
    server = TritonServer(export / "model_repository", host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, extra_args=auth.triton_args(), env=auth.triton_env(),
                          metrics_host=metrics_bind(host, metrics_host), model_control_mode="explicit",
                          load_models=["*"])
    # The stubs would write model.py's bytecode into the model folders after Triton noted their timestamps, and any
    # later load (the supervisor's repair) would then see all five as modified and reload them: written now.
    for model_py in sorted((export / "model_repository").glob("*/[0-9]*/model.py")):
        _precompile(model_py)
    state = st.state_path(tenant, root)
    stopping, supervisor = [], None
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    server.start(timeout=timeout)
    try:
        st.write_state(state, {
            "pid": os.getpid(), "pid_start": st.process_start(os.getpid()), "triton_pid": server.pid, "host": host,
            **{f"{kind}_port": port for kind, port in server.ports.items()},
            "http_url": server.http_url, "grpc_url": server.grpc_url, "metrics_url": server.metrics_url,
            "export": str(export), "export_version": export.name, "served_model": manifest.get("served_model"),
            "models_version": Path(manifest.get("models_version", "")).name,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **auth.state(),
            "model_name": "recommend", "stage_models": exported_models(export)[1],   # what the supervisor checks
        })
        print(f"[serve] tenant={tenant} Triton ready on {host}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
              f"metrics {server.metrics_url} ({export})", flush=True)
        if os.environ.get(SUPERVISE_ENV, "1") != "0":
            supervisor = Supervisor(root, tenant=tenant, log=lambda text: print(text, flush=True))
            supervisor.start()
        while not stopping and server.running:
            time.sleep(0.5)  # waiting for a signal, not timing anything
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor is not None:
            supervisor.stop()
        state.unlink(missing_ok=True)
        server.stop()
        print("[serve] stopped", flush=True)
