"""One exported ML-100K tenant and one real Triton server on it, shared by every integration test module.

Session-scoped: starting Triton with five python-backend models takes seconds on 2 cores, and the raw-HTTP and
gRPC malformed-request suites must hit the same server anyway (it has to keep answering after all of them).
"""
import polars as pl
import pytest

from tapestry.config import DEFAULT_MODELS, TrainConfig, datasets_dir
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.movielens import movielens_100k
from tapestry.serving.triton_server import TritonServer
from tapestry.training.pipeline import run_train

TENANT = "ml100k"
MAX_K = 50
QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(ExportResult, raw user ids in index order)."""
    directory = datasets_dir() / "ml-100k"
    if not (directory / "u.item").exists():
        pytest.skip(f"MovieLens-100K not found under {directory} (set TAPESTRY_DATASETS)")
    root = tmp_path_factory.mktemp("artifacts")
    etl = run_etl(movielens_100k(directory), TENANT, root, **QUIET)
    # The default line-up (SASRec hybrid served, SR-GNN over its item table for anonymous sessions) plus ComiRec,
    # whose K interest vectors a second export serves (`exported_multi_interest`).
    run_train(TENANT, root, TrainConfig.smoke(models=DEFAULT_MODELS + ("comirec",)), **QUIET)
    export = run_export(TENANT, root, max_k=MAX_K, **QUIET)
    users = pl.read_parquet(etl.path / "user_map.parquet")["user_id"].to_list()
    return export, users


@pytest.fixture(scope="session")
def exported_multi_interest(exported):
    """A second export of the same run, serving ComiRec (K = 4 interest vectors per user)."""
    export, _ = exported
    return run_export(TENANT, export.path.parents[2], max_k=MAX_K, serve="comirec", **QUIET)


@pytest.fixture(scope="session")
def server(exported):
    export, _ = exported
    with TritonServer(export.model_repository) as s:
        yield s


def served_and_local(server, local, protocol: str, tenant: str, users: list[str], k: int = 10, recent=None):
    """(Triton's answer, the in-process pipeline's answer) for each user, over `protocol` ("http" or "grpc");
    `recent`: the RECENT_ITEM_IDS sent with every request (None: the input is left out)."""
    from tapestry.serving.client import RecommendClient

    url = server.http_url if protocol == "http" else server.grpc_url
    with RecommendClient(url, protocol=protocol) as client:
        for user in users:
            yield (client.recommend(tenant, user, k=k, recent_item_ids=recent),
                   local.recommend(tenant, user, k=k, recent_item_ids=recent))
