"""`tapestry etl`: validate -> encode -> split -> write a versioned artifact directory (atomically).

The split is leave-one-out unless the events carry a `split` column (a fixed, adapter-given split): see etl/split.py.
Memory stays bounded whatever the event table's size: validation and encoding are streamed through scratch Parquet
files in $TMPDIR (removed at the end), and the sort behind the split takes a range of users at a time; only the id
maps (one row per distinct user and item) and the small entity tables are held whole.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tapestry.artifacts import atomic_write_json, new_version
from tapestry.config import ETLConfig, validate_tenant
from tapestry.etl.catalogue import HAS_EVENTS, etl_item_content, with_cold_items, write_etl_item_content
from tapestry.etl.encode import IdEncoder
from tapestry.etl.engines import collect_engine, select_polars_engine, sink_engine
from tapestry.etl.schema import ENTITY_VALUE_SEPARATOR, ITEM_TEXT_COLUMNS, SPLIT_COLUMN, UNKNOWN_LINKED_USER
from tapestry.etl.sources import ROW, RawTables
from tapestry.etl.split import (FIXED, LEAVE_ONE_OUT, fixed_split_sorted, leave_one_out_tagged, sort_by_user,
                                 tag_positions)
from tapestry.etl.validate import extra_event_columns, validate_entities, validate_events
from tapestry.online.tombstones import drop_erased_events, drop_erased_users, erased_user_ids

EVENT_OUT_COLUMNS = ["user_idx", "item_idx", "event_type", "timestamp", "weight", "session_id"]
# ... followed by the optional query/dwell/price and declared context columns the input has (validate.py).


@dataclass
class ETLResult:
    path: Path
    manifest: dict


def _entity_long(table: pl.DataFrame, id_col: str, columns: list[str] | None, encoder: IdEncoder,
                 exclude: tuple[str, ...] = ()) -> pl.DataFrame:
    """Wide attribute columns -> long (idx, entity_type, entity_value); `a|b` values become two rows."""
    skip = {id_col, ROW, *ITEM_TEXT_COLUMNS, *exclude}
    cols = columns if columns is not None else [c for c in table.columns if c not in skip]
    cols = [c for c in cols if c in table.columns]
    empty = pl.DataFrame(schema={encoder.idx_col: pl.Int64, "entity_type": pl.String, "entity_value": pl.String})
    if not cols:
        return empty
    long = (
        table.select(id_col, *[pl.col(c).cast(pl.String) for c in cols])
        .unpivot(index=id_col, on=cols, variable_name="entity_type", value_name="entity_value")
        .with_columns(pl.col("entity_value").str.split(ENTITY_VALUE_SEPARATOR))
        .explode("entity_value")
        .with_columns(pl.col("entity_value").str.strip_chars())
        .filter(pl.col("entity_value").is_not_null() & (pl.col("entity_value") != ""))
    )
    long = encoder.encode(long, id_col).filter(pl.col(encoder.idx_col) > 0)
    return long.select(encoder.idx_col, "entity_type", "entity_value").unique(maintain_order=True)


def _as_strings(df: pl.DataFrame | pl.LazyFrame):
    return df.with_columns(pl.exclude(ROW).cast(pl.String))


def validate_to_parquet(tables: RawTables, cfg: ETLConfig, scratch: Path) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Validation, streamed from the input into two scratch Parquet files (valid rows, quarantined rows).

    Polars' streaming engine runs both sinks in one pass over the input, in bounded memory, so an event table
    larger than RAM can be validated; row order is kept, so the outputs equal an in-memory collect. If the input
    is a CSV scan that turns out not to parse (tables.reread_events is set), it is read again by the csv module.
    """
    paths = scratch / "valid.parquet", scratch / "quarantined.parquet"
    engine = sink_engine(select_polars_engine(cfg.polars_engine))

    def sink() -> None:
        good_lf, bad_lf = validate_events(tables.events, cfg)
        pl.collect_all([good_lf.sink_parquet(paths[0], lazy=True), bad_lf.sink_parquet(paths[1], lazy=True)],
                       engine=engine)

    try:
        sink()
    except pl.exceptions.PolarsError:
        if tables.reread_events is None:
            raise
        tables.events, tables.reread_events = tables.reread_events(), None
        sink()
    return pl.scan_parquet(paths[0]), pl.scan_parquet(paths[1])


def _sort_and_split(encoded: pl.LazyFrame, num_users: int, rows: int, split_kind: str, scratch: Path,
                    engine: str = "cpu") -> pl.LazyFrame:
    """Encoded events in SORT_KEY order (tagged for leave-one-out), as a scan of scratch files.

    The encoded table is streamed to scratch, then sorted a range of users at a time (split.sort_by_user), so
    memory holds the id maps and about one range, not the table.
    """
    encoded.sink_parquet(scratch / "encoded.parquet", engine=sink_engine(engine))
    each = tag_positions if split_kind == LEAVE_ONE_OUT else None
    return sort_by_user(scratch / "encoded.parquet", num_users, rows, scratch, each,
                        engine=collect_engine(engine, "in-memory"))


class LocalStages:
    """The three stages that read every event, run in this process: validate (+ drop erased users' rows), fit the
    id maps, encode and sort by user range. tapestry.etl.distributed.DaskStages runs the same stages on a cluster's
    workers; everything else in run_etl (entity tables, quarantine, writing the version) is the same for both."""

    def __init__(self, engine: str = "cpu"):
        self.engine = engine   # "cpu" | "gpu": tapestry.etl.engines.select_polars_engine's answer

    def validate(self, tables: RawTables, cfg: ETLConfig, scratch: Path, erased: frozenset[str]
                 ) -> tuple[pl.LazyFrame, pl.LazyFrame, int]:
        good, bad = validate_to_parquet(tables, cfg, scratch)
        # Erased users' rows, valid or not, are dropped before anything is encoded or kept (not even in quarantine).
        return drop_erased_events(good, bad, erased)

    def fit_ids(self, good: pl.LazyFrame) -> tuple[IdEncoder, IdEncoder]:
        # Only the distinct ids are collected: the id maps must be in memory, the events need not be.
        engine = collect_engine(self.engine)
        distinct = {name: good.select(pl.col(f"{name}_id").unique()).collect(engine=engine)[f"{name}_id"]
                    for name in ("user", "item")}
        return IdEncoder.fit("user", distinct["user"]), IdEncoder.fit("item", distinct["item"])

    def encode_sorted(self, good: pl.LazyFrame, users: IdEncoder, items: IdEncoder, rows: int, split_kind: str,
                      scratch: Path) -> pl.LazyFrame:
        # Join order is free: the sort puts every row in place (source_row breaks all ties).
        encoded = items.encode(users.encode(good, maintain_order=False), maintain_order=False)
        return _sort_and_split(encoded, len(users), rows, split_kind, scratch, self.engine)


def _height(lf: pl.LazyFrame) -> int:
    return lf.select(pl.len()).collect().item()


def _entities(table: pl.LazyFrame | None, id_col: str, columns: list[str] | None, encoder: IdEncoder,
              quarantine: list[pl.LazyFrame], exclude: tuple[str, ...] = ()
              ) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """An entity table (small: collected) -> (its valid rows, one per id; long entity rows). Bad rows go to
    `quarantine`. `exclude`: columns that are never entity types (user links)."""
    if table is None:
        return None, None
    good, bad = (f.collect() for f in validate_entities(table, id_col, f"{encoder.name}s"))
    quarantine.append(_as_strings(bad).lazy())
    good = good.unique(id_col, keep="first", maintain_order=True)
    return good, _entity_long(good, id_col, columns, encoder, exclude)


USER_LINKS_SCHEMA = {"user_idx": pl.Int64, "relation": pl.String, "linked_user_idx": pl.Int64}


def _user_links(users: pl.DataFrame | None, columns: list[str], encoder: IdEncoder,
                quarantine: list[pl.LazyFrame], erased: frozenset[str] = frozenset()) -> pl.DataFrame:
    """User-table columns whose values are user ids (`a|b`: two links), e.g. Last.fm friends -> long
    (user_idx, relation = column name, linked_user_idx). A value naming no user of the events is quarantined
    (`unknown_linked_user`, source "users", one row per value with its user row's source_row); the rows of
    users without events are ignored, like their entity values; links to erased users are dropped, never kept."""
    if users is None or not columns:
        return pl.DataFrame(schema=USER_LINKS_SCHEMA)
    missing = [c for c in columns if c not in users.columns]
    if missing:
        raise ValueError(f"user link column(s) {missing} are not in the user table ({users.columns})")
    long = (users.select(ROW, "user_id", *[pl.col(c).cast(pl.String) for c in columns])
            .unpivot(index=[ROW, "user_id"], on=columns, variable_name="relation", value_name="linked_user_id")
            .with_columns(pl.col("linked_user_id").str.split(ENTITY_VALUE_SEPARATOR)).explode("linked_user_id")
            .with_columns(pl.col("linked_user_id").str.strip_chars())
            .filter(pl.col("linked_user_id").is_not_null() & (pl.col("linked_user_id") != "")
                    & ~pl.col("linked_user_id").is_in(list(erased))))
    long = encoder.encode(long, "user_id")
    long = encoder.encode(long.rename({"user_idx": "_src"}), "linked_user_id").rename(
        {"user_idx": "linked_user_idx", "_src": "user_idx"})
    # A user-table row of a user without events is ignored, as its entity values are; its links too.
    long = long.filter(pl.col("user_idx") > 0)
    bad = long.filter(pl.col("linked_user_idx") == 0)
    quarantine.append(_as_strings(bad.select(ROW, "user_id", "relation", "linked_user_id").with_columns(
        pl.lit("users").alias("source"), pl.lit(UNKNOWN_LINKED_USER).alias("reason"))).lazy())
    good = long.filter(pl.col("linked_user_idx") > 0)
    return good.select(*USER_LINKS_SCHEMA).unique(maintain_order=True).cast(USER_LINKS_SCHEMA)


def run_etl(tables: RawTables, tenant: str, root: Path | None = None, cfg: ETLConfig | None = None,
            log=print, stages=None) -> ETLResult:
    """`stages`: where the stages that read every event run; None = this process (LocalStages), or a
    tapestry.etl.distributed.DaskStages (`tapestry etl --engine dask`). The artifacts are the same either way."""
    validate_tenant(tenant)
    cfg = cfg or ETLConfig()
    stages = stages or LocalStages(select_polars_engine(cfg.polars_engine))
    erased = erased_user_ids(tenant, root)   # GDPR tombstones (`tapestry erase`): see tapestry/online/tombstones.py
    with tempfile.TemporaryDirectory(prefix="tapestry-etl-") as scratch:   # $TMPDIR; removed at the end
        return _run(tables, tenant, root, cfg, log, Path(scratch), erased, stages)


def _run(tables: RawTables, tenant: str, root: Path | None, cfg: ETLConfig, log, scratch: Path,
         erased: frozenset[str] = frozenset(), stages: LocalStages | None = None) -> ETLResult:
    t0 = time.perf_counter()
    stages = stages or LocalStages(select_polars_engine(cfg.polars_engine))
    good, bad_events, erased_rows = stages.validate(tables, cfg, scratch, erased)
    user_table, erased_user_rows = drop_erased_users(tables.users, erased)
    n_good = _height(good)
    input_rows = n_good + _height(bad_events) + erased_rows + sum(
        r.height for r in tables.rejected if r.height and r["source"][0] == "events"
    )
    if n_good == 0:
        raise ValueError(f"no valid events for tenant {tenant!r}: all {input_rows} rows were quarantined")

    users, items = stages.fit_ids(good)
    num_warm = len(items)     # item ids of items with events: 1 .. num_warm-1
    if cfg.cold_items:        # catalogue items without events get the ids after them (tapestry.etl.catalogue)
        items, _ = with_cold_items(items, tables.items)
    split_kind = FIXED if SPLIT_COLUMN in good.collect_schema().names() else LEAVE_ONE_OUT
    encoded = stages.encode_sorted(good, users, items, n_good, split_kind, scratch)
    splits = (fixed_split_sorted(encoded) if split_kind == FIXED
              else leave_one_out_tagged(encoded, cfg.min_user_events))

    quarantine = [_as_strings(bad_events)] + [_as_strings(r).lazy() for r in tables.rejected if r.height]
    item_table, item_entities = _entities(tables.items, "item_id", tables.item_entity_columns, items, quarantine)
    link_cols = list(tables.user_link_columns or [])
    user_good, user_entities = _entities(user_table, "user_id", tables.user_entity_columns, users, quarantine,
                                         tuple(link_cols))
    links = _user_links(user_good, link_cols, users, quarantine, erased) if link_cols else None
    if item_table is None:
        item_table = pl.DataFrame({"item_id": []}, schema={"item_id": pl.String})
    title_col = next((c for c in ("title", "name") if c in item_table.columns), None)
    titles = item_table.select("item_id", pl.col(title_col).alias("title") if title_col
                               else pl.lit(None, dtype=pl.String).alias("title"))
    items_out = items.mapping.join(titles, on="item_id", how="left").select("item_idx", "item_id", "title")
    if cfg.cold_items:
        items_out = items_out.with_columns((pl.col("item_idx") < num_warm).alias(HAS_EVENTS))
    # The item content table (None without an item table) and quarantine rows for its unparsable numbers.
    content, bad_content = etl_item_content(tables, items_out, len(items), item_entities)
    if bad_content.height:
        quarantine.append(_as_strings(bad_content).lazy())

    qlf = pl.concat(quarantine, how="diagonal_relaxed")
    q_counts = qlf.group_by("source", "reason").len().collect()
    if q_counts.height == 0:   # an empty quarantine file has just the key columns
        qlf = pl.DataFrame(schema={ROW: pl.Int64, "source": pl.String, "reason": pl.String}).lazy()
    by_reason = dict(q_counts.group_by("reason").agg(pl.col("len").sum()).sort("reason").iter_rows())
    q_events = int(q_counts.filter(pl.col("source") == "events")["len"].sum())

    with new_version(tenant, "etl", root) as v:
        out = v.tmp
        cols = EVENT_OUT_COLUMNS + extra_event_columns(good.collect_schema().names(), cfg)
        # Streamed from the sorted scratch file straight into the version directory.
        pl.collect_all([encoded.select(cols).sink_parquet(out / "events.parquet", lazy=True),
                        *[splits[name].select(cols).sink_parquet(out / f"{name}.parquet", lazy=True)
                          for name in ("train", "valid", "test")],
                        qlf.sink_parquet(out / "quarantine.parquet", lazy=True)],
                       engine=sink_engine(getattr(stages, "engine", "cpu")))
        split = {name: pl.scan_parquet(out / f"{name}.parquet") for name in ("train", "valid", "test")}
        users.save(out / "user_map.parquet")
        items.save(out / "item_map.parquet")
        items_out.write_parquet(out / "items.parquet")
        empty_ent = {"entity_type": pl.String, "entity_value": pl.String}
        (item_entities if item_entities is not None else pl.DataFrame(schema={"item_idx": pl.Int64, **empty_ent})
         ).write_parquet(out / "item_entities.parquet")
        (user_entities if user_entities is not None else pl.DataFrame(schema={"user_idx": pl.Int64, **empty_ent})
         ).write_parquet(out / "user_entities.parquet")
        if links is not None:      # only for tables that declare link columns: other artifacts are unchanged
            links.write_parquet(out / "user_links.parquet")
        manifest = {
            "tenant": tenant,
            "sources": tables.sources,
            "split": split_kind,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {"event_types": list(cfg.event_types), "min_timestamp": cfg.min_timestamp,
                       "max_timestamp": cfg.max_timestamp, "min_user_events": cfg.min_user_events,
                       "context_columns": list(cfg.context_columns),
                       **({"cold_items": True} if cfg.cold_items else {})},
            "counts": {
                "input_rows": input_rows,
                "valid_rows": n_good,
                "quarantined_rows": q_events,
                "quarantined_entity_rows": int(q_counts["len"].sum()) - q_events,
                "erased_rows": erased_rows, "erased_user_rows": erased_user_rows,   # tombstoned users, not kept
                "by_reason": by_reason,
                "train_rows": _height(split["train"]), "valid_rows_split": _height(split["valid"]),
                "test_rows": _height(split["test"]),
                "split_users": {name: lf.select(pl.col("user_idx").n_unique()).collect().item()
                                for name, lf in split.items()},
                # Only a fixed split can put a user in test without any training history (a cold-start user).
                "test_users_without_train": _height(split["test"].select("user_idx").unique().join(
                    split["train"].select("user_idx").unique(), on="user_idx", how="anti")),
            },
            "num_users": len(users),
            "num_items": len(items),
            **({"user_links": {"columns": link_cols, "rows": links.height}} if links is not None else {}),
            "catalog_items_without_events": int(item_table.filter(~pl.col("item_id").is_in(
                items.mapping.filter(pl.col("item_idx") < num_warm)["item_id"].implode())).height),
            **({"num_items_with_events": num_warm} if cfg.cold_items else {}),
            **write_etl_item_content(out, content),
        }
        atomic_write_json(out / "manifest.json", manifest)
    manifest["version"] = v.path.name
    atomic_write_json(v.path / "manifest.json", manifest)
    c = manifest["counts"]
    log(f"[etl] tenant={tenant} {v.path.name}: {c['input_rows']:,} event rows -> {c['valid_rows']:,} valid, "
        f"{c['quarantined_rows']:,} quarantined {by_reason or ''}; {len(users) - 1:,} users, {len(items) - 1:,} items; "
        f"{split_kind} train/valid/test = {c['train_rows']:,}/{c['valid_rows_split']:,}/{c['test_rows']:,} "
        f"({time.perf_counter() - t0:.1f}s) -> {v.path}")
    return ETLResult(v.path, manifest)
