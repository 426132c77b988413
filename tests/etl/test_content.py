"""The item content table: warm items keep the ETL's indices, catalogue items without events are appended as cold
items, bad ids are dropped, a misnamed column is a clear error, and the stored file round-trips atomically."""
from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from tapestry.etl import run_etl
from tapestry.etl.content import (CONTENT_FILE, item_content_from_catalogue, item_content_from_etl,
                                  load_item_content, write_item_content)
from tapestry.etl.synthetic_multi import MULTI_ETL_CONFIG, MultiBehaviourConfig, multi_behaviour_tables
from tapestry.training.data import InteractionData


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = MultiBehaviourConfig(num_users=60, num_items=40, num_sessions=300, cold_items=5, seed=2)
    tables = multi_behaviour_tables(cfg)
    path = run_etl(tables, "content", root=tmp_path_factory.mktemp("a"), cfg=MULTI_ETL_CONFIG,
                   log=lambda *a: None).path
    return cfg, tables.items.collect(), InteractionData.load(path)


def test_warm_items_keep_their_etl_index_and_cold_items_follow(setup):
    cfg, items, data = setup
    content = item_content_from_catalogue(data, items, ["category", "brand"], numeric_columns=("price",))
    assert content.num_warm == data.num_items and len(content) == data.num_items + content.num_cold
    assert content.num_cold >= cfg.cold_items
    for idx, item_id in data.items.select("item_idx", "item_id").iter_rows():
        assert content.item_ids[idx] == item_id
    catalogue = {r["item_id"]: r for r in items.iter_rows(named=True)}
    cold_id = f"i{cfg.num_items}"                      # the first cold item of the generator
    r = content.item_ids.index(cold_id)
    assert r >= data.num_items
    assert content.text[r] == f"{catalogue[cold_id]['title']} . {catalogue[cold_id]['description']}"
    assert content.categories[r] == [f"category={catalogue[cold_id]['category']}",
                                     f"brand={catalogue[cold_id]['brand']}"]
    assert content.text[0] == "" and content.categories[0] == [] and content.item_ids[0] is None
    assert content.numeric.shape == (len(content), 1) and abs(float(content.numeric[1:, 0].mean())) < 0.2


def test_bad_catalogue_ids_are_dropped_and_a_missing_column_is_named(setup):
    _, items, data = setup
    bad = pl.concat([items, items.head(1).with_columns(pl.lit("=cmd()").alias("item_id"))])
    content = item_content_from_catalogue(data, bad, ["category"])
    assert "=cmd()" not in content.item_ids
    with pytest.raises(ValueError, match=r"no column\(s\) \['colour'\]"):
        item_content_from_catalogue(data, items, ["colour"])


def test_etl_derived_content_has_titles_and_entities_but_no_cold_items(setup):
    _, _, data = setup
    content = item_content_from_etl(data)
    assert len(content) == data.num_items and content.num_cold == 0
    assert all(toks for toks in content.categories[1:])          # every item has a category and a brand
    assert content.text[1]


def test_written_table_round_trips_and_leaves_no_temp_file(setup, tmp_path):
    _, items, data = setup
    content = item_content_from_catalogue(data, items, ["category", "brand"], numeric_columns=("price",))
    etl_dir = tmp_path / "etl"
    etl_dir.mkdir()
    data_here = InteractionData(**{**data.__dict__, "path": etl_dir})
    assert load_item_content(data_here).num_cold == 0                  # no file: the ETL-derived table
    write_item_content(etl_dir, content)
    assert os.listdir(etl_dir) == [CONTENT_FILE]
    back = load_item_content(data_here)
    assert back.item_ids == content.item_ids and back.text == content.text
    assert back.categories == content.categories and np.array_equal(back.numeric, content.numeric)
    smaller = InteractionData(**{**data.__dict__, "path": etl_dir, "num_items": data.num_items - 1})
    with pytest.raises(ValueError, match="rebuild it"):
        load_item_content(smaller)


def test_movielens_titles_and_genres_become_content(ml100k_etl):
    """Real catalogue: every ML-100K movie gets its title text and its genre tokens (`a|b` split)."""
    from tapestry.config import datasets_dir
    from tapestry.etl.movielens import movielens_100k

    data = InteractionData.load(ml100k_etl)
    catalogue = movielens_100k(datasets_dir() / "ml-100k").items
    content = item_content_from_catalogue(data, catalogue, ["genre"], text_columns=("title",))
    assert content.num_cold == 0 and len(content) == data.num_items
    toy = content.item_ids.index("1")
    assert content.text[toy] == "Toy Story (1995)"
    assert set(content.categories[toy]) == {"genre=Animation", "genre=Children's", "genre=Comedy"}
