"""Steady client load for the swap and experiment tests: one client per protocol (HTTP, gRPC), each in its own
thread, sending requests in a loop. Each result is recorded (by ``record``) with the phase that was current when
the request was SENT; `wait(n)` returns once every client has finished n more requests."""
import threading

from tapestry.serving.client import RecommendClient, RecommendError, ensemble_name


class Load:
    def __init__(self, server, tenant: str, users: list[str], record, first: int = 10, timeout: float = 120):
        """``record(phase, protocol, user, result)``: the entry kept in ``results`` for an answer; a failed request
        is kept in ``errors`` the same way with the error text as ``result``."""
        self.tenant, self.users, self.record, self.first, self.timeout = tenant, users, record, first, timeout
        self.phase, self.results, self.errors = "before", [], []
        self._stop, self._cond, self._done = threading.Event(), threading.Condition(), {}
        self.threads = [threading.Thread(target=self._run, args=(p, u), daemon=True)
                        for p, u in (("http", server.http_url), ("grpc", server.grpc_url))]

    def _run(self, protocol: str, url: str) -> None:
        with RecommendClient(url, protocol=protocol, model_name=ensemble_name(self.tenant, multi_tenant=True)) as client:
            i = 0
            while not self._stop.is_set():
                user, phase = self.users[i % len(self.users)], self.phase
                try:
                    self.results.append(self.record(phase, protocol, user, client.recommend(self.tenant, user, k=10)))
                except RecommendError as e:
                    self.errors.append(self.record(phase, protocol, user, str(e)))
                i += 1
                with self._cond:
                    self._done[protocol] = i
                    self._cond.notify_all()

    def wait(self, n: int) -> None:
        with self._cond:
            start = dict(self._done)
            assert self._cond.wait_for(lambda: all(self._done.get(p, 0) >= start.get(p, 0) + n
                                                   for p in ("http", "grpc")), timeout=self.timeout)

    def __enter__(self):
        for t in self.threads:
            t.start()
        self.wait(self.first)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self.threads:
            t.join(timeout=30)
