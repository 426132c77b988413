"""The typed multi-entity graph reaches the served path (issue 19), as a user runs it from the command line:

`tapestry etl` (a Last.fm subset: plays, tags, friends; a synthetic multi-behaviour CSV: a funnel of event types,
sessions, queries, device/location context, friends) -> `tapestry train --quick` with a graph model over the TYPED
graph and SASRec fused with its item vectors -> `tapestry export` -> ONE real Triton server for both tenants (as
`tapestry serve --tenants lastfm,shop` runs it), HTTP and gRPC.

The served answer must equal the in-process pipeline's, and the export manifest must name the typed relations
behind the served item vectors (metrics.json records them per graph model).
"""
import json

import numpy as np
import polars as pl
import pytest

from tapestry.cli import main
from tapestry.serving.client import RecommendClient, ensemble_name
from tapestry.serving.multi_tenant import serving
from tapestry.serving.pipeline import RecommendPipeline

from .typed_tenants import lastfm_present, lastfm_subset, synthetic_files

pytestmark = pytest.mark.integration

# tenant -> (graph model, served retriever over its item vectors, relations the typed graph must have had).
# Last.fm's rsage reads the typed graph WITH mediated nodes: "user U tagged artist A with tag T" is one event node.
CASES = {
    "lastfm": ("rsage", "sasrec_rsage",
               {"user/play/item", "item/rev_play/user", "user/tag/item", "user/with_tag/tag", "item/with_tag/tag",
                "user/friends/user", "event/by/user", "event/on/item", "event/with_tag/tag"}),
    "shop": ("hgt_typed", "sasrec_hgt_typed",
             {"user/view/item", "user/click/item", "user/purchase/item", "user/starts/session",
              "session/contains/item", "user/issues/query", "query/leads_to/item", "user/with_device/device",
              "item/with_location/location", "item/has_brand/brand", "user/friends/user"}),
}

PARAMS = {"lastfm": json.dumps({"rsage": {"graph": "typed_mediated"}})}


def _etl_args(tenant: str, tmp) -> list[str]:
    if tenant == "lastfm":
        return ["--dataset", "hetrec-lastfm", "--data-dir", str(lastfm_subset(tmp / "data", users=40))]
    files = synthetic_files(tmp / "data")
    return ["--events", str(files["events"]), "--items", str(files["items"]), "--users", str(files["users"]),
            "--context-columns", "device,location", "--user-links", "friends"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Both tenants' exports under one artifact root, made with the CLI."""
    root = tmp_path_factory.mktemp("typed")
    if not lastfm_present():
        pytest.skip("HetRec Last.fm 2K not staged")
    for tenant, (graph_model, retriever, _) in CASES.items():
        at = ["--tenant", tenant, "--root", str(root / "art")]
        main(["etl", *at, *_etl_args(tenant, root / tenant)])
        main(["train", *at, "--quick", "--models", f"popularity,{graph_model},{retriever}",
              *(["--params", PARAMS[tenant]] if tenant in PARAMS else [])])
        main(["export", *at, "--max-k", "20"])
    return root / "art"


@pytest.fixture(scope="module")
def server(root):
    """ONE Triton for both tenants (what `tapestry serve --tenants lastfm,shop` runs): one start, not two."""
    with serving(sorted(CASES), root) as s:
        yield s


def _export(root, tenant):
    return next((root / tenant / "export").glob("v*"))


@pytest.mark.parametrize("tenant", sorted(CASES))
def test_the_served_item_vectors_come_from_the_typed_graph(root, tenant):
    graph_model, retriever, relations = CASES[tenant]
    export = _export(root, tenant)
    manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
    assert manifest["served_model"] == retriever
    record = manifest["item_vector_graphs"][graph_model]
    assert record["via"] == "graph_from"
    assert relations <= set(record["relations"]) and record["edge_types"] == len(record["relations"]) > 2
    metrics = json.loads((next((root / tenant / "models").glob("v*")) / "metrics.json").read_text())
    assert metrics[graph_model]["graph"]["relations"] == record["relations"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("tenant", sorted(CASES))
def test_served_answer_equals_in_process_pipeline(root, server, tenant, protocol):
    art = _export(root, tenant) / "artifacts"
    local = RecommendPipeline.from_artifacts(art)
    users = pl.read_parquet(art / "users.parquet")["user_id"].to_list()
    url = server.http_url if protocol == "http" else server.grpc_url
    with RecommendClient(url, protocol=protocol, model_name=ensemble_name(tenant, multi_tenant=True)) as client:
        for user in (users[0], users[len(users) // 2], users[-1]):
            served, expected = client.recommend(tenant, user, k=10), local.recommend(tenant, user, k=10)
            assert served.strategy == expected.strategy == "personalized"
            assert served.item_ids == expected.item_ids and len(set(served.item_ids)) == 10
            np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
