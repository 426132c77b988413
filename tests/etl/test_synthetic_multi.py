"""The multi-behaviour generator: every row passes the ETL validation, the funnel keeps its proportions, queries
and context columns survive the ETL, cold items have content but no events, and the same seed gives the same table."""
from __future__ import annotations

import polars as pl
import pytest

from tapestry.etl import run_etl
from tapestry.etl.synthetic_multi import (CONTEXT_COLUMNS, FUNNEL, MULTI_ETL_CONFIG, MultiBehaviourConfig,
                                          multi_behaviour_events, multi_behaviour_tables)
from tapestry.etl.validate import validate_events


@pytest.fixture(scope="module")
def cfg():
    return MultiBehaviourConfig(num_users=300, num_items=200, num_sessions=4_000, cold_items=10, seed=3)


@pytest.fixture(scope="module")
def events(cfg):
    return multi_behaviour_tables(cfg).events.collect()


def test_every_row_passes_validation_with_the_optional_columns_typed(events):
    good, bad = pl.collect_all(validate_events(events.lazy(), MULTI_ETL_CONFIG))
    assert bad.height == 0 and good.height == events.height
    assert {"query", "dwell", "price", *CONTEXT_COLUMNS} <= set(good.columns)
    assert good["dwell"].dtype == pl.Float32 and good["price"].dtype == pl.Float32


def test_funnel_proportions_follow_the_configured_probabilities(cfg, events):
    n = events["event_type"].value_counts()
    count = dict(zip(n["event_type"], n["count"]))
    assert set(count) == set(FUNNEL)
    for parent, child, p in (("view", "click", cfg.p_click), ("click", "add_to_cart", cfg.p_cart),
                             ("add_to_cart", "purchase", cfg.p_purchase)):
        assert abs(count[child] / count[parent] - p) < 0.05, (parent, child, count)
    # Each stage is its parent's item, 1 s later, in the same session: a purchase always follows a cart.
    prev = events.with_columns(pl.col("event_type").shift(1).alias("prev"), pl.col("item_id").shift(1).alias("pi"))
    purchases = prev.filter(pl.col("event_type") == "purchase")
    assert (purchases["prev"] == "add_to_cart").all() and (purchases["pi"] == purchases["item_id"]).all()


def test_only_views_carry_dwell_and_queries_only_a_sessions_first_event(events):
    views = events["event_type"] == "view"
    assert events.filter(views)["dwell"].null_count() == 0 and events.filter(~views)["dwell"].null_count() == \
        events.filter(~views).height
    firsts = events.with_columns(pl.col("session_id").is_first_distinct().alias("first"))
    assert firsts.filter(~pl.col("first"))["query"].null_count() == firsts.filter(~pl.col("first")).height
    share = firsts.filter(pl.col("first"))["query"].is_not_null().mean()
    assert 0.4 < share < 0.6                                    # p_query = 0.5
    priced = events.filter(pl.col("event_type").is_in(["add_to_cart", "purchase"]))
    assert priced["price"].null_count() == 0


def test_items_fall_in_the_users_favourite_category(cfg, events):
    """Planted signal: most of a user's items share one category (p_in_category = 0.8)."""
    cat = events.select("user_id", (pl.col("item_id").str.slice(1).cast(pl.Int64) % cfg.num_categories).alias("c"))
    top = cat.group_by("user_id", "c").len().group_by("user_id").agg(
        (pl.col("len").max() / pl.col("len").sum()).alias("share"))
    assert top["share"].mean() > 0.7


def test_the_etl_keeps_context_columns_and_cold_items_have_content_but_no_events(cfg, tmp_path):
    tables = multi_behaviour_tables(cfg)
    catalogue = tables.items.collect()
    assert catalogue.height == cfg.num_items + cfg.cold_items
    assert catalogue["title"].null_count() == 0 and catalogue["description"].null_count() == 0
    result = run_etl(tables, "multi", root=tmp_path, cfg=MULTI_ETL_CONFIG, log=lambda *a: None)
    train = pl.read_parquet(result.path / "train.parquet")
    assert {"query", "dwell", "price", "device", "location"} <= set(train.columns)
    assert result.manifest["counts"]["quarantined_rows"] == 0
    assert result.manifest["catalog_items_without_events"] >= cfg.cold_items
    cold_ids = {f"i{j}" for j in range(cfg.num_items, cfg.num_items + cfg.cold_items)}
    item_map = pl.read_parquet(result.path / "item_map.parquet")
    assert not cold_ids & set(item_map["item_id"])
    entity_types = set(pl.read_parquet(result.path / "item_entities.parquet")["entity_type"])
    assert entity_types == {"category", "brand"}


def test_deterministic_for_a_seed_and_different_across_seeds(cfg):
    small = MultiBehaviourConfig(num_users=50, num_items=40, num_sessions=100, seed=1)
    assert multi_behaviour_events(small).equals(multi_behaviour_events(small))
    other = MultiBehaviourConfig(num_users=50, num_items=40, num_sessions=100, seed=2)
    assert not multi_behaviour_events(small).equals(multi_behaviour_events(other))


def test_scales_to_a_million_rows_without_python_loops():
    big = multi_behaviour_events(MultiBehaviourConfig(num_users=20_000, num_items=5_000, num_sessions=150_000))
    assert big.height > 1_000_000
    assert big["source_row"].is_sorted() and big["source_row"][-1] == big.height - 1


@pytest.mark.parametrize("bad", [dict(views_per_session=(3, 2)), dict(p_click=1.5), dict(num_categories=0),
                                 dict(cold_items=-1)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        MultiBehaviourConfig(**bad)
