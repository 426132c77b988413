"""The typed multi-entity graph reaches the served path (issue 19), as a user runs it from the command line:

`tapestry etl` (a Last.fm subset: plays, tags, friends; a synthetic multi-behaviour CSV: a funnel of event types,
sessions, queries, device/location context, friends) -> `tapestry train --quick` with a graph model over the TYPED
graph and SASRec fused with its item vectors -> `tapestry export` -> a REAL Triton server, HTTP and gRPC.

The served answer must equal the in-process pipeline's, and the export manifest must name the typed relations
behind the served item vectors (metrics.json records them per graph model).
"""
import json

import numpy as np
import polars as pl
import pytest

from tapestry.cli import main
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServer

from .conftest import served_and_local
from .typed_tenants import lastfm_present, lastfm_subset, synthetic_files

pytestmark = pytest.mark.integration

# tenant -> (graph model, served retriever over its item vectors, relations the typed graph must have had)
CASES = {
    "lastfm": ("rsage", "sasrec_rsage",
               {"user/play/item", "item/rev_play/user", "user/tag/item", "user/with_tag/tag", "item/with_tag/tag",
                "user/friends/user"}),
    "shop": ("hgt_typed", "sasrec_hgt_typed",
             {"user/view/item", "user/click/item", "user/purchase/item", "user/starts/session",
              "session/contains/item", "user/issues/query", "query/leads_to/item", "user/with_device/device",
              "item/with_location/location", "item/has_brand/brand", "user/friends/user"}),
}


def _etl_args(tenant: str, tmp) -> list[str]:
    if tenant == "lastfm":
        if not lastfm_present():
            pytest.skip("HetRec Last.fm 2K not staged")
        return ["--dataset", "hetrec-lastfm", "--data-dir", str(lastfm_subset(tmp / "data", users=40))]
    files = synthetic_files(tmp / "data")
    return ["--events", str(files["events"]), "--items", str(files["items"]), "--users", str(files["users"]),
            "--context-columns", "device,location", "--user-links", "friends"]


@pytest.fixture(scope="module", params=sorted(CASES))
def served_tenant(request, tmp_path_factory):
    tenant = request.param
    graph_model, retriever, _ = CASES[tenant]
    tmp = tmp_path_factory.mktemp(tenant)
    at = ["--tenant", tenant, "--root", str(tmp / "art")]
    main(["etl", *at, *_etl_args(tenant, tmp)])
    main(["train", *at, "--quick", "--models", f"popularity,{graph_model},{retriever}"])
    main(["export", *at, "--max-k", "20"])
    export = next((tmp / "art" / tenant / "export").glob("v*"))
    with TritonServer(export / "model_repository") as server:
        yield tenant, export, server


def test_the_served_item_vectors_come_from_the_typed_graph(served_tenant):
    tenant, export, _ = served_tenant
    graph_model, retriever, relations = CASES[tenant]
    manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
    assert manifest["served_model"] == retriever
    record = manifest["item_vector_graphs"][graph_model]
    assert record["via"] == "graph_from"
    assert relations <= set(record["relations"]) and record["edge_types"] == len(record["relations"]) > 2
    metrics = json.loads((next(export.parents[1].glob("models/v*")) / "metrics.json").read_text())
    assert metrics[graph_model]["graph"]["relations"] == record["relations"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answer_equals_in_process_pipeline(served_tenant, protocol):
    tenant, export, server = served_tenant
    local = RecommendPipeline.from_artifacts(export / "artifacts")
    users = pl.read_parquet(export / "artifacts" / "users.parquet")["user_id"].to_list()
    for served, expected in served_and_local(server, local, protocol, tenant, [users[0], users[len(users) // 2],
                                                                              users[-1]]):
        assert served.strategy == expected.strategy == "personalized"
        assert served.item_ids == expected.item_ids and len(set(served.item_ids)) == 10
        np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
