"""Serving tiers in ONE real Triton server: a tenant on the retrieval tier and a tenant on the reranked tier are
served at once, each answering as the in-process pipeline of its tier; `tapestry tier set` hot-swaps a tenant to
another tier without retraining (tapestry.serving.tiers)."""
import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from tapestry.cli import main as tapestry
from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.serving import multi_tenant as mt
from tapestry.serving import status as st
from tapestry.serving.client import RecommendClient, ensemble_name
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.tiers import TierError
from tapestry.training.pipeline import run_train

pytestmark = pytest.mark.integration

QUIET = {"log": lambda *a, **k: None}
TIER_AT_EXPORT = {"acme": "retrieval", "globex": None}   # None: the richest (feature: no DLRM in a smoke line-up)


def _tables(seed: int, item_prefix: str):
    tables = synthetic_tables(num_users=100, num_items=60, seed=seed)
    item = pl.lit(item_prefix) + pl.col("item_id")
    return dataclasses.replace(tables, events=tables.events.with_columns(item.alias("item_id")),
                               items=tables.items.with_columns(item.alias("item_id")))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiers")
    for seed, (tenant, tier) in enumerate(TIER_AT_EXPORT.items()):
        run_etl(_tables(seed, f"{tenant[0]}-"), tenant, root, **QUIET)
        run_train(tenant, root, TrainConfig.smoke(), **QUIET)
        run_export(tenant, root, max_k=20, tier=tier, **QUIET)
    return root


@pytest.fixture(scope="module")
def server(root):
    with mt.serving(list(TIER_AT_EXPORT), root) as s:
        yield s


def _artifacts(root, tenant: str, version: str = "v0001"):
    return root / tenant / "export" / version / "artifacts"


def _users(root, tenant: str) -> list[str]:
    users = pl.read_parquet(_artifacts(root, tenant) / "users.parquet")["user_id"].to_list()
    return users[:12] + ["visitor-1"]   # known users and a cold one (popularity, in both tiers)


def _answers(server, tenant: str, users: list[str]) -> dict:
    with RecommendClient(server.grpc_url, protocol="grpc", model_name=ensemble_name(tenant, multi_tenant=True)) as c:
        return {u: c.recommend(tenant, u, k=10) for u in users}


def _assert_same(served: dict, local: RecommendPipeline, tenant: str) -> None:
    for user, answer in served.items():
        expected = local.recommend(tenant, user, k=10)
        assert answer.item_ids == expected.item_ids, user
        assert answer.strategy == expected.strategy
        np.testing.assert_allclose(answer.scores, expected.scores, rtol=1e-5, atol=1e-6)


def test_export_refuses_a_tier_it_cannot_serve_and_writes_nothing(root):
    with pytest.raises(TierError, match="needs a DLRM or fusion reranker"):
        run_export("globex", root, max_k=20, tier="full", **QUIET)
    assert (root / "globex" / "export" / "LATEST").read_text().strip() == "v0001"
    manifests = {t: json.loads((_artifacts(root, t) / "manifest.json").read_text()) for t in TIER_AT_EXPORT}
    assert manifests["acme"]["tier"] == "retrieval" and manifests["globex"]["tier"] == "feature"


def test_two_tiers_in_one_server_each_answer_as_their_tiers_pipeline(root, server):
    acme, globex = (_answers(server, t, _users(root, t)) for t in TIER_AT_EXPORT)
    retrieval_only = RecommendPipeline.from_artifacts(_artifacts(root, "acme"))
    assert type(retrieval_only.stages[-1]).__name__ == "RetrievalRank"
    _assert_same(acme, retrieval_only, "acme")
    reranked = RecommendPipeline.from_artifacts(_artifacts(root, "globex"))
    assert type(reranked.stages[-1]).__name__ == "Rerank"
    _assert_same(globex, reranked, "globex")
    # The retrieval tier is the reranked path minus its reranker: the same candidates, another order.
    acme_reranked = RecommendPipeline.from_artifacts(_artifacts(root, "acme"), tier="feature")
    differs = [u for u, a in acme.items() if a.item_ids != acme_reranked.recommend("acme", u, k=10).item_ids]
    assert differs, "the reranker changed no list: the tiers would be indistinguishable"
    for answer in acme.values():   # retrieval order: scores never increase down the list
        assert answer.scores == sorted(answer.scores, reverse=True)


def test_tier_set_hot_swaps_one_tenant_and_leaves_the_other(root, server, capsys):
    globex_before = _answers(server, "globex", _users(root, "globex"))
    tapestry(["tier", "set", "--tenant", "acme", "--tier", "feature", "--root", str(root)])
    out = capsys.readouterr().out
    assert "v0002 serves tier feature" in out and "hot-swapped" in out
    assert st.live_state("acme", root)["export_version"] == "v0002"
    reranked = RecommendPipeline.from_artifacts(_artifacts(root, "acme", "v0002"))
    _assert_same(_answers(server, "acme", _users(root, "acme")), reranked, "acme")
    assert {u: a.item_ids for u, a in _answers(server, "globex", _users(root, "globex")).items()} == \
        {u: a.item_ids for u, a in globex_before.items()}
    tapestry(["tier", "show", "--tenant", "acme", "--root", str(root)])
    assert "v0002: tier feature (this export can serve: retrieval, feature)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs a DLRM or fusion reranker"):
        tapestry(["tier", "set", "--tenant", "acme", "--tier", "full", "--root", str(root)])
