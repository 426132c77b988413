"""`tapestry etl`: validate -> encode -> split -> write a versioned artifact directory (atomically).

The split is leave-one-out unless the events carry a `split` column (a fixed, adapter-given split): see etl/split.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tapestry.artifacts import atomic_write_json, new_version
from tapestry.config import ETLConfig, validate_tenant
from tapestry.etl.encode import IdEncoder
from tapestry.etl.schema import ENTITY_VALUE_SEPARATOR, ITEM_TEXT_COLUMNS, SPLIT_COLUMN
from tapestry.etl.sources import ROW, RawTables
from tapestry.etl.split import FIXED, LEAVE_ONE_OUT, fixed_split, leave_one_out
from tapestry.etl.validate import validate_entities, validate_events

EVENT_OUT_COLUMNS = ["user_idx", "item_idx", "event_type", "timestamp", "weight", "session_id"]


@dataclass
class ETLResult:
    path: Path
    manifest: dict


def _entity_long(table: pl.DataFrame, id_col: str, columns: list[str] | None, encoder: IdEncoder) -> pl.DataFrame:
    """Wide attribute columns -> long (idx, entity_type, entity_value); `a|b` values become two rows."""
    skip = {id_col, ROW, *ITEM_TEXT_COLUMNS}
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


def _as_strings(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns([pl.col(c).cast(pl.String) for c in df.columns if c != ROW])


def run_etl(tables: RawTables, tenant: str, root: Path | None = None, cfg: ETLConfig | None = None,
            log=print) -> ETLResult:
    validate_tenant(tenant)
    cfg = cfg or ETLConfig()
    t0 = time.perf_counter()
    good_lf, bad_lf = validate_events(tables.events, cfg)
    good, bad_events = pl.collect_all([good_lf, bad_lf])
    input_rows = good.height + bad_events.height + sum(
        r.height for r in tables.rejected if r.height and r["source"][0] == "events"
    )
    if good.height == 0:
        raise ValueError(f"no valid events for tenant {tenant!r}: all {input_rows} rows were quarantined")

    users = IdEncoder.fit("user", good["user_id"])
    items = IdEncoder.fit("item", good["item_id"])
    encoded = items.encode(users.encode(good.lazy()))
    encoded = encoded.sort(["user_idx", "timestamp", ROW])
    split_kind = FIXED if SPLIT_COLUMN in good.columns else LEAVE_ONE_OUT
    splits = fixed_split(encoded) if split_kind == FIXED else leave_one_out(encoded, cfg.min_user_events)
    events_df, train, valid, test = pl.collect_all([encoded, splits["train"], splits["valid"], splits["test"]])
    split_users = {name: df["user_idx"].n_unique() for name, df in zip(("train", "valid", "test"), (train, valid, test))}

    quarantine = [_as_strings(bad_events)] + [_as_strings(r) for r in tables.rejected if r.height]
    item_table = pl.DataFrame({"item_id": []}, schema={"item_id": pl.String})
    item_entities = user_entities = None
    if tables.items is not None:
        item_table, bad_items = (f.collect() for f in validate_entities(tables.items, "item_id", "items"))
        quarantine.append(_as_strings(bad_items))
        item_table = item_table.unique("item_id", keep="first", maintain_order=True)
        item_entities = _entity_long(item_table, "item_id", tables.item_entity_columns, items)
    if tables.users is not None:
        user_table, bad_users = (f.collect() for f in validate_entities(tables.users, "user_id", "users"))
        quarantine.append(_as_strings(bad_users))
        user_table = user_table.unique("user_id", keep="first", maintain_order=True)
        user_entities = _entity_long(user_table, "user_id", tables.user_entity_columns, users)

    title_col = next((c for c in ("title", "name") if c in item_table.columns), None)
    titles = item_table.select("item_id", pl.col(title_col).alias("title") if title_col
                               else pl.lit(None, dtype=pl.String).alias("title"))
    items_out = items.mapping.join(titles, on="item_id", how="left").select("item_idx", "item_id", "title")
    qdf = pl.concat(quarantine, how="diagonal_relaxed") if quarantine else pl.DataFrame()
    if qdf.height == 0:
        qdf = pl.DataFrame(schema={ROW: pl.Int64, "source": pl.String, "reason": pl.String})
    by_reason = dict(qdf.group_by("reason").len().sort("reason").iter_rows()) if qdf.height else {}

    manifest = {
        "tenant": tenant,
        "sources": tables.sources,
        "split": split_kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"event_types": list(cfg.event_types), "min_timestamp": cfg.min_timestamp,
                   "max_timestamp": cfg.max_timestamp, "min_user_events": cfg.min_user_events},
        "counts": {
            "input_rows": input_rows,
            "valid_rows": events_df.height,
            "quarantined_rows": qdf.filter(pl.col("source") == "events").height if qdf.height else 0,
            "quarantined_entity_rows": qdf.filter(pl.col("source") != "events").height if qdf.height else 0,
            "by_reason": by_reason,
            "train_rows": train.height, "valid_rows_split": valid.height, "test_rows": test.height,
            "split_users": split_users,
            # Only a fixed split can put a user in test without any training history (a cold-start user).
            "test_users_without_train": test.select("user_idx").unique()
            .join(train.select("user_idx").unique(), on="user_idx", how="anti").height,
        },
        "num_users": len(users),
        "num_items": len(items),
        "catalog_items_without_events": int(item_table.filter(~pl.col("item_id").is_in(items.mapping["item_id"]
                                                                                      .implode())).height),
    }
    with new_version(tenant, "etl", root) as v:
        out = v.tmp
        cols = EVENT_OUT_COLUMNS
        events_df.select(cols).write_parquet(out / "events.parquet")
        for name, df in (("train", train), ("valid", valid), ("test", test)):
            df.select(cols).write_parquet(out / f"{name}.parquet")
        users.save(out / "user_map.parquet")
        items.save(out / "item_map.parquet")
        items_out.write_parquet(out / "items.parquet")
        empty_ent = {"entity_type": pl.String, "entity_value": pl.String}
        (item_entities if item_entities is not None else pl.DataFrame(schema={"item_idx": pl.Int64, **empty_ent})
         ).write_parquet(out / "item_entities.parquet")
        (user_entities if user_entities is not None else pl.DataFrame(schema={"user_idx": pl.Int64, **empty_ent})
         ).write_parquet(out / "user_entities.parquet")
        qdf.write_parquet(out / "quarantine.parquet")
        atomic_write_json(out / "manifest.json", manifest)
    manifest["version"] = v.path.name
    atomic_write_json(v.path / "manifest.json", manifest)
    c = manifest["counts"]
    log(f"[etl] tenant={tenant} {v.path.name}: {c['input_rows']:,} event rows -> {c['valid_rows']:,} valid, "
        f"{c['quarantined_rows']:,} quarantined {by_reason or ''}; {len(users) - 1:,} users, {len(items) - 1:,} items; "
        f"{split_kind} train/valid/test = {c['train_rows']:,}/{c['valid_rows_split']:,}/{c['test_rows']:,} "
        f"({time.perf_counter() - t0:.1f}s) -> {v.path}")
    return ETLResult(v.path, manifest)
