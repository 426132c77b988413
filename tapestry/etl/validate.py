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


def _bad_stripped_id(s: pl.Expr) -> pl.Expr:
    return s.str.contains(S.ID_POLICY_PATTERN) | (s.str.len_chars() > S.MAX_ID_LENGTH)


def bad_id(col: str) -> pl.Expr:
    """True where a (non-blank) id fails the id policy in schema.py."""
    return _bad_stripped_id(pl.col(col).str.strip_chars())


# Explicit ISO-8601 forms, tried per row, after a space between date and time is made a `T`. (Letting polars infer
# the format would infer it once, from the first value in the column, and reject every row written differently,
# e.g. `...Z` after a naive date-time.) `%.f` also matches no fraction; `%#z` matches `Z`, `+hh:mm` and `+hhmm`.
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def _parse_timestamp(lf: pl.LazyFrame, text: pl.Expr, out: str) -> pl.LazyFrame:
    """Add `out`: stripped `text` as integer unix seconds, or an ISO-8601 date-time (naive = UTC) in unix seconds."""
    # Only the rows that are not integers go through the date-time parsers (they skip nulls): trying every format
    # on every row took ~1 s per million integer timestamps here, ~0.3 s with the mask. The masked text is a
    # column of its own: inside one expression polars recomputed it for every format (3x the time).
    lf = lf.with_columns(text.cast(pl.Int64, strict=False).alias("_tint")).with_columns(
        pl.when(pl.col("_tint").is_null()).then(text.str.replace(" ", "T", literal=True, n=1)).alias("_trest"))
    as_dt = [pl.col("_trest").str.to_datetime(f, strict=False, time_zone="UTC", time_unit="us").dt.epoch("s")
             for f in _ISO_FORMATS]
    return lf.with_columns(pl.coalesce("_tint", *as_dt).alias(out)).drop("_tint", "_trest")


# Helper columns, computed once per row: polars does not share a sub-expression between when/then branches or
# between the reason and the typed output, and recomputing them took about twice as long.
_HELPERS = ("_user", "_item", "_session", "_etype", "_tstr", "_ts", "_w", "_w32", "_has_w")


def extra_event_columns(names: list[str], cfg: ETLConfig) -> list[str]:
    """The optional columns (schema.py: query, dwell, price) and declared context columns this input carries, in
    the order the valid rows hold them. A declared context column the input lacks, or one named like a column of
    the event schema or a node type of the typed graph, is a SchemaError: nothing is written."""
    reserved = {*S.EVENT_COLUMNS, *S.OPTIONAL_EVENT_COLUMNS, *S.RESERVED_NODE_TYPES, ROW, "reason", "source"}
    for c in cfg.context_columns:
        if c in reserved or not c.isidentifier() or "__" in c:
            raise S.SchemaError(f"context column {c!r} cannot be declared: it must be an identifier without `__` "
                                f"and none of {sorted(reserved)}")
        if c not in names:
            raise S.SchemaError(f"declared context column {c!r} is missing from the event table; it has {names}")
    unknown = sorted(set(cfg.context_values) - set(cfg.context_columns))
    if unknown:
        raise S.SchemaError(f"context_values given for undeclared context column(s) {unknown}")
    optional = [c for c in (S.QUERY_COLUMN, *S.EDGE_VALUE_COLUMNS) if c in names]
    return optional + list(dict.fromkeys(cfg.context_columns))


def _extra_columns(cfg: ETLConfig, extras: list[str]) -> tuple[dict, list, dict]:
    """(helper columns, (condition, reason) pairs in check order, typed output expressions) of the optional
    columns: each helper is computed once per row, as for the required columns."""
    helpers, checks, out = {}, [], {}
    for c in extras:
        h = f"_x_{c}"
        text = pl.col(c).str.strip_chars()
        if c in S.EDGE_VALUE_COLUMNS:
            helpers[h] = text.cast(pl.Float64, strict=False)
            given, num = (text != "").fill_null(False), pl.col(h)
            bad = given & (num.is_null() | ~num.cast(pl.Float32).is_finite() | (num < 0))
            checks.append((bad, S.BAD_DWELL if c == "dwell" else S.BAD_PRICE))
            out[c] = num.cast(pl.Float32)
            continue
        helpers[h] = pl.when(text != "").then(text)                         # blank -> null: no query / no value
        value = pl.col(h)
        if c == S.QUERY_COLUMN:
            checks.append((value.is_not_null() & (value.str.contains(S.BAD_TEXT_PATTERN)
                                                  | (value.str.len_chars() > S.MAX_QUERY_LENGTH)), S.BAD_QUERY))
        else:
            checks.append((value.is_not_null() & _bad_stripped_id(value), S.BAD_CONTEXT_VALUE))
            if c in cfg.context_values:
                allowed = [str(v) for v in cfg.context_values[c]]
                checks.append((value.is_not_null() & ~value.is_in(allowed), S.UNKNOWN_CONTEXT_VALUE))
        out[c] = value
    return helpers, checks, out


def validate_events(events: pl.LazyFrame, cfg: ETLConfig) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Split all-string events into (valid typed rows, quarantined raw rows with `reason`).

    Valid columns: user_id, item_id (stripped strings), event_type, timestamp (i64 s), weight (f32, default 1),
    session_id (str or null), source_row, and `split` (lower-cased) when the input has that column; then, when the
    input has them, `query` (stripped text or null), `dwell`, `price` (f32 or null) and the declared context
    columns (stripped text or null; see extra_event_columns).
    good + quarantined == input, always.
    """
    names = events.collect_schema().names()
    extras = extra_event_columns(names, cfg)
    x_helpers, x_checks, x_out = _extra_columns(cfg, extras)
    if "weight" not in names:
        events = events.with_columns(pl.lit(None, dtype=pl.String).alias("weight"))
    if "session_id" not in names:
        events = events.with_columns(pl.lit(None, dtype=pl.String).alias("session_id"))

    # The split column is validated only when the input has one: its absence means "leave-one-out".
    has_split = S.SPLIT_COLUMN in names
    split = pl.col(S.SPLIT_COLUMN).str.strip_chars().str.to_lowercase() if has_split else None

    strip = {c: pl.col(c).str.strip_chars() for c in ("user_id", "item_id", "session_id", "timestamp", "weight")}
    events = events.with_columns(
        strip["user_id"].alias("_user"), strip["item_id"].alias("_item"),
        pl.when(strip["session_id"] != "").then(strip["session_id"]).alias("_session"),   # blank -> null
        pl.col("event_type").str.strip_chars().str.to_lowercase().alias("_etype"),
        strip["timestamp"].alias("_tstr"),
        strip["weight"].cast(pl.Float64, strict=False).alias("_w"),
        (strip["weight"] != "").fill_null(False).alias("_has_w"),
        **x_helpers,
    ).with_columns(pl.col("_w").cast(pl.Float32).alias("_w32"))
    events = _parse_timestamp(events, pl.col("_tstr"), "_ts")
    user, item, session, etype, ts, w32, has_w = (pl.col(c) for c in ("_user", "_item", "_session", "_etype", "_ts",
                                                                      "_w32", "_has_w"))
    missing = lambda c: c.is_null() | (c == "")  # noqa: E731  (on stripped text)
    reason = (
        pl.when(missing(user)).then(pl.lit(S.MISSING_USER_ID))
        .when(_bad_stripped_id(user)).then(pl.lit(S.BAD_USER_ID))
        .when(missing(item)).then(pl.lit(S.MISSING_ITEM_ID))
        .when(_bad_stripped_id(item)).then(pl.lit(S.BAD_ITEM_ID))
        .when(missing(pl.col("_tstr"))).then(pl.lit(S.MISSING_TIMESTAMP))
        .when(ts.is_null()).then(pl.lit(S.BAD_TIMESTAMP))
        .when((ts < cfg.min_timestamp) | (ts > cfg.max_timestamp)).then(pl.lit(S.TIMESTAMP_OUT_OF_RANGE))
        .when(etype.is_null() | ~etype.is_in([t.lower() for t in cfg.event_types])).then(pl.lit(S.UNKNOWN_EVENT_TYPE))
        # Finite as f32 too (it is stored as f32): 1e39 is a finite f64 but would be written as inf.
        .when(has_w & (pl.col("_w").is_null() | ~w32.is_finite())).then(pl.lit(S.BAD_WEIGHT))
        # Checked as f32 too: 1e-50 is positive as f64 and would be stored as 0.
        .when(has_w & (w32 <= 0)).then(pl.lit(S.NONPOSITIVE_WEIGHT))
        .when(session.is_not_null() & _bad_stripped_id(session)).then(pl.lit(S.BAD_SESSION_ID))
    )
    if has_split:
        reason = reason.when(split.is_null() | ~split.is_in(list(S.SPLIT_VALUES))).then(pl.lit(S.BAD_SPLIT))
    for bad, why in x_checks:
        reason = reason.when(bad).then(pl.lit(why))
    tagged = events.with_columns(reason.otherwise(None).alias("reason"))
    quarantined = (tagged.filter(pl.col("reason").is_not_null()).drop(*_HELPERS, *x_helpers)
                   .with_columns(pl.lit("events").alias("source")))
    good = tagged.filter(pl.col("reason").is_null()).select(
        user.alias("user_id"), item.alias("item_id"), etype.alias("event_type"), ts.alias("timestamp"),
        w32.fill_null(1.0).alias("weight"), session.alias("session_id"), pl.col(ROW),
        *([split.alias(S.SPLIT_COLUMN)] if has_split else []),
        *[expr.alias(c) for c, expr in x_out.items()],
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
