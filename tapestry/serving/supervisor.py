"""Self-healing: a thread in `tapestry serve` (`--tenants`: the multi-tenant server; `--tenant T`: a one-tenant
server, ensemble `recommend`) that finds a tenant whose models broke behind the server's back and loads the same
export again (the measurements behind each choice are in docs/architecture.md, "Faults and self-healing").

What breaks, and how each is seen (every ~1 s, bounded):
- a stage's python-backend process died (kill -9, the OOM killer, a segfault in a native library): Triton does not
  restart it and the model still reports READY; every request then waits ~1 s and fails with 500 "Stub process
  ... is not healthy". Seen without a request: each READY stage model must have a live stub process (the
  tritonserver's children, named by their model.py path in /proc).
- a model unloaded behind the server's back (the admin API's unload; Triton also unloads an ensemble when one of
  its stages is): seen in the repository index (one call for every tenant).
- an ensemble that stopped answering (a stage hung): a probe inference per tenant (a cold-user request through all
  five stages, with the admin key) that gets no answer within PROBE_TIMEOUT_S, HUNG_AFTER times in a row. Its stage processes are then killed (a hung process would make the unload wait) and all reloaded.
An online store that is down is not a broken tenant (reloading cannot fix it, and feature_lookup answers without it
or with 503: tapestry.serving.feature_lookup): the tenant is marked `degraded` and nothing is reloaded.

Healing a tenant, under the server's lock (a swap in progress is waited for, never raced), on what server.json says
the tenant serves: unload its ensemble first, so that during the repair its requests fail at once (HTTP 404 / gRPC
NOT_FOUND "... has no available versions") instead of ~1 s each, and `GET /v2/models/<tenant>__recommend/ready` is
false; unload and load again the broken stage models (all of them when it hung), load the ensemble, probe. The
tenant's `health` in server.json / serve.json (shown by `tapestry status`) says ok, healing, broken or degraded,
and every step is logged ("[supervisor] ...", the serve log). A repair that fails is tried again after
RETRY_AFTER_S, until it works.

Why per-tenant readiness and not Triton's /v2/health/ready: the server runs with --strict-readiness=false, because
strict readiness is false while ANY model loads (measured: for the whole of every hot swap, 19 s in one run) and,
after a failed load, until that model loads successfully (a bad export offered to `swap` would make the server
unready for good); a load balancer would drain a healthy server during every swap. So the per-tenant ensemble's
readiness is the signal: false from detection until healed (tests/integration/test_self_healing.py). A one-tenant
server has no swaps and keeps strict readiness: there /v2/health/ready is false while the stage reloads.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tapestry.serving import status as st
from tapestry.serving.auth import admin_headers
from tapestry.serving.model_control import ModelControl, error_text, save_state, server_state_path
from tapestry.serving.tenant_repository import ENSEMBLE, model_name, server_dir

SUPERVISE_ENV = "TAPESTRY_SUPERVISE"   # "0": `tapestry serve --tenants` runs without the supervisor
PROBE_INTERVAL_S = 1.0     # between two rounds of checks
# A hang is declared only after HUNG_AFTER probes in a row got no answer within PROBE_TIMEOUT_S (>= 15 s of silence):
# the cure kills every stage process of the tenant, so a busy machine (a swap loading models, a load test on two
# cores) must never look hung. A dead stage is found at once by its missing stub process, not by probes.
PROBE_TIMEOUT_S = 5.0      # one probe inference (a cold user through five stages: ~10 ms when healthy)
HUNG_AFTER = 3             # probes in a row without an answer before a tenant counts as hung
RETRY_AFTER_S = 5.0        # a failed repair is tried again after this
HEALED_PROBE_S = 30.0      # how long a repaired tenant may take to answer its first probe


@dataclass
class Fault:
    kind: str                  # process_died | unloaded | not_answering | store_unavailable
    models: list[str]          # the stage models to load again (the ensemble is always reloaded)
    detail: str
    kill: bool = False         # kill the stages' processes first (hung)


@dataclass
class _TenantWatch:
    misses: int = 0            # probes in a row without an answer
    retry_at: float = 0.0
    health: dict = field(default_factory=lambda: {"state": "ok"})


def stub_processes(triton_pid: int | None) -> dict[str, list[int]]:
    """Model name -> pids of its live python-backend stub processes (children of ``triton_pid``). A stub's command
    line is `triton_python_backend_stub <repo>/<model>/<version>/model.py ...`; a dead one has none (a zombie)."""
    found: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[1]) != triton_pid:
                continue
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if len(cmd) > 1 and cmd[0].endswith(b"triton_python_backend_stub"):
            found.setdefault(Path(cmd[1].decode("utf-8", "replace")).parents[1].name, []).append(int(proc.name))
    return found


def probe(server: dict, tenant: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """One cold-user request through the tenant's five stages with the admin key, each HTTP call bounded by
    ``timeout``: "ok", "fallback: ..." when it was answered without the online store (STRATEGY fallback_*), or why
    it failed, as status.probe_inference words it ("HTTP 500: ...", "no answer: timed out", ...)."""
    url, model = server["http_url"], _expected(tenant, server["tenants"][tenant])[0]
    headers = admin_headers(server.get("admin_key"))
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{url}/v2/models/{model}", headers=headers),
                                    timeout=timeout) as resp:
            inputs = {i["name"]: i["shape"] for i in json.load(resp).get("inputs", [])}
        shape = [1, 1] if len(inputs.get("TENANT", [1])) == 2 else [1]
        body = {"inputs": [{"name": n, "datatype": d, "shape": shape, "data": [v]} for n, d, v in (
            ("TENANT", "BYTES", tenant), ("USER_ID", "BYTES", st.PROBE_USER), ("K", "INT32", 1),
            ("EXCLUDE_ITEM_IDS", "BYTES", ""))], "outputs": [{"name": "STRATEGY"}]}
        request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **headers}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            strategy = str(json.load(resp)["outputs"][0]["data"][0])
    except urllib.error.HTTPError as e:
        try:
            return f"HTTP {e.code}: {json.load(e).get('error', '')}"
        except ValueError:
            return f"HTTP {e.code}"
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        return f"no answer: {e}"
    if strategy.startswith("fallback"):
        return f"fallback: the online store is unavailable (STRATEGY {strategy})"
    return "ok"


def _expected(tenant: str, info: dict) -> tuple[str, list[str]]:
    """(the tenant's ensemble, the models it calls): `<t>__recommend` on a multi-tenant server, `recommend` alone;
    its stage models, and while an A/B experiment runs every arm's stage models, the router and the arm ensembles
    (tapestry.serving.experiment)."""
    return (info.get("model_name") or model_name(tenant, ENSEMBLE),
            list(info.get("stage_models", [])) + list(info.get("arm_ensembles", [])))


def structural_fault(tenant: str, info: dict, ready: set[str], stubs: dict[str, list[int]]) -> Fault | None:
    """A stage whose process died, or a model of the tenant that is not loaded; None if neither."""
    ensemble, stages = _expected(tenant, info)
    python = set(info.get("stage_models", []))   # an arm ensemble has no process of its own
    dead = [m for m in stages if m in python and m in ready and not stubs.get(m)]
    if dead:
        return Fault("process_died", dead, f"the process of {', '.join(dead)} is gone (killed or crashed)")
    missing = [m for m in stages if m not in ready]
    if missing or ensemble not in ready:
        return Fault("unloaded", missing, f"not loaded: {', '.join(missing + ([ensemble] * (ensemble not in ready)))}")
    return None


def probe_fault(tenant: str, info: dict, answer: str) -> Fault | None:
    """What a probe's answer (status.probe_inference) says about the tenant; None when it passed."""
    _, stages = _expected(tenant, info)
    if answer == "ok":
        return None
    dead = re.search(r"Stub process '(.+?)_\d+_\d+' is not healthy", answer)
    if dead and dead.group(1) in stages:
        return Fault("process_died", [dead.group(1)], answer)
    if answer.startswith("HTTP 404"):
        return Fault("unloaded", [], answer)
    if answer.startswith("no answer"):
        return Fault("not_answering", stages, answer, kill=True)
    if "online store" in answer or answer.startswith("HTTP 503"):
        return Fault("store_unavailable", [], answer)
    return Fault("unknown", [], answer)


@contextlib.contextmanager
def try_locked(root: Path | None, path: Path | None = None):
    """The server's lock (model_control.locked; or the file ``path``) if free now, else None: a swap or a stop is
    under way."""
    path = path or server_dir(root) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def heal(server: dict, tenant: str, fault: Fault, log=print) -> float:
    """Load ``tenant``'s serving export again in the running server (the caller holds the server's lock); returns
    the seconds it took. Raises with Triton's message when a load fails."""
    t0 = time.perf_counter()
    control = ModelControl.of(server)
    ensemble, stages = _expected(tenant, server["tenants"][tenant])
    reload = [m for m in stages if m in fault.models] if fault.models else []
    control.quietly("unload_model", [ensemble])   # its requests now fail at once, its readiness is false
    if fault.kill:
        for name, pids in stub_processes(server.get("triton_pid")).items():
            if name in stages:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    if reload:
        control.quietly("unload_model", reload)
        control.load(reload)
    missing = [m for m in stages if m not in control.ready_models()]
    if missing:                                   # unloaded behind our back (or by Triton with a dependency)
        control.load(missing)
    if ensemble not in control.ready_models():    # Triton loads it again with its stages, most often
        control.load([ensemble])
    return time.perf_counter() - t0


def repair(server: dict, tenant: str, log=print, with_probe: bool = True) -> str | None:
    """Diagnose ``tenant`` and heal it if broken (the caller holds the lock: `tapestry swap` on the export already
    served); returns what was repaired, or None when nothing was wrong."""
    info = server["tenants"][tenant]
    control = ModelControl.of(server)
    fault = structural_fault(tenant, info, control.ready_models(), stub_processes(server.get("triton_pid")))
    if fault is None and with_probe:
        fault = probe_fault(tenant, info, probe(server, tenant))
        if fault is not None and fault.kind in ("store_unavailable", "unknown"):
            return None                           # not something a reload fixes
    if fault is None:
        return None
    took = heal(server, tenant, fault, log)
    return f"{fault.detail}: reloaded {info['export_version']} in {took:.1f}s"


class Supervisor(threading.Thread):
    """``Supervisor(root).start()`` in the serving process; ``stop()`` ends it. Reads the server's state file at
    every round, so tenants added, swapped or removed by other `tapestry` commands are followed."""

    def __init__(self, root: Path | None = None, interval: float = PROBE_INTERVAL_S,
                 probe_timeout: float = PROBE_TIMEOUT_S, log=print, tenant: str | None = None):
        """``tenant``: a one-tenant server (`tapestry serve --tenant T`, its serve.json: ensemble `recommend`);
        without it the multi-tenant server of ``root`` (_server/server.json)."""
        super().__init__(name="tapestry-supervisor", daemon=True)
        self.root, self.interval, self.probe_timeout, self._log = root, interval, probe_timeout, log
        self.tenant = tenant
        self._lock_path = st.state_path(tenant, root).with_name("serve.lock") if tenant else None
        self._stop = threading.Event()
        self._watch: dict[str, _TenantWatch] = {}
        self.events: list[dict] = []              # what happened, for tests and benchmarks

    def log(self, text: str) -> None:
        self._log(f"[supervisor] {time.strftime('%H:%M:%S')} {text}")

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - the supervisor never dies of one bad round
                self.log(f"round failed: {type(e).__name__}: {e}")

    def _state(self) -> dict:
        """The server's state as the multi-tenant server.json has it (a one-tenant serve.json: its only tenant)."""
        if self.tenant is None:
            return st.read_state(server_state_path(self.root)) or {}
        state = st.read_state(st.state_path(self.tenant, self.root)) or {}
        return {**state, "tenants": {self.tenant: state}} if state else {}

    def _save(self, state: dict) -> None:
        if self.tenant is None:
            save_state(self.root, state)
        else:
            st.write_state(st.state_path(self.tenant, self.root), state["tenants"][self.tenant])

    def check(self) -> None:
        """One round: every tenant the state file lists."""
        server = self._state()
        if not server or server.get("pid") != os.getpid():
            return                                # not (or no longer) this process's server
        control = ModelControl.of(server)
        try:
            ready = control.ready_models()
        except Exception as e:  # noqa: BLE001 - Triton itself not answering: nothing to reload
            self.log(f"Triton's repository index does not answer: {error_text(e)}")
            return
        stubs = stub_processes(server.get("triton_pid"))
        for tenant, info in server.get("tenants", {}).items():
            watch = self._watch.setdefault(tenant, _TenantWatch())
            fault = structural_fault(tenant, info, ready, stubs)
            if fault is None:
                fault = probe_fault(tenant, info, probe(server, tenant, self.probe_timeout))
                watch.misses = watch.misses + 1 if fault is not None and fault.kind == "not_answering" else 0
                if fault is not None and fault.kind == "not_answering" and watch.misses < HUNG_AFTER:
                    continue                      # one slow probe on a busy machine is not a hang yet
            if fault is None:
                self._set_health(tenant, watch, "ok", "")
            elif fault.kind in ("store_unavailable", "unknown"):
                self._set_health(tenant, watch, "degraded", fault.detail)
            elif time.monotonic() >= watch.retry_at:
                self._heal(tenant, watch, fault)

    def _heal(self, tenant: str, watch: _TenantWatch, fault: Fault) -> None:
        with try_locked(self.root, self._lock_path) as got:
            if not got:
                return                            # a swap or stop holds the lock: look again next round
            server = self._state()
            info = server.get("tenants", {}).get(tenant)
            if info is None or server.get("pid") != os.getpid():
                return
            control = ModelControl.of(server)
            if fault.kind != "not_answering":     # what the state says now (a swap may just have changed it):
                fault = (structural_fault(tenant, info, control.ready_models(), stub_processes(server.get("triton_pid")))
                         or probe_fault(tenant, info, probe(server, tenant, self.probe_timeout)))
                if fault is None or fault.kind in ("store_unavailable", "unknown", "not_answering"):
                    return                        # seen between a swap's steps, gone now: nothing to reload
            detected = time.time()
            self.log(f"tenant {tenant} broken ({fault.kind}): {fault.detail}; reloading {info['export_version']}")
            self._set_health(tenant, watch, "healing", f"{fault.kind}: {fault.detail}", server)
            try:
                took = heal(server, tenant, fault, self.log)
                answer = self._first_answer(server, tenant)
            except Exception as e:  # noqa: BLE001 - logged, tried again
                watch.retry_at = time.monotonic() + RETRY_AFTER_S
                self.log(f"tenant {tenant}: repair failed, next try in {RETRY_AFTER_S:.0f}s: {error_text(e)}")
                self._set_health(tenant, watch, "broken", f"{fault.kind}: repair failed: {error_text(e)}", server)
                self.events.append({"tenant": tenant, "kind": fault.kind, "at": detected, "healed": False})
                return
            watch.misses, watch.retry_at = 0, 0.0
            self.log(f"tenant {tenant} healed: {info['export_version']} reloaded in {took:.1f}s, first answer "
                     f"{answer}")
            self._set_health(tenant, watch, "ok", "", server,
                             last_repair={"kind": fault.kind, "detail": fault.detail, "seconds": round(took, 2),
                                          "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            self.events.append({"tenant": tenant, "kind": fault.kind, "at": detected, "healed": True,
                                "seconds": took})

    def _first_answer(self, server: dict, tenant: str) -> str:
        deadline, answer = time.monotonic() + HEALED_PROBE_S, ""
        while time.monotonic() < deadline:
            answer = probe(server, tenant, self.probe_timeout)
            if answer == "ok" or answer.startswith("fallback"):
                return answer
            time.sleep(0.1)   # the reloaded ensemble's first request: polling, not timing
        raise RuntimeError(f"reloaded, but the probe still fails: {answer}")

    def _set_health(self, tenant: str, watch: _TenantWatch, state: str, detail: str, server: dict | None = None,
                    **extra) -> None:
        """Record a change of the tenant's health in the state files (under the lock: the caller's, or taken
        here when free; a busy lock only delays the record to the next round)."""
        if watch.health.get("state") == state and watch.health.get("detail", "") == detail and not extra:
            return
        health = {**{k: v for k, v in watch.health.items() if k == "last_repair"}, **extra, "state": state,
                  "detail": detail, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if state == "degraded" and watch.health.get("state") != "degraded":
            self.log(f"tenant {tenant} degraded (nothing to reload): {detail}")
        elif state == "ok" and watch.health.get("state") == "degraded":
            self.log(f"tenant {tenant} answers normally again")

        def write(current: dict) -> None:
            if tenant in current.get("tenants", {}) and current.get("pid") == os.getpid():
                current["tenants"][tenant]["health"] = health
                self._save(current)
                watch.health = health
        if server is not None:
            write(server)
            return
        with try_locked(self.root, self._lock_path) as got:
            if got:
                write(self._state())
