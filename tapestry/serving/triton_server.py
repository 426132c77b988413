"""Start and stop the real ``tritonserver`` binary bundled in the ``nvidia-pytriton`` wheel (CPU hosts).

GPU hosts run the NGC Triton container instead; this launcher is for the local binary. See
``/work/shared/notes/triton-on-cpu.md`` for the facts it is built on.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
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
_LIVE: set["TritonServer"] = set()
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
    """Locate the tritonserver binary, python backend and stub inside the installed ``pytriton`` package."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "nvidia-pytriton is not installed (no 'pytriton' package); `pip install nvidia-pytriton==0.7.0`"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    major, minor = python_version or sys.version_info[:2]
    bundle = TritonBundle(
        binary=root / "bin" / "tritonserver",
        python_backend_lib=root / "backends" / "python" / "libtriton_python.so",
        backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=root / "python_backend_stubs" / f"{major}.{minor}" / "triton_python_backend_stub",
        libs_dir=(pkg.parent / "nvidia_pytriton.libs") if (pkg.parent / "nvidia_pytriton.libs").is_dir() else None,
    )
    if not bundle.stub.is_file():
        stubs = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise TritonServerError(
            f"nvidia-pytriton at {pkg} has no python backend stub for Python {major}.{minor} "
            f"(expected {bundle.stub}; available: {', '.join(stubs) or 'none'})"
        )
    for what in (bundle.binary, bundle.python_backend_lib, bundle.backend_utils):
        if not what.is_file():
            raise TritonServerError(f"nvidia-pytriton at {pkg} is incomplete: missing {what}")
    return bundle


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (the sockets are held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


class TritonServer:
    """A local ``tritonserver`` process serving ``model_repository``.

    >>> with TritonServer("model_repository") as server:   # doctest: +SKIP
    ...     RecommendClient(server.http_url).recommend("t1", "u1")
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: str | os.PathLike | None = None,
        exit_timeout_secs: int = 10,
        disable_auto_complete_config: bool = True,
        model_control_mode: str = "none",
        load_models: Sequence[str] | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        if model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(f"model_control_mode must be none|explicit|poll, not {model_control_mode!r}")
        self.model_repository = Path(model_repository).resolve()
        self._port_args = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._ports = dict(self._port_args)
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self.exit_timeout_secs = int(exit_timeout_secs)
        self.disable_auto_complete_config = disable_auto_complete_config
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models) if load_models is not None else ["*"]
        self.log_verbose = int(log_verbose)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self._proc: subprocess.Popen | None = None
        self._tmpdir: Path | None = None
        self._log_path: Path | None = self._log_path_arg
        self._log_offset = 0
        self._shm_prefix = ""
        self._shm_before: set[str] = set()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties
    def _port(self, kind: str) -> int:
        port = self._ports[kind]
        if port is None:
            raise TritonServerError("server not started: no port chosen yet")
        return port

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self._port('http')}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self._port('grpc')}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self._port('metrics')}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._exited()

    # ------------------------------------------------------------------ lifecycle
    def _command(self, backend_dir: Path) -> list[str]:
        cmd = [
            str(self._bundle.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            "--http-address=127.0.0.1", f"--http-port={self._ports['http']}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self._ports['grpc']}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self._ports['metrics']}",
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_secs}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.disable_auto_complete_config:
            cmd.append("--disable-auto-complete-config")
        if self.model_control_mode == "explicit":
            cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd + self.extra_args

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub's embedded interpreter finds its prefix through `python3` on PATH: the venv must come first.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]).rstrip(os.pathsep)
        libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(self._bundle.libs_dir or "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [env.get("LD_LIBRARY_PATH", "")])
        env["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"].rstrip(os.pathsep)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> "TritonServer":
        """Start the server and wait until ``/v2/health/ready`` answers 200; raise with the log tail on failure."""
        with self._lock:
            if self._proc is not None:
                raise TritonServerError(f"server already started (pid {self._proc.pid})")
            if not self.model_repository.is_dir():
                raise TritonServerError(f"model repository {self.model_repository} is not a directory")
            self._bundle = find_triton_bundle()
            self._tmpdir = Path(tempfile.mkdtemp(prefix="tapestry-triton-"))
            backend_dir = self._tmpdir / "backends"
            (backend_dir / "python").mkdir(parents=True)
            for src in (self._bundle.python_backend_lib, self._bundle.backend_utils, self._bundle.stub):
                (backend_dir / "python" / src.name).symlink_to(src)
            free = iter(free_ports(3))
            self._ports = {k: (v if v is not None else next(free)) for k, v in self._port_args.items()}
            self._log_path = self._log_path_arg or self._tmpdir / "tritonserver.log"
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._shm_prefix = f"{SHM_PREFIX}tapestry{os.getpid()}-{secrets.token_hex(4)}-"
            self._shm_before = set(glob.glob(os.path.join(SHM_DIR, SHM_PREFIX + "*")))
            try:
                with open(self._log_path, "ab") as log:
                    self._log_offset = log.tell()
                    self._proc = subprocess.Popen(
                        self._command(backend_dir), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env=self._environ(), cwd=self._tmpdir, start_new_session=True,
                    )
            except BaseException:
                self.stop()
                raise
            with _LIVE_LOCK:
                _LIVE.add(self)
        deadline = time.monotonic() + timeout
        ready_url = f"http://{self.http_url}/v2/health/ready"
        try:
            self._wait_ready(ready_url, deadline, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready_url: str, deadline: float, timeout: float) -> None:
        while True:
            if self._exited():
                proc, tail = self._proc, self.log_tail()
                self.stop()
                code = proc.returncode if proc is not None else None
                raise TritonServerError(f"tritonserver exited during startup (exit code {code}); log tail:\n{tail}")
            if _http_status(ready_url, timeout=0.5) == 200:
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise TritonServerError(f"tritonserver not ready after {timeout:.0f}s; log tail:\n{tail}")
            time.sleep(0.05)

    def _exited(self) -> bool:
        """True once the server process has exited, *without* reaping it (its pid/pgid stay reserved)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _wait_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait (bounded, default exit_timeout_secs + 5 s), then SIGKILL the process group. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                try:
                    if not self._exited():
                        os.kill(proc.pid, signal.SIGTERM)
                        self._wait_exited(self.exit_timeout_secs + 5 if timeout is None else timeout)
                    if proc.returncode is None:
                        # Not reaped yet, so the pgid is still reserved: this reaches only our server (if stuck)
                        # and stub processes it left behind.
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass
                        proc.wait(timeout=30)
                finally:
                    self._proc = None
                    with _LIVE_LOCK:
                        _LIVE.discard(self)
            self._remove_shm()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _remove_shm(self) -> None:
        if not self._shm_prefix:
            return
        for path in glob.glob(os.path.join(SHM_DIR, glob.escape(self._shm_prefix) + "*")):
            if path not in self._shm_before:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def model_ready(self, name: str, version: str | int | None = None) -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        return _http_status(f"http://{self.http_url}{path}") == 200

    def log_tail(self, max_chars: int = 6000) -> str:
        """The end of this run's server log (what it wrote since the last start)."""
        if self._log_path is None or not self._log_path.exists():
            return "<no log>"
        with open(self._log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(self._log_offset, size - max_chars))
            return f.read().decode("utf-8", "replace")

    def __repr__(self) -> str:
        state = f"pid={self.pid}, http={self.http_url}" if self._proc is not None else "stopped"
        return f"TritonServer({str(self.model_repository)!r}, {state})"


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        try:
            server.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
