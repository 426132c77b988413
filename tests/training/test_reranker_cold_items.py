"""The feature reranker's tables with catalogue items that have no events (ETLConfig.cold_items): their popularity
and demographic lift are neutral (0), and the warm items' features are exactly those of the same ETL without them."""
import dataclasses

import numpy as np

from tapestry.etl import run_etl
from tapestry.etl.synthetic_multi import MULTI_ETL_CONFIG, MultiBehaviourConfig, multi_behaviour_tables
from tapestry.training.data import InteractionData
from tapestry.training.reranker import build_rerank_tables

PLANTED = MultiBehaviourConfig(num_users=60, num_items=40, num_sessions=400, cold_items=6, seed=1)


def test_cold_items_get_neutral_features_and_warm_items_keep_theirs(tmp_path):
    runs = {}
    for cold_items in (False, True):
        cfg = dataclasses.replace(MULTI_ETL_CONFIG, cold_items=cold_items)
        path = run_etl(multi_behaviour_tables(PLANTED), "t", root=tmp_path / str(cold_items), cfg=cfg,
                       log=lambda *a: None).path
        runs[cold_items] = (InteractionData.load(path), build_rerank_tables(InteractionData.load(path)))
    (plain_data, plain), (data, tables) = runs[False], runs[True]
    warm = plain_data.num_items
    assert data.num_items > warm
    assert np.all(tables.log_pop[warm:] == 0) and np.all(tables.demo_lift[:, warm:] == 0)
    np.testing.assert_allclose(tables.log_pop[:warm], plain.log_pop, rtol=1e-6)
    np.testing.assert_allclose(tables.demo_lift[:, :warm], plain.demo_lift, rtol=1e-5, atol=1e-6)
    assert tables.item_entity[warm:].any(axis=1).all()       # their brand/category still count (entity affinity)
