"""Synthetic raw tables with planted structure, for tests and demos (fast: a few ms for the defaults).

Planted signal, so that learned models must beat popularity:
- every item has one genre; items of a genre form a fixed chain (genre g: items g, g+G, g+2G, ...);
- every user has a favourite genre, starts somewhere on its chain and mostly (p = 0.8) moves to the next unseen
  item of the chain: a sequential pattern (SASRec's signal) inside a genre preference (LightGCN's signal);
- the remaining events are "noise" items drawn from a skewed (Zipf) popularity, never repeats of seen items;
- users carry an `age_group` correlated with their favourite genre (an entity the graph can use).

`bad_rows=n` adds n malformed rows for every quarantine reason in tapestry.etl.schema.REASONS except `bad_split`
(these tables have no `split` column): each event-level reason n times in the events table, `malformed_line` n times
in `RawTables.rejected` (as a native adapter reports lines it cannot split), and `missing_entity_id` n times in the
item table AND n times in the user table (2n in all). The valid rows are identical for every `bad_rows` value (a
separate random stream places the bad ones), so tests can compare a clean and a dirty run.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from tapestry.etl import schema as S
from tapestry.etl.sources import ROW, RawTables

GENRE_NAMES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Western"]
AGE_GROUPS = ["18-24", "25-34", "35-44", "45-49", "50-55"]
EVENT_TYPES = ["view", "click", "purchase"]
BASE_TIMESTAMP = 1_600_000_000
P_FOLLOW_CHAIN = 0.8


def _genre_name(g: int) -> str:
    name = GENRE_NAMES[g % len(GENRE_NAMES)]
    return name if g < len(GENRE_NAMES) else f"{name}-{g // len(GENRE_NAMES)}"


def _user_events(rng: np.random.Generator, chain: np.ndarray, n: int, noise_p: np.ndarray) -> list[int]:
    """n distinct items: mostly the next unseen item along `chain` (cyclic), else a popularity-drawn item."""
    seen: set[int] = set()
    out: list[int] = []
    pos = int(rng.integers(len(chain)))
    num_items = len(noise_p)
    while len(out) < min(n, num_items):
        item = -1
        if rng.random() < P_FOLLOW_CHAIN:
            for step in range(len(chain)):
                cand = int(chain[(pos + step) % len(chain)])
                if cand not in seen:
                    item, pos = cand, (pos + step + 1) % len(chain)
                    break
        if item < 0:                       # noise step, or the chain is used up
            item = int(rng.choice(num_items, p=noise_p))
            if item in seen:
                continue
        seen.add(item)
        out.append(item)
    return out


def _clean_tables(num_users: int, num_items: int, events_per_user: tuple[int, int], num_genres: int,
                  rng: np.random.Generator):
    genre_of = np.arange(num_items) % num_genres
    chains = [np.flatnonzero(genre_of == g) for g in range(num_genres)]
    ranks = rng.permutation(num_items)
    noise_p = 1.0 / (ranks + 1.0) ** 0.8
    noise_p /= noise_p.sum()

    users, events = [], []
    for u in range(num_users):
        fav = int(rng.integers(num_genres))
        age = AGE_GROUPS[fav % len(AGE_GROUPS)] if rng.random() < 0.8 else str(rng.choice(AGE_GROUPS))
        users.append((f"u{u:04d}", age))
        n = int(rng.integers(events_per_user[0], events_per_user[1] + 1))
        t = BASE_TIMESTAMP + u * 100_000
        for step, item in enumerate(_user_events(rng, chains[fav], n, noise_p)):
            t += int(rng.integers(30, 3600))                  # strictly increasing: no timestamp ties
            events.append([f"u{u:04d}", f"i{item:04d}", EVENT_TYPES[int(rng.integers(3))], str(t), "1",
                           f"u{u:04d}-s{step // 10}"])
    items = [(f"i{j:04d}", f"Item {j} ({_genre_name(int(genre_of[j]))})", _genre_name(int(genre_of[j])))
             for j in range(num_items)]
    return events, items, users


def _bad_event(reason: str, template: list[str]) -> list[str | None]:
    row: list[str | None] = list(template)     # user_id, item_id, event_type, timestamp, weight, session_id
    if reason == S.MISSING_USER_ID:
        row[0] = ""
    elif reason == S.MISSING_ITEM_ID:
        row[1] = None
    elif reason == S.MISSING_TIMESTAMP:
        row[3] = "  "
    elif reason == S.BAD_TIMESTAMP:
        row[3] = "yesterday at noon"
    elif reason == S.TIMESTAMP_OUT_OF_RANGE:
        row[3] = str(int(row[3]) * 1000)               # milliseconds passed as seconds
    elif reason == S.UNKNOWN_EVENT_TYPE:
        row[2] = "teleport"
    elif reason == S.BAD_WEIGHT:
        row[4] = "heavy"
    return row


# bad_split is left out: it exists only for inputs with a `split` column, and these tables use leave-one-out.
# So are the reasons of the optional query/dwell/price/context columns and user links, which these tables lack.
EVENT_LEVEL_REASONS = [r for r in S.REASONS
                       if r not in (S.MALFORMED_LINE, S.MISSING_ENTITY_ID, S.BAD_SPLIT, *S.OPTIONAL_COLUMN_REASONS)]
EVENT_FIELDS = ["user_id", "item_id", "event_type", "timestamp", "weight", "session_id"]


def synthetic_tables(num_users: int = 200, num_items: int = 100, events_per_user: tuple[int, int] = (5, 30),
                     num_genres: int = 5, seed: int = 0, bad_rows: int = 0) -> RawTables:
    if num_genres < 1 or num_items < num_genres:
        raise ValueError("need 1 <= num_genres <= num_items")
    rng = np.random.default_rng(seed)
    events, items, users = _clean_tables(num_users, num_items, events_per_user, num_genres, rng)

    # Rows are (kind, fields); kind "malformed" stands for a line the adapter could not split.
    rows: list[tuple[str, list]] = [("ok", e) for e in events]
    rejected: list[pl.DataFrame] = []
    if bad_rows:
        bad_rng = np.random.default_rng([seed, 1])
        bad = [(r, _bad_event(r, events[int(bad_rng.integers(len(events)))]))
               for r in EVENT_LEVEL_REASONS for _ in range(bad_rows)]
        bad += [("malformed", ["u0000::i0000::view"]) for _ in range(bad_rows)]
        for kind, fields in bad:
            rows.insert(int(bad_rng.integers(len(rows) + 1)), (kind, fields))
        items = items + [("", "Untitled", "Drama")] * bad_rows
        users = users + [("", AGE_GROUPS[0])] * bad_rows

    # source_row = position in the (virtual) input file, malformed lines included, as the native adapters do.
    good_rows = [(i, f) for i, (k, f) in enumerate(rows) if k != "malformed"]
    ev = pl.DataFrame({ROW: [i for i, _ in good_rows],
                       **{c: [f[j] for _, f in good_rows] for j, c in enumerate(EVENT_FIELDS)}},
                      schema={ROW: pl.Int64, **{c: pl.String for c in EVENT_FIELDS}})
    malformed = [(i, f[0]) for i, (k, f) in enumerate(rows) if k == "malformed"]
    if malformed:
        rejected.append(pl.DataFrame({ROW: [i for i, _ in malformed], "raw_line": [s for _, s in malformed],
                                      "source": ["events"] * len(malformed),
                                      "reason": [S.MALFORMED_LINE] * len(malformed)},
                                     schema={ROW: pl.Int64, "raw_line": pl.String, "source": pl.String,
                                             "reason": pl.String}))
    it = pl.DataFrame(items, schema={"item_id": pl.String, "title": pl.String, "genre": pl.String}, orient="row")
    us = pl.DataFrame(users, schema={"user_id": pl.String, "age_group": pl.String}, orient="row")
    with_row = lambda df: df.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))  # noqa: E731
    return RawTables(events=ev.lazy(), items=with_row(it).lazy(), users=with_row(us).lazy(),
                     item_entity_columns=["genre"], user_entity_columns=["age_group"], rejected=rejected,
                     sources={"events": f"synthetic(seed={seed})", "items": "synthetic", "users": "synthetic"})


# --- large event tables, for the ETL benchmark (benchmarks/etl.py) -------------------------------------------
# A rough mix of what real exports hold: 5% ISO-8601 timestamps, mixed-case event types, optional weights, and
# `bad_fraction` of the rows broken in one of these ways (each a quarantine reason the ETL must find).
_BAD_KINDS = (  # (column, bad value): None = the column's value times 1000 (milliseconds passed as seconds)
    ("user_id", ""), ("user_id", "=cmd()"), ("item_id", "i\x07"), ("timestamp", "yesterday"), ("timestamp", None),
    ("event_type", "teleport"), ("weight", "heavy"), ("weight", "-1"),
)


def event_table_chunks(rows: int, seed: int = 0, chunk_rows: int = 1_000_000, bad_fraction: float = 0.01,
                       num_users: int = 1_000_000, num_items: int = 200_000):
    """All-string event frames of a large synthetic table, `chunk_rows` at a time: never all in memory.

    The same (rows, seed, chunk_rows) always gives the same table, and a shorter table is a prefix of a longer
    one (chunk k depends only on seed and k).
    """
    for k, start in enumerate(range(0, rows, chunk_rows)):
        n = min(chunk_rows, rows - start)
        rng = np.random.default_rng([seed, k])
        ts = BASE_TIMESTAMP + rng.integers(0, 30_000_000, n)
        raw = pl.DataFrame({
            "u": rng.integers(0, num_users, n), "i": (rng.zipf(1.3, n) - 1) % num_items,
            "t": rng.integers(0, 4, n), "ts": ts, "iso": rng.random(n) < 0.05, "w": rng.integers(0, 6, n),
            "s": rng.integers(0, 20, n), "bad": np.where(rng.random(n) < bad_fraction,
                                                         rng.integers(0, len(_BAD_KINDS), n), -1),
        })
        frame = raw.select(
            pl.format("u{}", "u").alias("user_id"),
            pl.format("i{}", "i").alias("item_id"),
            pl.col("t").replace_strict({0: "view", 1: "click", 2: "purchase", 3: "View"},
                                       return_dtype=pl.String).alias("event_type"),
            pl.when("iso").then(pl.from_epoch("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
            .otherwise(pl.col("ts").cast(pl.String)).alias("timestamp"),
            pl.when(pl.col("w") > 0).then(pl.col("w").cast(pl.String)).alias("weight"),
            pl.format("u{}-s{}", "u", "s").alias("session_id"),
            "bad", "ts",
        )
        fixes = {}
        for code, (column, value) in enumerate(_BAD_KINDS):
            bad_value = (pl.col("ts") * 1000).cast(pl.String) if value is None else pl.lit(value)
            fixes[column] = pl.when(pl.col("bad") == code).then(bad_value).otherwise(fixes.get(column, pl.col(column)))
        yield frame.with_columns(**fixes).drop("bad", "ts")


def write_event_table(path, rows: int, seed: int = 0, chunk_rows: int = 1_000_000, bad_fraction: float = 0.01,
                      prefix: tuple | None = None) -> None:
    """Write event_table_chunks to a CSV file, chunk by chunk; `prefix=(path, rows)` also writes the first rows
    (a whole number of chunks) to a second file, in the same pass."""
    prefix_file = open(prefix[0], "wb") if prefix else None
    try:
        with open(path, "wb") as f:
            for k, chunk in enumerate(event_table_chunks(rows, seed, chunk_rows, bad_fraction)):
                chunk.write_csv(f, include_header=k == 0)
                if prefix_file is not None and k * chunk_rows < prefix[1]:
                    chunk.write_csv(prefix_file, include_header=k == 0)
    finally:
        if prefix_file is not None:
            prefix_file.close()
