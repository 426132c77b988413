"""`tapestry etl` / `train` for typed-graph tenants (issue 19): the HetRec Last.fm data set and a generic
multi-behaviour event table with declared context columns and user links reach the typed graph's relations."""
import argparse
import json

import polars as pl
import pytest

from tapestry.cli import etl_config, main
from tapestry.graph.typed import build_typed_graph
from tapestry.training.data import InteractionData

from .integration.typed_tenants import lastfm_present, lastfm_subset, synthetic_files


def manifest_dir(root, tenant):
    return next((root / tenant / "etl").glob("v*"))


def _manifest(root, tenant):
    return json.loads((manifest_dir(root, tenant) / "manifest.json").read_text())


def test_generic_events_keep_declared_context_columns_and_user_links(tmp_path):
    files = synthetic_files(tmp_path / "data", num_users=30, num_items=25, num_sessions=100)
    at = ["--tenant", "shop", "--root", str(tmp_path / "art")]
    main(["etl", *at, "--events", str(files["events"]), "--items", str(files["items"]), "--users",
          str(files["users"]), "--context-columns", "device, location", "--user-links", "friends"])
    manifest = _manifest(tmp_path / "art", "shop")
    assert manifest["config"]["context_columns"] == ["device", "location"]
    assert manifest["user_links"]["rows"] > 0
    train = pl.read_parquet(manifest_dir(tmp_path / "art", "shop") / "train.parquet")
    assert {"device", "location", "session_id", "query"} <= set(train.columns)
    # the typed graph of that ETL output (training reads it: tests/integration/test_triton_typed_graph.py)
    graph = build_typed_graph(InteractionData.load(manifest_dir(tmp_path / "art", "shop")))
    assert {("user", "with_device", "device"), ("item", "with_location", "location"), ("user", "friends", "user"),
            ("user", "purchase", "item"), ("user", "starts", "session")} <= set(graph.edge_types)


def test_lastfm_from_the_cli_has_plays_tags_and_friends(tmp_path):
    if not lastfm_present():
        pytest.skip("HetRec Last.fm 2K not staged")
    at = ["--tenant", "lastfm", "--root", str(tmp_path / "art")]
    main(["etl", *at, "--dataset", "hetrec-lastfm", "--data-dir", str(lastfm_subset(tmp_path / "data", users=20))])
    manifest = _manifest(tmp_path / "art", "lastfm")
    assert manifest["config"]["event_types"] == ["play", "tag"] and manifest["config"]["context_columns"] == ["tag"]
    assert manifest["split"] == "fixed" and manifest["user_links"]["rows"] > 0
    assert manifest["num_users"] - 1 == 20


def _args(**kw):
    base = dict(dataset=None, events=None, users=None, polars_engine="cpu", event_types=None, context_columns=None,
                user_links=None)
    return argparse.Namespace(**{**base, **kw})


def test_flags_that_do_not_apply_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="--context-columns applies to generic tables"):
        etl_config(_args(dataset="hetrec-lastfm", context_columns="device"))
    with pytest.raises(SystemExit, match="--user-links names columns of the user table"):
        main(["etl", "--tenant", "t", "--root", str(tmp_path), "--events", str(tmp_path / "e.csv"),
              "--user-links", "friends"])
    # --event-types still overrides an adapter's vocabulary
    assert etl_config(_args(dataset="hetrec-lastfm", event_types="Play, tag")).event_types == ("play", "tag")
