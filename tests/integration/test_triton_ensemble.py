"""End to end on real data: ML-100K -> ETL -> train (tiny) -> export -> a REAL Triton server -> HTTP and gRPC.

The served answer must equal the in-process pipeline's answer (the same stage code, without Triton). The exported
tenant and the server are session fixtures (conftest.py), shared with the malformed-request suites.
"""
import numpy as np
import polars as pl
import pytest

from tapestry.serving.client import RecommendClient, RecommendError
from tapestry.serving.pipeline import RecommendPipeline

from .conftest import TENANT, served_and_local

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answer_equals_in_process_pipeline(server, local, exported, protocol):
    _, users = exported
    for served, expected in served_and_local(server, local, protocol, TENANT, [users[0], users[100], users[-1]]):
        assert served.item_ids == expected.item_ids
        assert served.titles == expected.titles
        np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
        assert served.strategy == "personalized"
        assert len(set(served.item_ids)) == 10


def test_recommendations_exclude_seen_and_requested_items(server, exported):
    export, users = exported
    user = users[5]
    history = pl.read_parquet(export.artifact_dir / "users.parquet").filter(pl.col("user_id") == user)["history"][0]
    items = pl.read_parquet(export.artifact_dir / "items.parquet")
    seen_ids = set(items.filter(pl.col("item_idx").is_in(history.to_list()))["item_id"].to_list())
    with RecommendClient(server.grpc_url, protocol="grpc") as client:
        first = client.recommend(TENANT, user, k=10)
        assert not seen_ids & set(first.item_ids)
        excluded = first.item_ids[:3]
        second = client.recommend(TENANT, user, k=10, exclude_item_ids=excluded)
    assert not set(excluded) & set(second.item_ids)
    assert not seen_ids & set(second.item_ids)
    assert len(second.item_ids) == 10


def test_unknown_user_gets_popularity_fallback(server, local):
    with RecommendClient(server.http_url) as client:
        result = client.recommend(TENANT, "never-seen-user", k=5)
    assert result.strategy == "popularity"
    assert result.item_ids == local.recommend(TENANT, "never-seen-user", k=5).item_ids
    assert len(result.item_ids) == 5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_other_tenant_and_bad_k_are_clear_client_errors(server, exported, protocol):
    _, users = exported
    url = server.http_url if protocol == "http" else server.grpc_url
    with RecommendClient(url, protocol=protocol) as client:
        with pytest.raises(RecommendError, match="tenant 'intruder'") as e:
            client.recommend("intruder", users[0], k=5)
        assert e.value.invalid_argument
        with pytest.raises(RecommendError, match="K must be between 1 and 50") as e:
            client.recommend(TENANT, users[0], k=500)
        assert e.value.invalid_argument
        # The server still answers after rejected requests (no crashed stub).
        assert len(client.recommend(TENANT, users[0], k=3).item_ids) == 3
