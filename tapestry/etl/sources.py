"""Reading raw tables: generic CSV/Parquet (optionally .xz) into all-string lazy frames.

Everything is read as strings so that a bad value never aborts the read: validation decides per row and
quarantines what does not parse.
"""
from __future__ import annotations

import csv
import io
import lzma
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from tapestry.etl.schema import EVENT_COLUMNS, MALFORMED_LINE, SchemaError

ROW = "source_row"


@dataclass
class RawTables:
    """A tenant's raw input, as all-string frames, each with a 0-based `source_row`.

    `rejected` holds rows a native adapter could not even split into fields (reason `malformed_line`).
    """
    events: pl.LazyFrame
    items: pl.LazyFrame | None = None
    users: pl.LazyFrame | None = None
    # Item-table columns to turn into entity nodes (None: every non-text column); user-table likewise.
    item_entity_columns: list[str] | None = None
    user_entity_columns: list[str] | None = None
    rejected: list[pl.DataFrame] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


def read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix == ".xz":
        with lzma.open(path) as f:
            return f.read()
    return path.read_bytes()


def find_file(directory: Path, name: str) -> Path:
    """`directory/name`, else its `.xz` copy: the shared data sets are stored compressed, a user's may not be."""
    for candidate in (Path(directory) / name, Path(directory) / f"{name}.xz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"input file not found: {Path(directory) / name} (or {name}.xz)")


# A `user item item ...` line: whitespace-separated non-negative integer ids, a user and at least one item.
# ([0-9], not \d: the regex engine's \d also matches non-ASCII digits.)
_USER_ITEMS_LINE = r"^\s*[0-9]+(?:\s+[0-9]+)+\s*$"


def read_user_item_lines(path: Path, source: str = "events") -> tuple[pl.DataFrame, pl.DataFrame]:
    """A `user item item ...` file (the LightGCN and S3-Rec format) -> one string row per (user, item), in order.

    Events: source_line (0-based line number), user_id, item_id (ids as written), position (0-based index of the
    item within its line). The caller adds `source_row`, the event's index across its inputs: one line holds many
    events, so a line number alone would not order ties. A line that is not integers with at least one item is
    rejected whole (`malformed_line`, `source_row` = its line number, one input row); blank lines are not records.
    """
    text = read_bytes(path).decode("utf-8", errors="replace")
    lines = pl.DataFrame({"raw_line": text.split("\n")}).with_row_index("source_line")
    lines = lines.with_columns(pl.col("source_line").cast(pl.Int64)).filter(pl.col("raw_line").str.strip_chars() != "")
    ok = pl.col("raw_line").str.contains(_USER_ITEMS_LINE)
    ids = lines.filter(ok).select("source_line", pl.col("raw_line").str.extract_all("[0-9]+").alias("_ids"))
    events = ids.select(
        "source_line",
        pl.col("_ids").list.first().alias("user_id"),
        pl.col("_ids").list.slice(1).alias("item_id"),
        pl.int_ranges(0, pl.col("_ids").list.len() - 1).alias("position"),
    ).explode("item_id", "position")
    bad = lines.filter(~ok).select(pl.col("source_line").alias(ROW), "raw_line", pl.lit(source).alias("source"),
                                   pl.lit(MALFORMED_LINE).alias("reason"))
    return events, bad


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".xz" else path.suffix


def read_table(path: Path, separator: str = ",", source: str = "events",
               rejected: list[pl.DataFrame] | None = None) -> pl.LazyFrame:
    """A CSV or Parquet file (plain or .xz) as an all-string LazyFrame with `source_row`.

    CSV lines that cannot be parsed (wrong field count, broken quoting) are appended to `rejected` with reason
    `malformed_line` instead of failing the whole read.
    """
    path = Path(path)
    suffix = _base_suffix(path).lower()
    if suffix == ".parquet":
        if path.suffix == ".xz":
            lf = pl.read_parquet(io.BytesIO(read_bytes(path))).lazy()
        else:
            if not path.exists():
                raise FileNotFoundError(f"input file not found: {path}")
            lf = pl.scan_parquet(path)
        lf = lf.with_columns(pl.all().cast(pl.String))
    elif suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix == ".tsv" else separator
        data = read_bytes(path)
        try:
            lf = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False).lazy()
        except pl.exceptions.ComputeError:
            # A ragged line or a stray quote: parse line by line and reject only the bad lines.
            return _read_csv_tolerant(data, sep, source, rejected)
    else:
        raise SchemaError(f"unsupported file type for {path}: use .csv, .tsv, .parquet (optionally .xz)")
    return lf.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))


def _read_csv_tolerant(data: bytes, sep: str, source: str, rejected: list[pl.DataFrame] | None) -> pl.LazyFrame:
    text = data.decode("utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=False))
    if not rows:
        return pl.LazyFrame()
    header, body = rows[0], rows[1:]
    good, bad = [], []
    for i, row in enumerate(body):
        if not row:
            continue
        (good if len(row) == len(header) else bad).append((i, row))
    frame = pl.DataFrame({ROW: [i for i, _ in good], **{c: [r[j] for _, r in good] for j, c in enumerate(header)}},
                         schema={ROW: pl.Int64, **{c: pl.String for c in header}})
    if bad and rejected is not None:
        rejected.append(pl.DataFrame({ROW: [i for i, _ in bad], "raw_line": [sep.join(r) for _, r in bad],
                                      "source": source, "reason": MALFORMED_LINE},
                                     schema={ROW: pl.Int64, "raw_line": pl.String, "source": pl.String,
                                             "reason": pl.String}))
    return frame.lazy()


def require_columns(lf: pl.LazyFrame, required: tuple[str, ...], what: str) -> None:
    names = lf.collect_schema().names()
    missing = [c for c in required if c not in names]
    if missing:
        raise SchemaError(f"{what} table is missing required column(s) {missing}; it has {names}")


def generic_tables(events: Path, items: Path | None = None, users: Path | None = None) -> RawTables:
    """The generic layout: an event table plus optional item and user entity tables."""
    rejected: list[pl.DataFrame] = []
    ev = read_table(events, source="events", rejected=rejected)
    require_columns(ev, EVENT_COLUMNS, "events")
    it = read_table(items, source="items", rejected=rejected) if items else None
    if it is not None:
        require_columns(it, ("item_id",), "items")
    us = read_table(users, source="users", rejected=rejected) if users else None
    if us is not None:
        require_columns(us, ("user_id",), "users")
    sources = {"events": str(events)}
    if items:
        sources["items"] = str(items)
    if users:
        sources["users"] = str(users)
    return RawTables(events=ev, items=it, users=us, rejected=rejected, sources=sources)
