"""The HetRec 2011 Last.fm 2K adapter on the real files: plays, tag assignments, friends, a leak-free split."""
from __future__ import annotations

import polars as pl
import pytest

from tapestry.config import datasets_dir
from tapestry.etl import schema as S
from tapestry.etl.hetrec import SYNTHETIC_BASE, hetrec_etl_config, hetrec_lastfm
from tapestry.etl.pipeline import run_etl
from tapestry.graph.typed import build_typed_graph
from tapestry.training.data import InteractionData

LASTFM = datasets_dir() / "hetrec2011-lastfm-2k"


@pytest.fixture(scope="module")
def etl(tmp_path_factory):
    if not (LASTFM / "user_friends.dat").exists():
        pytest.skip("HetRec Last.fm 2K not staged")
    return run_etl(hetrec_lastfm(LASTFM), "lastfm", root=tmp_path_factory.mktemp("lastfm"), cfg=hetrec_etl_config(),
                   log=lambda *a, **k: None)


def test_every_row_is_an_event_or_quarantined_with_its_reason(etl):
    c = etl.manifest["counts"]
    # user_artists.dat 92,834 plays + user_taggedartists.dat 186,479 assignments (README), nothing lost
    assert c["input_rows"] == 92_834 + 186_479 == c["valid_rows"] + c["quarantined_rows"]
    assert c["by_reason"] == {S.TIMESTAMP_OUT_OF_RANGE: 5}          # the tag rows dated 1956, 1957, 1979
    assert etl.manifest["num_users"] - 1 == 1_892 and etl.manifest["user_links"]["rows"] == 25_434


def test_held_out_plays_are_one_untagged_artist_per_user_after_train(etl):
    data = InteractionData.load(etl.path)
    for split in (data.valid, data.test):
        assert set(split["event_type"]) == {"play"} and split["user_idx"].is_unique().all()
        # never a pair of the user's history (a tag or a play), so evaluation can rank it
        assert split.join(data.train, on=["user_idx", "item_idx"], how="semi").height == 0
    plays = data.train.filter(pl.col("event_type") == "play")
    last = plays.group_by("user_idx").agg(pl.col("timestamp").max().alias("t"))
    joined = data.test.join(data.valid, on="user_idx", suffix="_v").join(last, on="user_idx")
    assert (joined["timestamp_v"] > joined["t"]).all() and (joined["timestamp"] > joined["timestamp_v"]).all()
    assert plays["timestamp"].min() == SYNTHETIC_BASE
    assert data.test.height == data.valid.height > 1_800


def test_the_split_is_seeded(tmp_path):
    if not (LASTFM / "user_friends.dat").exists():
        pytest.skip("HetRec Last.fm 2K not staged")
    test_of = lambda seed: (hetrec_lastfm(LASTFM, seed=seed).events.filter(pl.col("split") == "test")  # noqa: E731
                            .select("user_id", "item_id").collect().sort("user_id").rows())
    a = test_of(0)
    assert a == test_of(0) and a != test_of(1)


def test_typed_graph_has_plays_tags_tag_values_and_friends(etl):
    data = InteractionData.load(etl.path)
    g = build_typed_graph(data)
    assert {("user", "play", "item"), ("user", "tag", "item"), ("user", "with_tag", "tag"),
            ("item", "with_tag", "tag"), ("user", "friends", "user")} <= set(g.edge_types)
    assert g["user", "tag", "item"].num_edges == 186_479 - 5
    # 9,749 distinct tags in the file (README); one of them occurs only in the quarantined pre-1990 rows
    assert g["tag"].num_nodes == data.train["tag"].n_unique() - 1 == 9_748        # - 1: the null of plays
