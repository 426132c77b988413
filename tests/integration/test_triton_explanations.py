"""Explanations through a REAL Triton server (the session's ML-100K export): REASONS over HTTP and gRPC equal the
in-process pipeline's, one per item, naming items of the user's own history; a client that does not ask for
REASONS still works. Business rules stored beside a copy of the same export, applied by the same stage code."""
import json
import shutil

import polars as pl
import pytest

import tapestry.serving.client as client_module
from tapestry.serving.client import RecommendClient
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.rules import RULES_FILE, Rules

from .conftest import TENANT, served_and_local

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


def _history_ids(export, user: str) -> set[str]:
    history = pl.read_parquet(export.artifact_dir / "users.parquet").filter(pl.col("user_id") == user)["history"][0]
    items = pl.read_parquet(export.artifact_dir / "items.parquet")
    return set(items.filter(pl.col("item_idx").is_in(history.to_list()))["item_id"].to_list())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_reasons_equal_in_process_and_name_the_users_history(server, local, exported, protocol):
    export, users = exported
    for user in (users[0], users[100]):
        (served, expected), = served_and_local(server, local, protocol, TENANT, [user])
        assert served.item_ids == expected.item_ids
        assert served.reasons == expected.reasons
        assert len(served.reasons) == len(served.item_ids) == 10
        reasons = [json.loads(r) for r in served.reasons]
        assert {r["kind"] for r in reasons} == {"history_item"}
        assert {r["item_id"] for r in reasons} <= _history_ids(export, user)
        assert all(r["text"].startswith("because you watched ") for r in reasons)
        assert any("shared" in r and r["shared"]["type"] == "genre" for r in reasons)   # ML-100K's genres


def test_session_and_cold_requests_are_explained_alike_served_and_in_process(server, local, exported):
    export, users = exported
    recent = sorted(_history_ids(export, users[3]))[:4]
    (session, session_local), = served_and_local(server, local, "grpc", TENANT, ["visitor-7"], recent=recent)
    assert session.strategy == "session" and session.reasons == session_local.reasons
    assert {json.loads(r)["item_id"] for r in session.reasons} <= set(recent)
    (cold, cold_local), = served_and_local(server, local, "http", TENANT, ["visitor-8"], k=3)
    assert cold.reasons == cold_local.reasons == ['{"kind":"popular","text":"popular right now"}'] * 3


def test_a_client_that_does_not_ask_for_reasons_still_works(server, local, exported, monkeypatch):
    _, users = exported
    monkeypatch.setattr(client_module, "OUTPUTS", tuple(o for o in client_module.OUTPUTS if o != "REASONS"))
    with RecommendClient(server.http_url) as old:
        result = old.recommend(TENANT, users[0], k=5)
    assert result.reasons == [] and result.item_ids == local.recommend(TENANT, users[0], k=5).item_ids


def test_rules_beside_the_export_cap_genres_and_block_items(exported, local, tmp_path):
    export, users = exported
    artifacts = shutil.copytree(export.artifact_dir, tmp_path / "artifacts")
    plain = local.recommend(TENANT, users[0], k=10)
    Rules(max_per={"genre": 2}, blocked_item_ids=(plain.item_ids[0],)).save(artifacts / RULES_FILE)
    ruled = RecommendPipeline.from_artifacts(artifacts).recommend(TENANT, users[0], k=10)
    assert plain.item_ids[0] not in ruled.item_ids and len(ruled.item_ids) == len(ruled.reasons)
    etl = json.loads((artifacts / "manifest.json").read_text())["etl_version"]
    genres = pl.read_parquet(f"{etl}/item_entities.parquet").filter(pl.col("entity_type") == "genre")
    items = pl.read_parquet(artifacts / "items.parquet").filter(pl.col("item_id").is_in(ruled.item_ids))
    assert genres.join(items, on="item_idx").group_by("entity_value").len()["len"].max() <= 2
