"""What `tapestry serve` runs, per tenant: the state file it writes, and the checks `tapestry status` makes.

`tapestry serve` writes <root>/<tenant>/serve.json once Triton is ready and removes it when it stops. A state file
can outlive its process (kill -9, a reboot), and a pid can be reused by an unrelated process: so a pid is trusted
or signalled only while its start time is still the one the file recorded.
"""
from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from pathlib import Path

from tapestry.artifacts import atomic_write_json, tenant_dir
from tapestry.config import artifacts_root
from tapestry.serving.auth import admin_headers, key_summary
from tapestry.serving.triton_server import http_status

STATE_FILE = "serve.json"
PROBE_USER = "tapestry-status-probe"  # an id no tenant has: the probe is a cold-user request through all stages


def state_path(tenant: str, root: Path | None = None) -> Path:
    return tenant_dir(tenant, root) / STATE_FILE


def write_state(path: Path, state: dict) -> None:
    atomic_write_json(path, state)


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written by hand: treated as stale


def process_start(pid) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), or None if no such process. A pid
    and its start time name one process: a reused pid has another start time."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, TypeError, ValueError, IndexError):
        return None


def is_serve_process(state: dict) -> bool:
    """Whether the state's pid is still the process that wrote it (not merely some process with that pid)."""
    started = process_start(state.get("pid"))
    return started is not None and started == state.get("pid_start")


def live_state(tenant: str, root: Path | None = None) -> dict | None:
    """The state of the running server for ``tenant``, or None when none runs (a stale file is not a server)."""
    state = read_state(state_path(tenant, root))
    return state if state and is_serve_process(state) else None


def _proc_address(hex_addr: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words, each little-endian) -> text; an IPv4-mapped IPv6
    address (how gRPC binds an IPv4 host) is written as the IPv4 address."""
    raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    addr = ipaddress.ip_address(raw)
    return str(getattr(addr, "ipv4_mapped", None) or addr)


def listening_addresses(port: int) -> list[str]:
    """Local addresses with a socket listening on TCP ``port`` (Linux /proc/net): what a server actually bound,
    e.g. ['127.0.0.1'] (this machine only) or ['0.0.0.0'] (every interface)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                found.add(_proc_address(addr))
    return sorted(found)


def probe_inference(http_url: str, tenant: str, timeout: float = 10.0, model: str = "recommend",
                    headers: dict | None = None) -> str:
    """"ok" when a real request passes through every stage; else why not. Readiness alone is not enough: a crashed
    python-backend stub is not restarted and its model keeps reporting READY. The model's metadata says whether it
    is batched (then every tensor has a leading batch dimension: one user is [1, 1]). ``headers``: the admin key's
    (tapestry.serving.auth.admin_headers), which every stage accepts for any tenant when keys are on."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}", timeout=timeout) as resp:
            inputs = {i["name"]: i["shape"] for i in json.load(resp).get("inputs", [])}
        shape = [1, 1] if len(inputs.get("TENANT", [1])) == 2 else [1]
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: no metadata for model {model!r}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"no answer: {e}"
    body = {"inputs": [
        {"name": "TENANT", "datatype": "BYTES", "shape": shape, "data": [tenant]},
        {"name": "USER_ID", "datatype": "BYTES", "shape": shape, "data": [PROBE_USER]},
        {"name": "K", "datatype": "INT32", "shape": shape, "data": [1]},
        {"name": "EXCLUDE_ITEM_IDS", "datatype": "BYTES", "shape": shape, "data": [""]},
    ]}
    request = urllib.request.Request(f"http://{http_url}/v2/models/{model}/infer", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            json.load(resp)
            return "ok"
    except urllib.error.HTTPError as e:
        try:
            return f"HTTP {e.code}: {json.load(e).get('error', '')}"
        except ValueError:
            return f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        return f"no answer: {e}"


def server_status(tenant: str, root: Path | None = None, timeout: float = 2.0) -> dict | None:
    """What runs for ``tenant``: the state file's facts plus live checks; None when there is no state file."""
    state = read_state(state_path(tenant, root))
    if state is None:
        return None
    status = {"tenant": tenant, **state}
    admin_key = status.pop("admin_key", None)   # never printed (`tapestry status --json`)
    if not is_serve_process(state):
        return {**status, "running": False}
    http = state["http_url"]
    model = state.get("model_name", "recommend")   # <tenant>__recommend on a multi-tenant server
    status.update(
        running=True,
        live=http_status(f"http://{http}/v2/health/live", timeout) == 200,
        ready=http_status(f"http://{http}/v2/health/ready", timeout) == 200,
        model_ready=http_status(f"http://{http}/v2/models/{model}/ready", timeout) == 200,
        listening={kind: listening_addresses(int(state[f"{kind}_port"])) for kind in ("http", "grpc", "metrics")},
    )
    status["inference"] = (probe_inference(http, tenant, timeout=max(timeout, 10.0), model=model,
                                           headers=admin_headers(admin_key)) if status["ready"] else "-")
    status["api_keys"] = key_summary(tenant, root, state)
    return status


def all_statuses(root: Path | None = None, timeout: float = 2.0) -> list[dict]:
    """server_status of every tenant under ``root`` that has a state file."""
    base = Path(root or artifacts_root())
    tenants = sorted(p.parent.name for p in base.glob(f"*/{STATE_FILE}")) if base.is_dir() else []
    return [s for s in (server_status(t, root, timeout) for t in tenants) if s is not None]


def describe(status: dict) -> str:
    """One block of text per tenant, as `tapestry status` prints it."""
    if not status.get("running"):
        return (f"tenant {status['tenant']}: not running (stale state, pid {status.get('pid')} is not a tapestry "
                f"server); `tapestry stop --tenant {status['tenant']}` removes it")

    def yes(flag: bool) -> str:
        return "yes" if flag else "NO"

    listening = status["listening"]
    return "\n".join([
        f"tenant {status['tenant']}: pid {status['pid']} (tritonserver pid {status.get('triton_pid')}), "
        f"host {status['host']}, since {status.get('started_at', '?')}",
        f"  model     export {status.get('export_version')} of {status.get('served_model')} "
        f"(models {status.get('models_version')}): {status.get('export')}",
        "  ports     " + ", ".join(
            f"{kind} {status[f'{kind}_port']} on {'/'.join(listening[kind]) or 'nothing'}"
            for kind in ("http", "grpc", "metrics")),
        *([f"  shared    one multi-tenant Triton for {', '.join(status.get('tenants', []))}; ensemble "
           f"{status['model_name']}, exports served before: {', '.join(status.get('history', [])) or 'none'}"]
          if status.get("multi_tenant") else []),
        *([f"  api keys  {status['api_keys']}"] if status.get("api_keys") else []),
        f"  health    live {yes(status['live'])}, ready {yes(status['ready'])}, recommend model ready "
        f"{yes(status['model_ready'])}, inference {status['inference']}",
        *([supervised(status["health"])] if status.get("health") else []),
    ])


def supervised(health: dict) -> str:
    """The supervisor's view of a tenant (tapestry.serving.supervisor): its state and its last repair."""
    last = health.get("last_repair")
    repaired = (f"; last repair {last['at']}: {last['kind']} ({last['detail']}), reloaded in {last['seconds']}s"
                if last else "")
    detail = f": {health['detail']}" if health.get("detail") else ""
    return f"  supervisor {health['state']} since {health.get('since', '?')}{detail}{repaired}"
