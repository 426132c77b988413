"""Multi-source candidates served: an ML-100K tenant (tiny models) exported with `--sources two_tower,graph_filter`
serves MultiSourceRetrieval in the real Triton ensemble; Triton's answer equals the in-process pipeline's over HTTP
and gRPC, and so do the retrieval stage's per-source tensors when the stage is called directly. An export of the
same run without sources is the single-source repository, unchanged."""
from __future__ import annotations

import filecmp
import json

import numpy as np
import polars as pl
import pytest

from tapestry.config import TrainConfig, datasets_dir
from tapestry.ensembles import run_export
from tapestry.ensembles.export import TEMPLATES
from tapestry.etl import run_etl
from tapestry.etl.movielens import movielens_100k
from tapestry.serving.multi_source import MISSING_RANK, MultiSourceRetrieval
from tapestry.serving.pipeline import RecommendPipeline, request_tensors
from tapestry.serving.triton_server import TritonServer
from tapestry.training.pipeline import run_train

from .conftest import served_and_local

pytestmark = pytest.mark.integration
TENANT = "multisource"
QUIET = {"log": lambda *a, **k: None}
MODELS = ("popularity", "lightgcn", "sasrec_lightgcn", "two_tower", "graph_filter")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = datasets_dir() / "ml-100k"
    if not (directory / "u.item").exists():
        pytest.skip(f"MovieLens-100K not found under {directory} (set TAPESTRY_DATASETS)")
    root = tmp_path_factory.mktemp("artifacts-multi-source")
    etl = run_etl(movielens_100k(directory), TENANT, root, **QUIET)
    run_train(TENANT, root, TrainConfig.smoke(models=MODELS), **QUIET)
    plain = run_export(TENANT, root, max_k=20, **QUIET)
    multi = run_export(TENANT, root, max_k=20, sources="two_tower,graph_filter", **QUIET)
    users = pl.read_parquet(etl.path / "user_map.parquet")["user_id"].to_list()
    return multi, plain, users


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


@pytest.fixture(scope="module")
def server(exported):
    with TritonServer(exported[0].model_repository) as s:
        yield s


def test_export_records_the_sources_and_the_default_export_is_unchanged(exported, local):
    multi, plain, _ = exported
    manifest = json.loads((multi.artifact_dir / "manifest.json").read_text())
    assert [(s["name"], s["kind"]) for s in manifest["sources"]] == [
        ("sasrec_lightgcn", "served"), ("two_tower", "encoder"), ("graph_filter", "neighbours")]
    assert isinstance(local.stages[2], MultiSourceRetrieval)
    assert "sources" not in json.loads((plain.artifact_dir / "manifest.json").read_text())
    assert not list(plain.artifact_dir.glob("source_*"))
    for model in ("retrieval", "recommend"):     # the single-source repository: the templates as they are
        assert filecmp.cmp(plain.model_repository / model / "config.pbtxt", TEMPLATES / model / "config.pbtxt",
                           shallow=False)
    assert not filecmp.cmp(multi.model_repository / "retrieval" / "config.pbtxt",
                           TEMPLATES / "retrieval" / "config.pbtxt", shallow=False)


def test_in_process_candidates_come_from_every_source(exported, local):
    _, _, users = exported
    env = local.run(request_tensors(TENANT, users[0], 10))
    ranks = env["CANDIDATE_SOURCE_RANKS"]
    assert ranks.shape == (env["CANDIDATES"].size, 3) and env["CANDIDATES"].size == local.stages[2].num_candidates
    assert len(set(env["CANDIDATES"].tolist())) == env["CANDIDATES"].size
    assert not np.isin(env["CANDIDATES"], env["SEEN"]).any()
    assert (ranks[:, 0] == MISSING_RANK).any()                # some candidates only another source found
    assert (ranks != MISSING_RANK).any(axis=1).all()          # every candidate came from some source


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answer_equals_in_process(exported, server, local, protocol):
    _, _, users = exported
    for served, expected in served_and_local(server, local, protocol, TENANT, [users[0], users[100], users[-1]]):
        assert served.item_ids == expected.item_ids and len(served.item_ids) == 10
        np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
        assert served.strategy == "personalized"


def _call_retrieval(url: str, protocol: str, tensors: dict) -> dict:
    """The `retrieval` model called directly (batched: one row, a leading batch dimension of 1)."""
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    dtypes = {np.dtype(np.object_): "BYTES", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    inputs = []
    for name in MultiSourceRetrieval.inputs:
        value = np.asarray(tensors[name])[None, ...]
        inputs.append(tc.InferInput(name, list(value.shape), dtypes[value.dtype]))
        inputs[-1].set_data_from_numpy(value)
    client = tc.InferenceServerClient(url)
    try:
        result = client.infer("retrieval", inputs)
        return {name: result.as_numpy(name)[0] for name in MultiSourceRetrieval.outputs}
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_retrieval_per_source_tensors_equal_in_process(exported, server, local, protocol):
    _, _, users = exported
    url = server.http_url if protocol == "http" else server.grpc_url
    for user in (users[3], users[200]):
        env = local.run(request_tensors(TENANT, user, 10))
        served = _call_retrieval(url, protocol, env)
        np.testing.assert_array_equal(served["CANDIDATES"], env["CANDIDATES"])
        np.testing.assert_array_equal(served["CANDIDATE_SOURCE_RANKS"], env["CANDIDATE_SOURCE_RANKS"])
        np.testing.assert_allclose(served["CANDIDATE_SOURCE_SCORES"], env["CANDIDATE_SOURCE_SCORES"], rtol=1e-5,
                                   atol=1e-6)   # NaN (missing) in the same places
        np.testing.assert_allclose(served["CANDIDATE_SCORES"], env["CANDIDATE_SCORES"], rtol=1e-5, atol=1e-6)
