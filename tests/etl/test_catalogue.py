"""run_etl and the item catalogue (issue 19): the content table beside the artifacts, bad content numbers
quarantined with a reason, ids for catalogue items without events only when asked, and nothing new otherwise."""
from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from tapestry.config import ETLConfig
from tapestry.etl import run_etl
from tapestry.etl.content import CONTENT_FILE, load_item_content
from tapestry.etl.schema import BAD_CONTENT_VALUE
from tapestry.etl.sources import RawTables
from tapestry.training.data import InteractionData

QUIET = dict(log=lambda *a, **k: None)


def _shop(numeric=("price",)) -> RawTables:
    events = pl.DataFrame({"user_id": ["u1"] * 3 + ["u2"] * 3, "item_id": ["a", "b", "c", "b", "c", "a"],
                           "event_type": ["view"] * 6, "timestamp": [str(1_600_000_000 + i) for i in range(6)]})
    items = pl.DataFrame({"item_id": ["a", "b", "c", "new1", "new2", "=bad"],
                          "title": ["red shoe", "blue shoe", "green hat", "red hat", "blue scarf", "x"],
                          "brand": ["acme", "acme", "hatco", "hatco", "acme", "acme"],
                          "price": ["10", "12.5", "oops", "8", "", "nan?"]})
    with_row = lambda df: df.with_row_index("source_row").with_columns(pl.col("source_row").cast(pl.Int64))  # noqa
    return RawTables(events=with_row(events).lazy(), items=with_row(items).lazy(), item_entity_columns=["brand"],
                     item_numeric_columns=list(numeric))


def test_content_table_is_written_beside_the_artifacts_and_bad_numbers_are_quarantined(tmp_path):
    res = run_etl(_shop(), "shop", root=tmp_path, **QUIET)
    data = InteractionData.load(res.path)
    content = load_item_content(data)
    assert (res.path / CONTENT_FILE).exists() and res.manifest["item_content"]["numeric_columns"] == 1
    assert data.num_items == 4 and content.num_warm == 4 and len(content) == 6   # new1, new2 appended (no ids)
    row = {i: r for r, i in enumerate(content.item_ids)}
    assert content.text[row["new1"]] == "red hat" and content.categories[row["new1"]] == ["brand=hatco"]
    assert content.numeric[row["c"], 0] == 0.0                     # unparsable -> missing (the mean)
    q = pl.read_parquet(res.path / "quarantine.parquet")
    bad = q.filter(pl.col("reason") == BAD_CONTENT_VALUE)
    assert bad.select("item_id", "column", "value", "source").rows() == [("c", "price", "oops", "items")]
    assert q.filter(pl.col("reason") == "bad_entity_id").height == 1   # the bad id row, as before, once
    assert "=bad" not in content.item_ids


def test_cold_items_option_gives_catalogue_items_ids_after_the_items_with_events(tmp_path):
    plain = run_etl(_shop(), "shop", root=tmp_path / "a", **QUIET)
    res = run_etl(_shop(), "shop", root=tmp_path / "b", cfg=ETLConfig(cold_items=True), **QUIET)
    items = pl.read_parquet(res.path / "items.parquet")
    assert items.filter(~pl.col("has_events"))["item_id"].to_list() == ["new1", "new2"]
    assert items.filter(~pl.col("has_events"))["item_idx"].to_list() == [4, 5]
    # Warm ids are the same as without the option; events and splits are untouched.
    assert pl.read_parquet(res.path / "item_map.parquet").head(3).equals(pl.read_parquet(plain.path / "item_map.parquet"))
    for name in ("events", "train", "valid", "test"):
        assert pl.read_parquet(res.path / f"{name}.parquet").equals(pl.read_parquet(plain.path / f"{name}.parquet"))
    assert res.manifest["num_items"] == 6 and res.manifest["num_items_with_events"] == 4
    assert res.manifest["catalog_items_without_events"] == 2
    ents = pl.read_parquet(res.path / "item_entities.parquet")
    assert ents.filter(pl.col("item_idx") == 4)["entity_value"].to_list() == ["hatco"]   # graph neighbours
    content = load_item_content(InteractionData.load(res.path))
    assert len(content) == 6 and content.num_warm == 4 and content.etl_items == 6
    assert content.item_ids[4:] == ["new1", "new2"] and content.text[5] == "blue scarf"


def test_data_sets_without_an_item_table_write_nothing_new(tmp_path):
    shop = _shop()
    res = run_etl(RawTables(events=shop.events), "t", root=tmp_path, cfg=ETLConfig(cold_items=True), **QUIET)
    assert not (res.path / CONTENT_FILE).exists() and "item_content" not in res.manifest
    assert pl.read_parquet(res.path / "items.parquet")["has_events"].all()


def test_a_declared_content_column_the_item_table_lacks_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="weight_kg"):
        run_etl(_shop(numeric=("weight_kg",)), "shop", root=tmp_path, **QUIET)
    assert not (tmp_path / "shop" / "etl").exists() or not any((tmp_path / "shop" / "etl").glob("v*"))


def test_cli_flag_sets_the_option():
    from tapestry.cli import build_parser, etl_config

    base = ["etl", "--tenant", "t", "--dataset", "ml-100k"]
    assert etl_config(build_parser().parse_args([*base, "--cold-items"])).cold_items is True
    assert etl_config(build_parser().parse_args(base)).cold_items is False
