"""The user side through the real Triton server: K interest vectors, recent events, anonymous sessions.

Each served answer must equal the in-process pipeline's (the same stage code without Triton), over HTTP and gRPC.
"""
import json

import numpy as np
import polars as pl
import pytest

from tapestry.serving.client import RecommendClient
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServer

from .conftest import TENANT, served_and_local

pytestmark = pytest.mark.integration
PROTOCOLS = ["http", "grpc"]


def _assert_same(served, expected, strategy):
    assert served.item_ids == expected.item_ids
    np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
    assert served.strategy == expected.strategy == strategy
    assert served.ignored_items == expected.ignored_items


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


@pytest.fixture(scope="module")
def catalogue(exported):
    """(users.parquet, item_idx -> raw item id)."""
    art = exported[0].artifact_dir
    items = pl.read_parquet(art / "items.parquet")
    return pl.read_parquet(art / "users.parquet"), dict(zip(items["item_idx"].to_list(), items["item_id"].to_list()))


# ---- K interest vectors ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi_server(exported_multi_interest):
    with TritonServer(exported_multi_interest.model_repository) as s:
        yield s


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_multi_vector_retrieval_is_served_as_in_process(multi_server, exported_multi_interest, exported, protocol):
    manifest = json.loads((exported_multi_interest.artifact_dir / "manifest.json").read_text())
    assert manifest["served_model"] == "comirec" and manifest["num_interests"] == 4
    local = RecommendPipeline.from_artifacts(exported_multi_interest.artifact_dir)
    _, users = exported
    for served, expected in served_and_local(multi_server, local, protocol, TENANT, [users[0], users[7], users[-1]]):
        _assert_same(served, expected, "personalized")
        assert len(set(served.item_ids)) == 10


def test_multi_vector_candidates_are_the_max_sim_top_n(exported_multi_interest, exported):
    """One FAISS search for the K rows, merged: the same candidates as brute-force max over the K interests."""
    local = RecommendPipeline.from_artifacts(exported_multi_interest.artifact_dir)
    _, users = exported
    env = local.run(_request(users[3]))
    emb = env["USER_EMB"]
    assert emb.shape[0] == 4 and len({tuple(np.round(r, 5)) for r in emb}) == 4    # four distinct interests
    table = local.stages[1].model.item_embeddings().detach().numpy()
    best = (table[1:] @ emb.T).max(1)
    n = env["CANDIDATES"].size
    np.testing.assert_allclose(np.sort(env["CANDIDATE_SCORES"])[::-1], np.sort(best)[::-1][:n], rtol=1e-4, atol=1e-5)


def _request(user, recent=None):
    from tapestry.serving.pipeline import request_tensors

    return request_tensors(TENANT, user, 10, recent_item_ids=recent)


# ---- recent events and anonymous sessions ----------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recent_events_answer_as_if_they_were_exported(server, exported, catalogue, protocol):
    """A stored user + RECENT_ITEM_IDS == the same user in a store that already held those events."""
    users, item_ids = catalogue
    row = users.row(4, named=True)
    history = row["history"]
    new = [i for i in users.row(9, named=True)["history"][-2:] if i not in set(history)]
    recent = [item_ids[i] for i in new] + ["no-such-item"]
    later = users.with_columns(pl.Series("history", [h + new if uid == row["user_id"] else h for uid, h in
                                                     zip(users["user_id"].to_list(), users["history"].to_list())],
                                         dtype=pl.List(pl.Int64)))
    art = exported[0].artifact_dir
    base = RecommendPipeline.from_artifacts(art)
    fl = base.stages[0]
    with_events = RecommendPipeline([FeatureLookup(TENANT, fl.max_len, later, _item_list(item_ids), fl.num_attrs),
                                     *base.stages[1:]])
    with RecommendClient(server.http_url if protocol == "http" else server.grpc_url, protocol=protocol) as client:
        online = client.recommend(TENANT, row["user_id"], k=10, recent_item_ids=recent)
        stale = client.recommend(TENANT, row["user_id"], k=10)
    exported_later = with_events.recommend(TENANT, row["user_id"], k=10)
    assert online.item_ids == exported_later.item_ids
    np.testing.assert_allclose(online.scores, exported_later.scores, rtol=1e-5, atol=1e-6)
    assert online.ignored_items == 1 and online.strategy == "personalized"
    assert online.item_ids != stale.item_ids            # the events changed the answer
    assert not {item_ids[i] for i in new} & set(online.item_ids)     # and are now seen


def _item_list(item_ids: dict) -> list[str]:
    out = [""] * (max(item_ids) + 1)
    for i, iid in item_ids.items():
        out[i] = iid
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_anonymous_session_is_encoded_by_the_session_encoder(server, local, exported, catalogue, protocol):
    manifest = json.loads((exported[0].artifact_dir / "manifest.json").read_text())
    assert manifest["session_encoder"] == "session_encoder.pt" and manifest["session_model"] == "srgnn_shared"
    users, item_ids = catalogue
    session = [item_ids[i] for i in users.row(11, named=True)["history"][-5:]]
    for served, expected in served_and_local(server, local, protocol, TENANT, ["visitor-123"], recent=session):
        _assert_same(served, expected, "session")
        assert len(served.item_ids) == len(set(served.item_ids)) == 10          # k distinct items, not fewer
        assert len(served.scores) == len(served.titles) == 10
        assert not set(session) & set(served.item_ids)
    # The same visitor with no events gets popularity; unknown ids alone are counted, not an error.
    for served, expected in served_and_local(server, local, protocol, TENANT, ["visitor-123"],
                                             recent=["nope-1", "nope-2"]):
        _assert_same(served, expected, "popularity")
        assert len(served.item_ids) == len(set(served.item_ids)) == 10
        assert served.ignored_items == 2


def test_session_encoder_is_not_the_user_encoder(local, catalogue):
    """An anonymous session and a stored user with the very same events are encoded by different models."""
    users, item_ids = catalogue
    row = users.row(11, named=True)
    window = row["history"][-5:]
    anon = local.run(_request("visitor-9", [item_ids[i] for i in window]))
    assert anon["USER_KIND"].tolist() == [2]
    encoder = local.stages[1]
    assert encoder.session_model is not None and type(encoder.session_model).__name__ == "SRGNN"
    import torch

    with torch.no_grad():
        expected = encoder.session_model.encode(torch.tensor([window]))[0].numpy()
    np.testing.assert_allclose(anon["USER_EMB"][0], expected, rtol=1e-5, atol=1e-6)
