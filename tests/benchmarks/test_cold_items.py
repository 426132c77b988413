"""benchmarks/cold_items.py's protocol on a tiny planted tenant: held-out items lose every event and come back as
cold catalogue items; the recall it reports is bounded, and content beats no content on the cold-only ranking."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

from tapestry.etl import run_etl
from tapestry.etl.content import item_content_from_catalogue, write_item_content
from tapestry.etl.synthetic_multi import MULTI_ETL_CONFIG, MultiBehaviourConfig, multi_behaviour_tables
from tapestry.training.data import InteractionData
from tapestry.training.lightgcn_content import LightGCNContentRecommender

_SPEC = importlib.util.spec_from_file_location(
    "cold_items_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "cold_items.py")
cold_items = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cold_items)


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    tables = multi_behaviour_tables(MultiBehaviourConfig(num_users=150, num_items=120, num_sessions=1_500, seed=4))
    held = cold_items.hold_out(tables, 0.1, seed=0)
    path = run_etl(tables, "cold", root=tmp_path_factory.mktemp("a"), cfg=MULTI_ETL_CONFIG,
                   log=lambda *a: None).path
    data = InteractionData.load(path)
    write_item_content(path, item_content_from_catalogue(data, tables.items, [], text_columns=("title",)))
    return data, held


def test_held_out_items_have_no_events_and_become_cold(held_out_run):
    data, held = held_out_run
    assert held.height > 0
    held_items = set(held["item_id"])
    assert not held_items & set(pl.read_parquet(data.path / "item_map.parquet")["item_id"])
    assert len(held_items) == 12                                     # 10 % of 120


def test_cold_recall_is_bounded_and_content_beats_none(held_out_run):
    data, held = held_out_run
    tiny = dict(embedding_dim=16, num_layers=1, epochs=6, batch_size=1024, num_negatives=64, text_buckets=2048,
                category_buckets=256, patience=0, device="cpu", progress=False)
    with_content = cold_items.cold_recall(LightGCNContentRecommender(**tiny).fit(data), data, held)
    without = cold_items.cold_recall(LightGCNContentRecommender(content=False, **tiny).fit(data), data, held)
    assert with_content["cold_items"] == 12 and with_content["users"] > 0
    for k in cold_items.K:
        assert 0.0 <= with_content[f"cold_recall@{k}"] <= with_content[f"cold_only_recall@{k}"] <= 1.0
    assert with_content["cold_only_recall@10"] > without["cold_only_recall@10"]
