"""Loading an export into the Redis online store: a new generation, written pipelined, then one pointer flip.

See tapestry.online.store for the key layout. Readers resolve the pointer and read a user in one server-side
script, so until the flip they read the previous load whole, and after it the new one whole. Tombstoned users are
skipped, also those erased while the load ran (their erasure hit the previous generation).
"""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Callable

import polars as pl

from tapestry.config import validate_tenant
from tapestry.online.redis_store import RedisStore, _connect, _Keys
from tapestry.online.store import StoreMetadata, _now, export_tenant_dir
from tapestry.online.tombstones import TOMBSTONES, Tombstones

LOAD_TIMEOUT_S = 30.0   # a bulk load's pipelined chunks: not a request's 0.5 s


def _drop_generation(r, k: _Keys, gen: str, chunk: int = 1000) -> None:
    """Delete one generation: its users are the fields of its attrs hash (no SCAN, not even within the tenant)."""
    attrs = k.gen(gen) + "attrs"
    batch = []
    for uid, _ in r.hscan_iter(attrs, count=chunk):
        batch.extend((k.user(gen, uid.decode()), k.types(gen, uid.decode())))
        if len(batch) >= chunk:
            r.delete(*batch)
            batch = []
    if batch:
        r.delete(*batch)
    r.delete(attrs, k.gen(gen) + "meta", k.typed(gen))
    r.zrem(k.generations, gen)


def load_export_into_redis(artifact_dir: Path, url: str, chunk_users: int = 500,
                           progress: Callable[[int], None] | None = None, log=print) -> StoreMetadata:
    """Bulk-load an export's users.parquet into a new generation (pipelined, `chunk_users` users per round trip),
    then flip the tenant's pointer to it and drop older generations. Tombstoned users are skipped, also those
    erased while the load ran. `progress(n)` is called after each chunk (n users written so far)."""
    t0 = time.perf_counter()
    artifact_dir = Path(artifact_dir).resolve()
    m = json.loads((artifact_dir / "manifest.json").read_text())
    tenant = validate_tenant(m["tenant"])
    k, r = _Keys(tenant), _connect(url, timeout=LOAD_TIMEOUT_S)
    tdir = export_tenant_dir(artifact_dir, tenant)
    tombstones = Tombstones(tdir / TOMBSTONES if tdir else None)
    tombstones.refresh()
    created = time.time()
    gen = f"g{time.strftime('%Y%m%dT%H%M%S', time.gmtime(created))}-{secrets.token_hex(4)}"
    r.zadd(k.generations, {gen: created})
    users = pl.read_parquet(artifact_dir / "users.parquet")
    # An export of a behaviour-aware model has each history's event types (`history_types`): kept beside it.
    typed = "history_types" in users.columns
    if typed:
        r.set(k.typed(gen), "1")
    else:
        users = users.with_columns(pl.lit(None, dtype=pl.List(pl.Int64)).alias("history_types"))
    pipe, n = r.pipeline(transaction=False), 0
    for uid, hist, attrs, types in users.select("user_id", "history", "attrs", "history_types").iter_rows():
        if uid in tombstones.ids:
            continue
        if hist:
            pipe.rpush(k.user(gen, uid), *hist)
            if typed:
                pipe.rpush(k.types(gen, uid), *types)
        pipe.hset(k.gen(gen) + "attrs", uid, ",".join(str(a) for a in attrs))
        n += 1
        if n % chunk_users == 0:
            pipe.execute()
            if progress:
                progress(n)
    pipe.execute()
    meta = StoreMetadata(RedisStore.kind, tenant, str(artifact_dir), str(m["etl_version"]), _now())
    r.hset(k.gen(gen) + "meta", mapping=meta.as_dict())
    r.set(k.pointer, gen)                          # the flip: readers move to the complete new generation at once
    late = tombstones.refresh()                    # erased while we loaded: `tapestry erase` hit the old generation
    for uid in late:
        r.delete(k.user(gen, uid), k.types(gen, uid))
        r.hdel(k.gen(gen) + "attrs", uid)
    # Older generations (the previous load, or one a killed loader abandoned); a newer concurrent load's is kept.
    for old in r.zrangebyscore(k.generations, "-inf", created):
        if old.decode() != gen:
            _drop_generation(r, k, old.decode())
    r.close()
    log(f"[load-store] tenant={tenant}: {n:,} users from {artifact_dir.parent.name} into Redis generation {gen} "
        f"({time.perf_counter() - t0:.1f}s)")
    return meta
