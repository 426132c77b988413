"""The Redis online store (tapestry.online.store has the contract and the key layout), and what it does when Redis
cannot be reached.

Faults (measured by tests/online/test_redis_faults.py and benchmarks/chaos.py): every call is bounded, a socket
timeout of $TAPESTRY_REDIS_TIMEOUT seconds (default 0.5; `tapestry load-store` uses 30) and a connect timeout of
the same, and a refused or dropped connection, a timeout, or a Redis still loading its data after a restart raises
StoreUnavailable (never redis-py's own errors, never a hang). After a failure the store answers StoreUnavailable at
once, without a network call, for RETRY_AFTER_S (0.5 s), then tries again: while Redis is down, a request costs no
timeout of its own, and once Redis is back the next try after that window succeeds (no restart). A connection that
died under redis-py's pool (Redis restarted) is retried once on a fresh connection before anything fails.
What a caller does with StoreUnavailable: feature_lookup answers without the stored history (its docstring says
how), `tapestry ingest` waits and commits the same batch once Redis is back (tapestry.online.ingest).
"""
from __future__ import annotations

import os
import threading
import time
from urllib.parse import urlsplit

import numpy as np

from tapestry.config import validate_tenant
from tapestry.online.store import (_EMPTY, OffsetConflict, OnlineStore, StoreMetadata, StoreMismatch, StoreNotLoaded,
                                   StoreUnavailable, UserRecord, etl_identity, check_etl_version, group_by_user)

TIMEOUT_ENV = "TAPESTRY_REDIS_TIMEOUT"
DEFAULT_TIMEOUT_S = 0.5
RETRY_AFTER_S = 0.5


# One round trip, atomic on the server: resolve the generation pointer, then read the user in that generation. A
# generation is deleted only after the pointer has moved off it, so a reader never sees a half-written or
# half-deleted one. (The keys are derived inside the script: fine on a single Redis, not on Redis Cluster.)
_READ_USER = """
local gen = redis.call('GET', KEYS[1])
if not gen then return {} end
local prefix = ARGV[1] .. gen .. ':'
local attrs = redis.call('HGET', prefix .. 'attrs', ARGV[2])
if not attrs then return {gen} end
return {gen, attrs, redis.call('LRANGE', prefix .. 'user:' .. ARGV[2], 0, -1),
        redis.call('LRANGE', prefix .. 'types:' .. ARGV[2], 0, -1)}
"""


class _Keys:
    """Every key of one tenant; the tenant is validated first, so it cannot carry `:` or `*` into a key."""

    def __init__(self, tenant: str):
        self.ns = f"tapestry:{validate_tenant(tenant)}:"
        self.pointer = self.ns + "current"
        self.generations = self.ns + "generations"     # zset gen -> creation time (to drop abandoned loads)

    def gen(self, gen: str) -> str:
        return f"{self.ns}{gen}:"

    def user(self, gen: str, uid: str) -> str:
        return f"{self.ns}{gen}:user:{uid}"

    def types(self, gen: str, uid: str) -> str:
        """The user's event-type indices, aligned with user(): only in a generation loaded with types."""
        return f"{self.ns}{gen}:types:{uid}"

    def typed(self, gen: str) -> str:
        """Present when the generation holds event types (an export of a behaviour-aware model)."""
        return f"{self.ns}{gen}:typed"

    def offset(self, source: str) -> str:
        return f"{self.ns}ingest:offset:{source}"


def _ints(raw) -> np.ndarray:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return np.array([int(x) for x in text.split(",") if x], dtype=np.int64)


def _connect(url: str, timeout: float | None = None):
    """A client whose every call is bounded by ``timeout`` seconds (default $TAPESTRY_REDIS_TIMEOUT or 0.5), and
    that retries a command once on a fresh connection when its pooled one was dropped (a restarted Redis)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = float(timeout if timeout is not None else os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 1), retry_on_error=[redis.exceptions.ConnectionError])


def _where(url: str) -> str:
    """host:port of a Redis URL, for messages (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


class _Breaker:
    """Turns redis-py's connection errors and timeouts into StoreUnavailable, and after one answers the next calls
    for RETRY_AFTER_S at once (no network call)."""

    def __init__(self, where: str, tenant: str):
        self.where, self.tenant = where, tenant
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._why = ""
        self._lock = threading.Lock()

    def check(self) -> None:
        if self._down_since is not None and time.monotonic() < self._retry_at:
            raise StoreUnavailable(self._message())

    def _message(self) -> str:
        return (f"the Redis online store at {self.where} (tenant {self.tenant!r}) is unreachable for "
                f"{time.monotonic() - self._down_since:.1f}s: {self._why}")

    def failed(self, error: Exception) -> StoreUnavailable:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            self._retry_at, self._why = now + RETRY_AFTER_S, f"{type(error).__name__}: {error}"
        return StoreUnavailable(self._message())

    def succeeded(self) -> None:
        if self._down_since is not None:
            with self._lock:
                self._down_since = None

    @property
    def down(self) -> bool:
        return self._down_since is not None


def _faults():
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)   # BusyLoadingError is a ConnectionError




class RedisStore(OnlineStore):
    """See the module docstring. `etl_version`: the ETL version this process's indices belong to; None pins the
    version of the generation current at construction (a later generation from another ETL version is refused)."""

    kind = "redis"

    def __init__(self, url: str, tenant: str, etl_version: str | None = None, timeout: float | None = None):
        self.tenant = validate_tenant(tenant)
        self._k = _Keys(tenant)
        self._redis = _connect(url, timeout)
        self._breaker = _Breaker(_where(url), self.tenant)
        self._faults = _faults()
        self._read = self._redis.register_script(_READ_USER)
        self._etl, self._gen, self._meta = None, None, None
        self._typed = False       # the adopted generation keeps event types beside the items
        self._call(self._open, etl_version)

    def _open(self, etl_version: str | None) -> None:
        gen = self._redis.get(self._k.pointer)
        if gen is None and etl_version is not None:
            raise StoreNotLoaded(self._not_loaded())
        if gen is not None and not self._adopt(gen.decode()):
            raise StoreNotLoaded(self._not_loaded())
        if etl_version is not None:
            check_etl_version(self._meta, {"tenant": self.tenant, "etl_version": etl_version})
            self._etl = etl_version

    def _not_loaded(self) -> str:
        return (f"the Redis online store holds nothing for tenant {self.tenant!r}: load an export first "
                f"(`tapestry load-store --tenant {self.tenant} --redis URL`)")

    def _adopt(self, gen: str) -> bool:
        """Switch to generation `gen` after checking its ETL version; False if it vanished meanwhile."""
        raw = self._redis.hgetall(self._k.gen(gen) + "meta")
        if not raw:
            return False
        meta = StoreMetadata(**{k.decode(): v.decode() for k, v in raw.items()})
        if self._etl is None:
            self._etl = meta.etl_version
        elif etl_identity(meta.etl_version) != etl_identity(self._etl):
            raise StoreMismatch(f"the Redis online store of tenant {self.tenant!r} now holds values from ETL version "
                                f"{etl_identity(meta.etl_version)!r} (export {meta.export_version}), but this "
                                f"process serves ETL version {etl_identity(self._etl)!r}: restart it on an export "
                                "of that ETL version")
        self._gen, self._meta = gen, meta
        self._typed = bool(self._redis.exists(self._k.typed(gen)))
        return True

    def _call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` against Redis, its connection faults raised as StoreUnavailable."""
        self._breaker.check()
        try:
            result = fn(*args, **kwargs)
        except self._faults as e:
            raise self._breaker.failed(e) from None
        self._breaker.succeeded()
        return result

    @property
    def unavailable(self) -> bool:
        """Whether the last call found Redis unreachable."""
        return self._breaker.down

    def metadata(self) -> StoreMetadata:
        return self._call(self._metadata)

    def _metadata(self) -> StoreMetadata:
        gen = self._redis.get(self._k.pointer)
        if gen is None:
            raise StoreNotLoaded(self._not_loaded())
        if gen.decode() != self._gen and not self._adopt(gen.decode()):
            return self._metadata()
        return self._meta

    def get(self, user_id: str) -> UserRecord | None:
        return self._call(self._get, user_id)

    def _get(self, user_id: str) -> UserRecord | None:
        for _ in range(5):
            res = self._read(keys=[self._k.pointer], args=[self._k.ns, user_id])
            if not res:
                raise StoreNotLoaded(self._not_loaded())
            gen = res[0].decode()
            if gen != self._gen and not self._adopt(gen):
                continue                      # flipped and dropped between the two calls: read again
            if len(res) == 1:
                return None
            return self._record(res)
        raise RuntimeError(f"the Redis online store of tenant {self.tenant!r} kept switching generations")

    def _record(self, res) -> UserRecord | None:
        if len(res) == 1:
            return None
        history = np.array(res[2]).astype(np.int64) if res[2] else _EMPTY
        types = None
        if self._typed and len(res) > 3:   # aligned with the items (appends push type 0); else all unknown
            types = np.array(res[3]).astype(np.int64) if res[3] else _EMPTY
            types = types if len(types) == len(history) else None
        return UserRecord(history, _ints(res[1]), types)

    def get_many(self, user_ids: list[str]) -> list[UserRecord | None]:
        """One round trip for every id (a pipeline of the same atomic read); an answer from another generation
        than the one adopted is read again on its own, as `get` does."""
        return self._call(self._get_many, user_ids)

    def _get_many(self, user_ids: list[str]) -> list[UserRecord | None]:
        if len(user_ids) <= 1:
            return [self._get(uid) for uid in user_ids]
        with self._redis.pipeline(transaction=False) as p:
            for uid in user_ids:
                self._read(keys=[self._k.pointer], args=[self._k.ns, uid], client=p)
            answers = p.execute()
        out = []
        for uid, res in zip(user_ids, answers):
            if not res:
                raise StoreNotLoaded(self._not_loaded())
            same = res[0].decode() == self._gen or self._adopt(res[0].decode())
            out.append(self._record(res) if same else self._get(uid))
        return out

    def append(self, events, source=None, offset=None, expected_offset=None) -> None:
        """See OnlineStore.append. A batch whose EXEC reached Redis but whose reply was lost (the connection dropped)
        is found committed when it is tried again (the source's offset already is ``offset``): not applied twice."""
        self._call(self._append, events, source, offset, expected_offset)

    def _append(self, events, source, offset, expected_offset) -> None:
        from redis.exceptions import WatchError

        grouped = group_by_user(events)
        watched = [self._k.pointer] + ([self._k.offset(source)] if source is not None else [])
        with self._redis.pipeline() as p:
            while True:
                try:
                    p.watch(*watched)
                    gen = p.get(self._k.pointer)
                    if gen is None:
                        raise StoreNotLoaded(self._not_loaded())
                    gen = gen.decode()
                    if gen != self._gen and not self._adopt(gen):
                        continue
                    if source is not None and expected_offset is not None:
                        current = int(p.get(self._k.offset(source)) or 0)
                        if current == int(offset) != expected_offset:
                            p.reset()
                            return            # this very batch committed, its reply lost: done, not applied twice
                        if current != expected_offset:
                            raise OffsetConflict(f"{source}: committed offset is {current}, expected "
                                                 f"{expected_offset}: another ingest of this source is running")
                    p.multi()
                    for uid, (items, kinds) in grouped.items():
                        p.rpush(self._k.user(gen, uid), *items)
                        if self._typed:     # aligned with the items (an event without a type: unknown, 0)
                            p.rpush(self._k.types(gen, uid), *kinds)
                        p.hsetnx(self._k.gen(gen) + "attrs", uid, "")   # a new user: known, no attributes
                    if source is not None:
                        p.set(self._k.offset(source), int(offset))
                    p.execute()
                    return
                except WatchError:
                    continue                  # the pointer or the offset moved: redo the batch on what is current

    def committed_offset(self, source: str) -> int:
        return int(self._call(self._redis.get, self._k.offset(source)) or 0)

    def erase(self, user_id: str) -> bool:
        return self._call(self._erase, user_id)

    def _erase(self, user_id: str) -> bool:
        from redis.exceptions import WatchError

        with self._redis.pipeline() as p:
            while True:
                try:
                    p.watch(self._k.pointer)
                    gen = p.get(self._k.pointer)
                    if gen is None:
                        return False
                    gen = gen.decode()
                    p.multi()
                    p.delete(self._k.user(gen, user_id), self._k.types(gen, user_id))
                    p.hdel(self._k.gen(gen) + "attrs", user_id)
                    return bool(p.execute()[1])
                except WatchError:
                    continue

    def close(self) -> None:
        self._redis.close()
