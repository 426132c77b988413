"""The item catalogue in the ETL (issue 19): the item content table, and ids for catalogue items without events.

Two things `run_etl` does with the tenant's item table, beyond the entity rows it always wrote:

- `item_content.parquet` (tapestry.etl.content): the text / categorical / numeric columns the adapter declares
  (RawTables.item_text_columns, item_entity_columns, item_numeric_columns), one row per item index, written with
  the other artifacts inside the version's temp directory (so it appears atomically with them). A declared numeric
  value that does not parse is quarantined (reason `bad_content_value`, source "items", with its column and value)
  and the item keeps its other content, that number missing: nothing lost, nothing guessed.
- with `ETLConfig.cold_items`, catalogue items that have NO events get item ids AFTER the items with events (so a
  warm item's index is the same with or without the option), `items.parquet` gains `has_events` (False for them)
  and every model's item table, the export's FAISS index and the served item list cover them: a brand-new item
  can be retrieved (by a model that gives it a vector from its content: lightgcn_content and the
  `content_history` retriever over it). Off by default: other data sets' artifacts are unchanged.
"""
from __future__ import annotations

from types import SimpleNamespace

import polars as pl

from tapestry.etl.content import CONTENT_FILE, ItemContent, item_content_from_catalogue, write_item_content
from tapestry.etl.encode import IdEncoder, _natural_order
from tapestry.etl.rawfiles import ROW
from tapestry.etl.schema import BAD_CONTENT_VALUE, ITEM_TEXT_COLUMNS
from tapestry.etl.validate import validate_entities

HAS_EVENTS = "has_events"


def with_cold_items(items: IdEncoder, item_table: pl.LazyFrame | None) -> tuple[IdEncoder, int]:
    """The item encoder extended by the valid catalogue ids it lacks (natural id order, after every item with
    events), and how many were added. Invalid catalogue rows are left to the entity validation (quarantined)."""
    if item_table is None:
        return items, 0
    good, _bad = validate_entities(item_table, "item_id", "items")
    ids = good.select(pl.col("item_id").cast(pl.String)).unique().collect()["item_id"].drop_nulls()
    new = _natural_order(ids.filter(~ids.is_in(items.mapping["item_id"].implode())))
    if new.len() == 0:
        return items, 0
    start = items.mapping.height + 1
    extra = pl.DataFrame({"item_id": new, "item_idx": pl.int_range(start, start + new.len(), eager=True)}
                         ).with_columns(pl.col("item_idx").cast(pl.Int64))
    return IdEncoder(items.name, pl.concat([items.mapping, extra])), new.len()


def content_columns(tables, item_table: pl.DataFrame) -> tuple[tuple[str, ...], list[str], tuple[str, ...]]:
    """(text, categorical, numeric) content columns: the adapter's declarations, else the item table's text
    columns (ITEM_TEXT_COLUMNS), its entity columns and no numbers."""
    numeric = tuple(tables.item_numeric_columns or ())
    text = tuple(tables.item_text_columns if tables.item_text_columns is not None
                 else [c for c in ITEM_TEXT_COLUMNS if c in item_table.columns])
    if tables.item_entity_columns is not None:
        categories = [c for c in tables.item_entity_columns if c in item_table.columns]
    else:
        skip = {"item_id", ROW, *ITEM_TEXT_COLUMNS, *text, *numeric}
        categories = [c for c in item_table.columns if c not in skip]
    return text, categories, numeric


def bad_numbers(item_table: pl.DataFrame, numeric: tuple[str, ...]) -> pl.DataFrame:
    """Quarantine rows for declared numeric values that are present and not a finite number."""
    frames = []
    for col in numeric:
        value = pl.col(col).cast(pl.String).str.strip_chars()
        parsed = value.cast(pl.Float64, strict=False)
        bad = (value.is_not_null() & (value != "")) & (parsed.is_null() | ~parsed.is_finite())
        frames.append(item_table.filter(bad).select(
            *([pl.col(ROW)] if ROW in item_table.columns else []), pl.col("item_id").cast(pl.String),
            pl.lit(col).alias("column"), value.alias("value"),
            pl.lit("items").alias("source"), pl.lit(BAD_CONTENT_VALUE).alias("reason")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def etl_item_content(tables, items_out: pl.DataFrame, num_items: int,
                     item_entities: pl.DataFrame) -> tuple[ItemContent | None, pl.DataFrame]:
    """(the content table for this ETL run, or None without an item table; quarantine rows for bad numbers).

    `items_out`: items.parquet's rows (item_idx, item_id, title, and `has_events` when cold items were given ids:
    the content table's `num_warm` then marks where they start)."""
    if tables.items is None:
        return None, pl.DataFrame()
    item_table = tables.items.collect()
    text, categories, numeric = content_columns(tables, item_table)
    missing = [c for c in (*text, *numeric) if c not in item_table.columns]
    if missing:
        raise ValueError(f"declared item content column(s) {missing} are not in the item table {item_table.columns}")
    # Rows whose id fails the policy are quarantined once, as bad ids (the entity validation), never twice.
    bad = bad_numbers(validate_entities(item_table.lazy(), "item_id", "items")[0].collect(), numeric)
    # What item_content_from_catalogue reads of an InteractionData, before the version exists.
    etl_view = SimpleNamespace(items=items_out, num_items=num_items, item_entities=item_entities)
    content = item_content_from_catalogue(etl_view, item_table, categories, text_columns=text,
                                          numeric_columns=numeric)
    return content, bad


def write_etl_item_content(out_dir, content: ItemContent | None) -> dict:
    """Write the table into the version's temp directory; the manifest's `item_content` entry."""
    if content is None:
        return {}
    write_item_content(out_dir, content)
    return {"item_content": {"file": CONTENT_FILE, "rows": len(content), "num_warm": content.num_warm,
                             "cold_items": content.num_cold, "numeric_columns": int(content.numeric.shape[1])}}
