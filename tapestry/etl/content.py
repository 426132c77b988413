"""Item content as one table per tenant (issue 19): text, categorical and numeric columns of the item catalogue,
indexed like the ETL's items, with catalogue items that have NO events appended after them (cold items).

Why here (the ETL side) and not in the model: the table is plain data derived from the tenant's item table and
the ETL's item map; the encoders (tapestry.models.content) turn it into vectors, and any model may read it.

Index space ("catalogue index"): 0 = padding; 1 .. num_items-1 = the ETL's item_idx (items with events, the
same rows every other model scores); num_items .. = cold items, in catalogue order. A warm item's vectors
therefore line up with every other model's item table, and cold items extend it. With ETLConfig.cold_items the
ETL gives the cold items ids itself (the last ones, `has_events` False: tapestry.etl.catalogue): then the table
has exactly the ETL's rows, `num_warm` marks where the cold ones start, and every model's table covers them.
`run_etl` writes the table whenever the tenant has an item table (tapestry.etl.catalogue).

Two sources:
- `item_content_from_etl(data)`: what the ETL artifacts already hold (items.parquet titles, item_entities.parquet
  categories): no cold items, no description or numeric columns;
- `item_content_from_catalogue(data, items, ...)`: the tenant's raw item table (RawTables.items): every text,
  categorical and numeric column it names, and its items without events become cold items. Rows failing the id
  policy are dropped (the ETL quarantines them; their ids could not be served anyway).
`write_item_content(etl_dir, content)` stores it beside the ETL artifacts (item_content.parquet, atomically), and
`load_item_content(data)` prefers that file, else falls back to the ETL-derived table.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.etl.schema import ENTITY_VALUE_SEPARATOR
from tapestry.etl.validate import validate_entities

CONTENT_FILE = "item_content.parquet"
DEFAULT_TEXT_COLUMNS = ("title", "description")


@dataclass
class ItemContent:
    """Row r = catalogue index r (row 0: padding, empty). `categories` holds `type=value` tokens (the entity
    values, e.g. `genre=Comedy`, `brand=b12`); `numeric` is standardised (mean 0, sd 1; missing = 0)."""
    item_ids: list[str | None]
    text: list[str]
    categories: list[list[str]]
    numeric: np.ndarray                 # [N, F] float32, F may be 0
    num_warm: int                       # 1 + the number of items with events: rows >= num_warm are cold items
    # The ETL's num_items (rows below it are the ETL's item ids). None: num_warm, cold items appended after the
    # ETL's items; with ETLConfig.cold_items the ETL indexes them too (tapestry.etl.catalogue): then == len(self).
    num_etl_items: int | None = None

    def __post_init__(self):
        n = len(self.item_ids)
        if not (len(self.text) == len(self.categories) == self.numeric.shape[0] == n) or self.num_warm > n:
            raise ValueError("ItemContent columns must all have one row per catalogue index")
        if not self.num_warm <= self.etl_items <= n:
            raise ValueError(f"num_etl_items {self.num_etl_items} must lie in [num_warm {self.num_warm}, rows {n}]")

    @property
    def etl_items(self) -> int:
        return self.num_warm if self.num_etl_items is None else self.num_etl_items

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def num_cold(self) -> int:
        return len(self) - self.num_warm

    def category_pairs(self) -> pl.DataFrame:
        """Long (catalogue_idx, entity_type, entity_value), for linking items (cold ones too) to entity nodes."""
        rows = [(i, *tok.split("=", 1)) for i, toks in enumerate(self.categories) for tok in toks]
        return pl.DataFrame(rows, schema={"catalogue_idx": pl.Int64, "entity_type": pl.String,
                                          "entity_value": pl.String}, orient="row")


def _standardise(values: np.ndarray) -> np.ndarray:
    """log1p for non-negative skewed columns (prices, counts), then z-score; NaN (missing) -> 0 = the mean."""
    out = values.astype(np.float64)
    for j in range(out.shape[1]):
        col = out[:, j]
        if np.nanmin(col, initial=0.0) >= 0:
            col = np.log1p(col)
        mu, sd = np.nanmean(col) if np.isfinite(col).any() else 0.0, np.nanstd(col) if np.isfinite(col).any() else 1.0
        out[:, j] = np.nan_to_num((col - mu) / (sd or 1.0), nan=0.0)
    return out.astype(np.float32)


def item_content_from_etl(data) -> ItemContent:
    """From the ETL artifacts of an InteractionData: titles + entity values of the items with events."""
    n = data.num_items
    text = [""] * n
    ids: list[str | None] = [None] * n
    for idx, item_id, title in data.items.select("item_idx", "item_id", "title").iter_rows():
        ids[idx], text[idx] = item_id, title or ""
    cats: list[list[str]] = [[] for _ in range(n)]
    for idx, etype, value in data.item_entities.select("item_idx", "entity_type", "entity_value").iter_rows():
        cats[idx].append(f"{etype}={value}")
    # With ETLConfig.cold_items the ETL's last items have no events (items.parquet: has_events False).
    cold = int((~data.items["has_events"]).sum()) if "has_events" in data.items.columns else 0
    return ItemContent(ids, text, cats, np.zeros((n, 0), dtype=np.float32), n - cold, n)


def item_content_from_catalogue(data, items: pl.DataFrame | pl.LazyFrame, category_columns: list[str],
                                text_columns: tuple[str, ...] = DEFAULT_TEXT_COLUMNS,
                                numeric_columns: tuple[str, ...] = ()) -> ItemContent:
    """The tenant's item table (all-string columns, `item_id` + the named ones) joined to the ETL's item map.

    Text columns are joined with " . "; a categorical value `a|b` gives two tokens; a numeric value that does not
    parse is missing. Columns the table lacks are a clear error (a tenant config naming a column it does not have).
    """
    frame = items.collect() if isinstance(items, pl.LazyFrame) else items
    wanted = [*text_columns, *category_columns, *numeric_columns]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"item table has no column(s) {missing}; it has {frame.columns}")
    good, _bad = (f.collect() for f in validate_entities(frame.lazy(), "item_id", "items"))
    good = good.unique("item_id", keep="first", maintain_order=True)
    item_map = data.items.select("item_id", "item_idx")
    joined = good.join(item_map, on="item_id", how="left", maintain_order="left")
    cold = joined.filter(pl.col("item_idx").is_null())
    cold = cold.with_columns((data.num_items + pl.int_range(pl.len())).cast(pl.Int64).alias("item_idx"))
    rows = pl.concat([joined.filter(pl.col("item_idx").is_not_null()), cold]).sort("item_idx")
    n = data.num_items + cold.height

    ids: list[str | None] = [None] * n
    for idx, item_id in rows.select("item_idx", "item_id").iter_rows():
        ids[idx] = item_id
    # Warm items missing from the catalogue keep their ETL title and entity values (never less than the ETL had).
    base = item_content_from_etl(data)
    text = base.text + [""] * cold.height
    cats = base.categories + [[] for _ in range(cold.height)]
    for i, item_id in enumerate(base.item_ids):
        ids[i] = ids[i] or item_id
    text_expr = pl.concat_str([pl.col(c).cast(pl.String).str.strip_chars() for c in text_columns],
                              separator=" . ", ignore_nulls=True) if text_columns else pl.lit("")
    for idx, t in rows.select("item_idx", text_expr.fill_null("").alias("_t")).iter_rows():
        if t:
            text[idx] = t
    for c in category_columns:
        values = rows.select("item_idx", pl.col(c).cast(pl.String).str.split(ENTITY_VALUE_SEPARATOR).alias("_v"))
        for idx, vs in values.iter_rows():
            toks = [f"{c}={v.strip()}" for v in (vs or []) if v and v.strip()]
            cats[idx] = list(dict.fromkeys(cats[idx] + toks))
    numeric = np.full((n, len(numeric_columns)), np.nan)
    idx_arr = rows["item_idx"].to_numpy()
    for j, c in enumerate(numeric_columns):
        numeric[idx_arr, j] = rows[c].cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False) \
            .fill_null(np.nan).to_numpy()
    if cold.height:       # cold items appended after the ETL's items
        return ItemContent(ids, text, cats, _standardise(numeric), data.num_items)
    # None appended: either every catalogue item has events, or the ETL gave the cold ones ids (has_events).
    return ItemContent(ids, text, cats, _standardise(numeric), base.num_warm, data.num_items)


def write_item_content(etl_dir: Path, content: ItemContent) -> Path:
    """Store the table beside the ETL artifacts, atomically (temp file + rename): readers see all or nothing."""
    etl_dir = Path(etl_dir)
    frame = pl.DataFrame({
        "catalogue_idx": np.arange(len(content), dtype=np.int64), "item_id": content.item_ids,
        "text": content.text, "categories": content.categories,
        "numeric": [row.tolist() for row in content.numeric],
    }, schema={"catalogue_idx": pl.Int64, "item_id": pl.String, "text": pl.String,
               "categories": pl.List(pl.String), "numeric": pl.List(pl.Float32)})
    fd, tmp = tempfile.mkstemp(dir=etl_dir, prefix=".item_content-", suffix=".parquet")
    os.close(fd)
    try:
        frame.write_parquet(tmp, metadata={"num_warm": str(content.num_warm), "num_etl_items": str(content.etl_items),
                                           "num_numeric": str(content.numeric.shape[1])})
        os.replace(tmp, etl_dir / CONTENT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return etl_dir / CONTENT_FILE


def load_item_content(data) -> ItemContent:
    """The stored catalogue table if the ETL directory has one (and it matches the ETL's items), else the
    ETL-derived one."""
    path = Path(data.path) / CONTENT_FILE
    if not path.exists():
        return item_content_from_etl(data)
    meta = pl.read_parquet_metadata(path)
    frame = pl.read_parquet(path).sort("catalogue_idx")
    etl_items = int(meta.get("num_etl_items", meta["num_warm"]))   # files written before cold items had ids
    if etl_items != data.num_items:
        raise ValueError(f"{path} was built for {etl_items} ETL items, this ETL has {data.num_items}: "
                         "rebuild it (write_item_content) after the ETL run")
    f = int(meta["num_numeric"])
    numeric = np.asarray(frame["numeric"].to_list(), dtype=np.float32).reshape(frame.height, f)
    return ItemContent(frame["item_id"].to_list(), [t or "" for t in frame["text"].to_list()],
                       [list(c or []) for c in frame["categories"].to_list()], numeric, int(meta["num_warm"]),
                       etl_items)
