"""The online side of serving: the feature store feature_lookup reads (embedded or Redis), streaming ingest of
new events into it with resumable offsets, and GDPR erasure (tombstones the ETL honours).

    store.py       OnlineStore, EmbeddedStore, open_store (RedisStore re-exported)
    redis_store.py RedisStore: bounded timeouts, StoreUnavailable while Redis is down, resumes when it is back
    load.py        load_export_into_redis: an export -> a new Redis generation, then an atomic switch
    ingest.py      `tapestry ingest`: validated CSV events -> the store, offsets committed with the writes
    erase.py       `tapestry erase`: tombstone + removal from the store
    tombstones.py  the tombstone file and how the ETL drops erased users' rows
    local_redis.py a throwaway redis-server (tests, a laptop)
"""
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import (REDIS_URL_ENV, EmbeddedStore, OnlineStore, RedisStore, StoreMetadata,
                                   StoreMismatch, StoreNotLoaded, UserRecord, open_store)

__all__ = ["REDIS_URL_ENV", "EmbeddedStore", "OnlineStore", "RedisStore", "StoreMetadata", "StoreMismatch",
           "StoreNotLoaded", "UserRecord", "load_export_into_redis", "open_store"]
