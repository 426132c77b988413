"""The fusion reranker served: a tiny tenant trained with `fusion` in its line-up exports it into the rerank stage;
the real Triton server's answer equals the in-process pipeline's over HTTP and gRPC, and the in-process pipeline
ranks as the offline FusionRecommender does (same candidates, same order)."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServer
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.pipeline import run_train

from .conftest import served_and_local

pytestmark = pytest.mark.integration
TENANT = "fusiontiny"
QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts-fusion")
    etl = run_etl(synthetic_tables(num_users=200, num_items=100, seed=0), TENANT, root, **QUIET)
    cfg = TrainConfig.smoke(models=("popularity", "lightgcn", "sasrec_lightgcn", "fusion"))
    trained = run_train(TENANT, root, cfg, **QUIET)
    # Asked for by name: whether a smoke-sized fusion wins on validation is not what this test is about.
    return run_export(TENANT, root, max_k=20, use_ranker="fusion", **QUIET), etl.path, trained.path


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


def test_export_serves_the_fusion_reranker(exported, local):
    manifest = json.loads((exported[0].artifact_dir / "manifest.json").read_text())
    assert manifest["reranker"] == "fusion" and manifest["ranker_model"] == "fusion"
    choice = manifest["reranker_choice"]
    assert choice["chosen"] == "fusion" and choice["rule"] == "requested"
    assert set(choice["scores"]) == {"feature", "fusion"} and all(v is not None for v in choice["scores"].values())
    assert (exported[0].artifact_dir / "fusion_ranker.pt").exists()
    assert type(local.stages[-1].reranker).__name__ == "FusionReranker"


def test_in_process_pipeline_ranks_as_the_offline_ranker(exported, local):
    export, etl_dir, models_dir = exported
    data = InteractionData.load(etl_dir)
    retriever = Recommender.load(models_dir / "sasrec_lightgcn.pt", device="cpu")
    ranker = Recommender.load(models_dir / "fusion.pt", device="cpu")
    ranker.bind({"sasrec_lightgcn": retriever, "lightgcn": Recommender.load(models_dir / "lightgcn.pt", device="cpu")})
    history = data.sequences(("train", "valid", "test"))          # serving sees every event
    user_map = pl.read_parquet(etl_dir / "user_map.parquet")
    item_id = dict(data.items.select("item_idx", "item_id").iter_rows())
    for user_id, u in user_map.head(3).iter_rows():
        served = local.recommend(TENANT, user_id, k=10)
        items, scores = ranker.recommend(u, history[u], k=10)
        assert served.item_ids == [item_id[i] for i in items]
        np.testing.assert_allclose(served.scores, scores, rtol=1e-5, atol=1e-5)
        assert served.strategy == "personalized"


@pytest.fixture(scope="module")
def server(exported):
    with TritonServer(exported[0].model_repository) as s:
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answer_equals_in_process(exported, server, local, protocol):
    users = pl.read_parquet(exported[1] / "user_map.parquet")["user_id"].to_list()
    for served, expected in served_and_local(server, local, protocol, TENANT, [users[0], users[50], users[-1]]):
        assert served.item_ids == expected.item_ids
        np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-5)
        # Log-probabilities over the candidates: negative, best first.
        assert all(s <= 0 for s in served.scores) and served.scores == sorted(served.scores, reverse=True)
