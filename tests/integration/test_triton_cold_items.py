"""A brand-new catalogue item (zero events) through the real Triton server (issue 19): served == in-process, and
the served top-10 holds a cold item of the user's favourite category.

The planted tenant of tests/ensembles/test_export_cold_items.py (text-only content, ETLConfig.cold_items,
lightgcn_content's vectors served by `content_history`), exported as by default (the feature reranker, which reads
a cold item's popularity and demographic lift as neutral).
"""
import dataclasses

import numpy as np
import polars as pl
import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic_multi import MULTI_ETL_CONFIG, MultiBehaviourConfig, multi_behaviour_tables
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServer
from tapestry.training.pipeline import run_train

from .conftest import served_and_local

pytestmark = pytest.mark.integration
QUIET = {"log": lambda *a, **k: None}
PLANTED = MultiBehaviourConfig(num_users=200, num_items=160, num_sessions=2_000, cold_items=16, seed=0)
CONTENT = dict(embedding_dim=32, num_layers=1, epochs=8, batch_size=512, text_buckets=2048, category_buckets=256,
               num_negatives=64, patience=0, entity_nodes=False)


@pytest.fixture(scope="module")
def cold_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("cold-triton")
    tables = multi_behaviour_tables(PLANTED)
    tables.item_entity_columns = []          # text only: a cold item's category is in its words
    run_etl(tables, "shop", root=root, cfg=dataclasses.replace(MULTI_ETL_CONFIG, cold_items=True), **QUIET)
    run_train("shop", root, TrainConfig.smoke(models=("popularity", "lightgcn_content", "content_history"),
                                              serve="content_history", session="",
                                              params={"lightgcn_content": CONTENT}), **QUIET)
    return run_export("shop", root, max_k=30, **QUIET)


@pytest.fixture(scope="module")
def cold_server(cold_export):
    with TritonServer(cold_export.model_repository) as s:
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_zero_event_items_are_served_by_triton_as_in_process(cold_server, cold_export, protocol):
    art = cold_export.artifact_dir
    cold = pl.read_parquet(art / "items.parquet").filter(~pl.col("has_events"))
    cold_category = {i: int(i[1:]) % PLANTED.num_categories for i in cold["item_id"].to_list()}
    favourite = np.random.default_rng([PLANTED.seed, 7]).integers(0, PLANTED.num_categories, PLANTED.num_users)
    users = pl.read_parquet(art / "users.parquet")["user_id"].head(12).to_list()
    local = RecommendPipeline.from_artifacts(art)
    hits = []
    for user, (served, expected) in zip(users, served_and_local(cold_server, local, protocol, "shop", users)):
        assert served.item_ids == expected.item_ids and served.strategy == expected.strategy == "personalized"
        np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
        hits.append(any(cold_category.get(i) == favourite[int(user[1:])] for i in served.item_ids))
    assert np.mean(hits) > 0.5, np.mean(hits)
