"""Row-level validation of the event table: every row is either valid (typed) or quarantined with a reason.

Suspicious but parseable values are quarantined, never rewritten (a rewritten id would stop matching what the
tenant's clients send): ids with control/invisible characters or U+FFFD, ids over schema.MAX_ID_LENGTH
characters, ids a spreadsheet would run as a formula (leading `=`, `+`, `-`, `@`, unless a plain number), and
weights <= 0. The only normalisations are stripping surrounding whitespace and lower-casing event types and
split names.
"""
from __future__ import annotations

import polars as pl

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.sources import ROW


def _blank(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


def bad_id(col: str) -> pl.Expr:
    """True where a (non-blank) id fails the id policy in schema.py."""
    s = pl.col(col).str.strip_chars()
    return ((s.str.contains(S.BAD_ID_PATTERN) & ~s.str.contains(S.PLAIN_NUMBER_PATTERN))
            | (s.str.len_chars() > S.MAX_ID_LENGTH))


# Explicit ISO-8601 forms, tried per row. (Letting polars infer the format would infer it once, from the first
# value in the column, and reject every row written differently, e.g. `...Z` after a naive date-time.)
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z",   # with `Z` or a `+hh:mm` offset
    "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f",           # naive = UTC
    "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d",
)


def _parse_timestamp(col: str) -> pl.Expr:
    """Integer unix seconds, or an ISO-8601 date-time (naive = UTC) converted to unix seconds."""
    s = pl.col(col).str.strip_chars()
    as_int = s.cast(pl.Int64, strict=False)
    # Only the rows that are not integers go through the date-time parsers (they skip nulls): trying every format
    # on every row took ~1 s per million integer timestamps here, ~0.3 s with the mask.
    rest = pl.when(as_int.is_null()).then(s)
    as_dt = [rest.str.to_datetime(f, strict=False, time_zone="UTC", time_unit="us").dt.epoch("s")
             for f in _ISO_FORMATS]
    return pl.coalesce(as_int, *as_dt)


def validate_events(events: pl.LazyFrame, cfg: ETLConfig) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Split all-string events into (valid typed rows, quarantined raw rows with `reason`).

    Valid columns: user_id, item_id (stripped strings), event_type, timestamp (i64 s), weight (f32, default 1),
    session_id (str or null), source_row, and `split` (lower-cased) when the input has that column.
    good + quarantined == input, always.
    """
    names = events.collect_schema().names()
    if "weight" not in names:
        events = events.with_columns(pl.lit(None, dtype=pl.String).alias("weight"))
    if "session_id" not in names:
        events = events.with_columns(pl.lit(None, dtype=pl.String).alias("session_id"))

    # The split column is validated only when the input has one: its absence means "leave-one-out".
    has_split = S.SPLIT_COLUMN in names
    split = pl.col(S.SPLIT_COLUMN).str.strip_chars().str.to_lowercase() if has_split else None

    # Parsed once, into a helper column: polars does not share a sub-expression between when/then branches, and
    # this parse is most of the validation's time (4 parses took 3x as long on Gowalla's 1M rows).
    events = events.with_columns(_parse_timestamp("timestamp").alias("_ts"))
    ts = pl.col("_ts")
    weight = pl.col("weight").str.strip_chars().cast(pl.Float64, strict=False)
    etype = pl.col("event_type").str.strip_chars().str.to_lowercase()
    reason = (
        pl.when(_blank("user_id")).then(pl.lit(S.MISSING_USER_ID))
        .when(bad_id("user_id")).then(pl.lit(S.BAD_USER_ID))
        .when(_blank("item_id")).then(pl.lit(S.MISSING_ITEM_ID))
        .when(bad_id("item_id")).then(pl.lit(S.BAD_ITEM_ID))
        .when(_blank("timestamp")).then(pl.lit(S.MISSING_TIMESTAMP))
        .when(ts.is_null()).then(pl.lit(S.BAD_TIMESTAMP))
        .when((ts < cfg.min_timestamp) | (ts > cfg.max_timestamp)).then(pl.lit(S.TIMESTAMP_OUT_OF_RANGE))
        .when(etype.is_null() | ~etype.is_in([t.lower() for t in cfg.event_types])).then(pl.lit(S.UNKNOWN_EVENT_TYPE))
        # Finite as f32 too (it is stored as f32): 1e39 is a finite f64 but would be written as inf.
        .when(~_blank("weight") & (weight.is_null() | ~weight.cast(pl.Float32).is_finite())).then(pl.lit(S.BAD_WEIGHT))
        # Checked as f32 too: 1e-50 is positive as f64 and would be stored as 0.
        .when(~_blank("weight") & (weight.cast(pl.Float32) <= 0)).then(pl.lit(S.NONPOSITIVE_WEIGHT))
        .when(~_blank("session_id") & bad_id("session_id")).then(pl.lit(S.BAD_SESSION_ID))
    )
    if has_split:
        reason = reason.when(split.is_null() | ~split.is_in(list(S.SPLIT_VALUES))).then(pl.lit(S.BAD_SPLIT))
    reason = reason.otherwise(None)
    tagged = events.with_columns(reason.alias("reason"))
    quarantined = (tagged.filter(pl.col("reason").is_not_null()).drop("_ts")
                   .with_columns(pl.lit("events").alias("source")))
    good = tagged.filter(pl.col("reason").is_null()).select(
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        etype.alias("event_type"),
        ts.alias("timestamp"),
        weight.fill_null(1.0).cast(pl.Float32).alias("weight"),
        pl.when(_blank("session_id")).then(None).otherwise(pl.col("session_id").str.strip_chars())
        .alias("session_id"),
        pl.col(ROW),
        *([split.alias(S.SPLIT_COLUMN)] if has_split else []),
    )
    return good, quarantined


def validate_entities(table: pl.LazyFrame, id_col: str, source: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Entity-table rows need their id, under the same id policy as events; other columns are optional attributes."""
    tagged = table.with_columns(
        pl.when(_blank(id_col)).then(pl.lit(S.MISSING_ENTITY_ID))
        .when(bad_id(id_col)).then(pl.lit(S.BAD_ENTITY_ID)).otherwise(None).alias("reason")
    )
    bad = tagged.filter(pl.col("reason").is_not_null()).with_columns(pl.lit(source).alias("source"))
    good = tagged.filter(pl.col("reason").is_null()).drop("reason").with_columns(pl.col(id_col).str.strip_chars())
    return good, bad
