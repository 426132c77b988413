"""The DLRM ranker served: a tiny tenant trained with `dlrm` in its line-up exports the ranker (the unsharded
inference module) into the rerank stage; the real Triton server's answer equals the in-process pipeline's, and the
in-process pipeline ranks as the offline DLRMRecommender does (same candidates, same order)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

try:            # `make install` installs TorchRec: a missing one is a broken install, never a reason to skip
    import torchrec  # noqa: F401
except ImportError as e:
    raise ImportError(f"TorchRec does not import ({e}): the DLRM tests need it; run `make install` "
                      "(fbgemm-gpu-cpu, then torchrec --no-deps)") from e

from tapestry.config import TrainConfig  # noqa: E402
from tapestry.ensembles import run_export  # noqa: E402
from tapestry.etl import run_etl  # noqa: E402
from tapestry.etl.synthetic import synthetic_tables  # noqa: E402
from tapestry.serving.pipeline import RecommendPipeline  # noqa: E402
from tapestry.serving.triton_server import TritonServer  # noqa: E402
from tapestry.training.base import Recommender  # noqa: E402
from tapestry.training.data import InteractionData  # noqa: E402
from tapestry.training.pipeline import run_train  # noqa: E402

from .conftest import served_and_local  # noqa: E402

pytestmark = pytest.mark.integration
TENANT = "dlrmtiny"
QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts-dlrm")
    etl = run_etl(synthetic_tables(num_users=200, num_items=100, seed=0), TENANT, root, **QUIET)
    cfg = TrainConfig.smoke(models=("popularity", "lightgcn", "sasrec_lightgcn", "dlrm"))
    trained = run_train(TENANT, root, cfg, **QUIET)
    return run_export(TENANT, root, max_k=20, **QUIET), etl.path, trained.path


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


def test_export_serves_the_dlrm(exported, local):
    import json

    manifest = json.loads((exported[0].artifact_dir / "manifest.json").read_text())
    assert manifest["reranker"] == "dlrm" and manifest["ranker_model"] == "dlrm"
    assert type(local.stages[-1].reranker).__name__ == "DLRMRanker"


def test_in_process_pipeline_ranks_as_the_offline_ranker(exported, local):
    export, etl_dir, models_dir = exported
    data = InteractionData.load(etl_dir)
    retriever = Recommender.load(models_dir / "sasrec_lightgcn.pt", device="cpu")
    ranker = Recommender.load(models_dir / "dlrm.pt", device="cpu")
    ranker.bind({"sasrec_lightgcn": retriever})
    history = data.sequences(("train", "valid", "test"))          # serving sees every event
    user_map = pl.read_parquet(etl_dir / "user_map.parquet")
    item_id = dict(data.items.select("item_idx", "item_id").iter_rows())
    for user_id, u in user_map.head(3).iter_rows():
        served = local.recommend(TENANT, user_id, k=10)
        items, _ = ranker.recommend(u, history[u], k=10)
        assert served.item_ids == [item_id[i] for i in items]
        assert served.strategy == "personalized"


@pytest.fixture(scope="module")
def server(exported):
    with TritonServer(exported[0].model_repository) as s:      # the rerank stub imports TorchRec: ~5 s more
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answer_equals_in_process(exported, server, local, protocol):
    users = pl.read_parquet(exported[1] / "user_map.parquet")["user_id"].to_list()
    for served, expected in served_and_local(server, local, protocol, TENANT, [users[0], users[50], users[-1]]):
        assert served.item_ids == expected.item_ids
        np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-5)
        # Calibrated log-probabilities over the candidates: negative, best first.
        assert all(s <= 0 for s in served.scores) and served.scores == sorted(served.scores, reverse=True)
