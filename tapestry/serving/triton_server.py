"""Start and stop the real ``tritonserver`` binary bundled in the ``nvidia-pytriton`` wheel (CPU hosts).

GPU hosts run the NGC Triton container instead; this launcher is for the local binary only.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

SHM_DIR = "/dev/shm"
SHM_PREFIX = "triton_python_backend_shm_region_"
_LIVE: set["TritonServer"] = set()  # started and not yet stopped; stopped at interpreter exit
_LIVE_LOCK = threading.Lock()


class TritonServerError(RuntimeError):
    """The server could not be located, started or stopped."""


@dataclass(frozen=True)
class TritonBundle:
    binary: Path
    python_backend_lib: Path  # libtriton_python.so
    backend_utils: Path  # triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for one Python version
    libs_dir: Path | None  # site-packages/nvidia_pytriton.libs


def find_triton_bundle(python_version: tuple[int, int] | None = None) -> TritonBundle:
    """Locate the binary, the python backend and the stub inside the installed ``pytriton`` package."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed (no 'pytriton' package): pip install nvidia-pytriton")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root, (major, minor) = pkg / "tritonserver", python_version or sys.version_info[:2]
    libs = pkg.parent / "nvidia_pytriton.libs"
    bundle = TritonBundle(
        binary=root / "bin" / "tritonserver",
        python_backend_lib=root / "backends" / "python" / "libtriton_python.so",
        backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=root / "python_backend_stubs" / f"{major}.{minor}" / "triton_python_backend_stub",
        libs_dir=libs if libs.is_dir() else None,
    )
    if not bundle.stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise TritonServerError(
            f"nvidia-pytriton at {pkg} has no python backend stub for Python {major}.{minor} "
            f"(expected {bundle.stub}; available: {', '.join(have) or 'none'})"
        )
    for path in (bundle.binary, bundle.python_backend_lib, bundle.backend_utils):
        if not path.is_file():
            raise TritonServerError(f"nvidia-pytriton at {pkg} is incomplete: {path} is missing")
    return bundle


LOOPBACK = "127.0.0.1"
WILDCARD = "0.0.0.0"


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free TCP ports on ``host`` (the sockets are held together so the ports differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_port_free(host: str, port: int, kind: str) -> None:
    """Raise if ``port`` cannot be bound on ``host`` now. Without this, a server already on that port would answer
    our readiness check and `start()` would report someone else's server as ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise TritonServerError(f"cannot use {kind} port {port} on {host}: {e.strerror or e}") from None


def connect_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host``: the wildcard address is reached over loopback."""
    return LOOPBACK if host in (WILDCARD, "") else host


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _accepting(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


class TritonServer:
    """A local ``tritonserver`` process on ``model_repository``; ``with TritonServer(repo) as s: ... s.http_url``.

    HTTP, gRPC and metrics listen on ``host`` (an IPv4 address of this machine; loopback by default, so nothing
    outside this machine can reach the server unless asked: ``"0.0.0.0"`` listens on every interface); metrics on
    ``metrics_host`` when given (its per-model counters name every model: `tapestry serve` keeps it on loopback
    off-loopback). Ports are
    picked free at each ``start()`` unless given. ``model_control_mode="explicit"`` loads
    ``load_models`` (default ``["*"]``) at startup. The log goes to ``log_path`` (default: inside the server's
    temp dir, which ``stop()`` removes).
    """

    def __init__(
        self, model_repository: str | os.PathLike, *, host: str = LOOPBACK, http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None, log_path: str | os.PathLike | None = None, exit_timeout_secs: int = 10,
        disable_auto_complete_config: bool = True, model_control_mode: str = "none",
        load_models: Sequence[str] | None = None, log_verbose: int = 0, extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None, metrics_host: str | None = None,
    ) -> None:
        if model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(f"model_control_mode must be none, explicit or poll, not {model_control_mode!r}")
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.metrics_host = metrics_host or host
        self._port_args = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._ports = dict(self._port_args)
        self._log_arg = Path(log_path) if log_path is not None else None
        self._log_path, self._log_offset = self._log_arg, 0
        self.exit_timeout_secs = int(exit_timeout_secs)
        self.disable_auto_complete_config = disable_auto_complete_config
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models) if load_models is not None else ["*"]
        self.log_verbose, self.extra_args, self.extra_env = int(log_verbose), list(extra_args), dict(env or {})
        self._proc: subprocess.Popen | None = None
        self._tmpdir: Path | None = None
        self._shm_prefix, self._shm_before = "", set()
        self._lock = threading.RLock()

    def _url(self, kind: str) -> str:
        if self._ports[kind] is None:
            raise TritonServerError("server not started: no port chosen yet")
        return f"{connect_host(self.metrics_host if kind == 'metrics' else self.host)}:{self._ports[kind]}"

    http_url = property(lambda self: self._url("http"), doc='"<host>:<port>" (127.0.0.1 for host 0.0.0.0)')
    grpc_url = property(lambda self: self._url("grpc"), doc='"<host>:<port>"')
    metrics_url = property(lambda self: self._url("metrics"), doc='"<host>:<port>" (GET /metrics)')
    ports = property(lambda self: dict(self._ports), doc="{'http': port, 'grpc': port, 'metrics': port}")

    pid = property(lambda self: self._proc.pid if self._proc is not None else None, doc="server pid (None if stopped)")
    log_path = property(lambda self: self._log_path, doc="the server's log file (stdout + stderr)")
    running = property(lambda self: self._proc is not None and not self._exited(), doc="started and not exited")

    def _command(self, bundle: TritonBundle, backend_dir: Path) -> list[str]:
        p, host = self._ports, self.host
        cmd = [
            str(bundle.binary), f"--model-repository={self.model_repository}", f"--backend-directory={backend_dir}",
            f"--http-address={host}", f"--http-port={p['http']}", f"--grpc-address={host}",
            f"--grpc-port={p['grpc']}", f"--metrics-address={self.metrics_host}", f"--metrics-port={p['metrics']}",
            "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_secs}", f"--model-control-mode={self.model_control_mode}",
            # A prefix of our own makes the python backend's /dev/shm regions unambiguously ours to clean up.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.disable_auto_complete_config:
            cmd.append("--disable-auto-complete-config")
        if self.model_control_mode == "explicit":
            cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd + self.extra_args

    def _environ(self, bundle: TritonBundle) -> dict[str, str]:
        env = dict(os.environ)
        # The stub's embedded interpreter finds its prefix through `python3` on PATH: our interpreter's bin first.
        env["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(sys.executable), env.get("PATH")]))
        libdirs = [sysconfig.get_config_var("LIBDIR"), str(bundle.libs_dir or ""), env.get("LD_LIBRARY_PATH")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, libdirs))
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> "TritonServer":
        """Start and wait until ``GET /v2/health/ready`` is 200; on failure stop and raise with the log tail."""
        with self._lock:
            if self._proc is not None:
                raise TritonServerError(f"server already started (pid {self._proc.pid})")
            if not self.model_repository.is_dir():
                raise TritonServerError(f"model repository {self.model_repository} is not a directory")
            bundle = find_triton_bundle()
            try:
                self._tmpdir = Path(tempfile.mkdtemp(prefix="tapestry-triton-"))
                backend_dir = self._tmpdir / "backends"
                (backend_dir / "python").mkdir(parents=True)
                for src in (bundle.python_backend_lib, bundle.backend_utils, bundle.stub):
                    (backend_dir / "python" / src.name).symlink_to(src)
                for kind, port in self._port_args.items():
                    if port is not None:
                        check_port_free(self.metrics_host if kind == "metrics" else self.host, port, kind)
                try:
                    free = iter(free_ports(3, self.host))
                except OSError as e:  # not an address of this machine, or not an IPv4 address
                    raise TritonServerError(f"cannot listen on host {self.host!r}: {e.strerror or e}") from None
                self._ports = {k: (v if v is not None else next(free)) for k, v in self._port_args.items()}
                self._log_path = self._log_arg or self._tmpdir / "tritonserver.log"
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                self._shm_prefix = f"{SHM_PREFIX}tapestry{os.getpid()}-{secrets.token_hex(4)}-"
                self._shm_before = set(glob.glob(os.path.join(SHM_DIR, SHM_PREFIX + "*")))
                with open(self._log_path, "ab") as log:
                    self._log_offset = log.tell()
                    self._proc = subprocess.Popen(
                        self._command(bundle, backend_dir), stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env=self._environ(bundle), cwd=self._tmpdir, start_new_session=True,
                    )
                with _LIVE_LOCK:
                    _LIVE.add(self)
            except BaseException:
                self.stop()
                raise
        try:
            self._wait_ready(f"http://{self.http_url}/v2/health/ready", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready_url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._exited():
                proc, report = self._proc, self._failure_report()
                self.stop()  # reaps it
                raise TritonServerError(f"tritonserver exited during startup (exit code {proc.returncode}){report}")
            # Ready means every endpoint answers: Triton reports HTTP ready before its metrics port is bound (seen
            # once in CI on a busy machine), and a client may use any of the three first.
            if http_status(ready_url, timeout=0.5) == 200 and all(
                    _accepting(url) for url in (self.grpc_url, self.metrics_url)):
                return
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver not ready after {timeout:g} s{self._failure_report()}")
            time.sleep(0.05)

    def _exited(self) -> bool:
        """Whether the process has exited, *without* reaping it, so its pid and process group stay reserved."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait up to ``timeout`` (default exit_timeout_secs + 5 s), then SIGKILL. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                try:
                    if not self._exited():
                        os.kill(proc.pid, signal.SIGTERM)
                        deadline = time.monotonic() + (self.exit_timeout_secs + 5 if timeout is None else timeout)
                        while not self._exited() and time.monotonic() < deadline:
                            time.sleep(0.02)
                    if proc.returncode is None:
                        # Not reaped yet, so its process group id is still ours: this reaches only the server
                        # (if stuck) and any stub process it left behind.
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=30)
                finally:
                    self._proc = None
                    with _LIVE_LOCK:
                        _LIVE.discard(self)
            if self._shm_prefix:  # only regions with this run's own prefix that were not there before it
                for path in set(glob.glob(os.path.join(SHM_DIR, glob.escape(self._shm_prefix) + "*"))):
                    if path not in self._shm_before:
                        with contextlib.suppress(OSError):
                            os.unlink(path)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def model_ready(self, name: str, version: str | int | None = None) -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        return http_status(f"http://{self.http_url}{path}") == 200

    def log_text(self) -> str:
        """This run's server log (since the last ``start()``)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        with open(self._log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of this run's log, with table borders dropped and runs of spaces collapsed."""
        lines = [re.sub(r"  +", " ", ln.rstrip()) for ln in self.log_text().splitlines()]
        return "\n".join(ln for ln in lines if not re.fullmatch(r"\+[-+]*", ln))[-max_chars:]

    def _failure_report(self) -> str:
        errors = [ln[:800] for ln in self.log_text().splitlines() if re.match(r"E\d{4} ", ln)]
        errors = [ln for ln in errors if "CudaDriverHelper" not in ln]  # printed by every start without a GPU
        report = "\nerrors in the log:\n" + "\n".join(errors) if errors else ""
        where = f" ({self._log_path})" if self._log_arg else ""
        return f"{report}\nlog tail{where}:\n{self.log_tail()}"


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            server.stop(timeout=5)
