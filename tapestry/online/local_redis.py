"""A throwaway local `redis-server` (tests, trying the Redis store on a laptop): loopback only, a free port, no
persistence (`--save '' --appendonly no`), its own working directory; `with LocalRedis() as r: r.url`.
`LocalRedis(persistent=True)` keeps an append-only file fsynced at every write (`--appendfsync always`), so
`stop()` then `start()` (same port, same directory) brings back everything it acknowledged: what a Redis outage
and restart look like to clients (tests/online/test_redis_faults.py, benchmarks/chaos.py).

Production runs a managed Redis; this only starts the binary the way tests need it, like
tapestry.serving.triton_server does for Triton.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def redis_server_binary() -> str | None:
    """The redis-server on PATH (Debian: /usr/bin/redis-server), or None."""
    found = shutil.which("redis-server")
    return found or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    def __init__(self, directory: Path | None = None, binary: str | None = None, persistent: bool = False):
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="tapestry-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port: int | None = None
        self.persistent = persistent
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "LocalRedis":
        """Start on a free port, or, after a `stop()`, on the port it had (a restart: clients reconnect)."""
        import redis

        restart = self.port is not None
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        for _ in range(1 if restart else 3):   # a free port can be taken before redis binds it: try another
            self.port = self.port if restart else _free_port()
            log = open(self.directory / "redis.log", "ab")
            with log:
                self._proc = subprocess.Popen(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability,
                     "--dir", str(self.directory), "--daemonize", "no"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        client.close()
                        return self
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            client.close()
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
