"""Issue 19: MovieLens ratings as two behaviours (`--like-at`): rating >= N is a `like`, any other a `view`."""
from __future__ import annotations

import argparse

import pytest

from tapestry.cli import load_tables
from tapestry.etl.movielens import ML100K_GENRES, movielens_100k


def _ml100k_dir(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n1\t11\t2\t881250950\n2\t10\t4\t881250951\n")
    flags = "|".join(["0"] * len(ML100K_GENRES))
    (tmp_path / "u.item").write_text("".join(f"{i}|Movie {i}|01-Jan-1995||http://x|{flags}\n" for i in (10, 11)))
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return tmp_path


def test_ml100k_like_at_labels_events_and_default_is_unchanged(tmp_path):
    directory = _ml100k_dir(tmp_path)
    assert movielens_100k(directory).events.collect()["event_type"].to_list() == ["rating"] * 3
    assert movielens_100k(directory, like_at=4).events.collect()["event_type"].to_list() == ["like", "view", "like"]


def test_cli_like_at_reaches_the_adapter_and_is_refused_elsewhere(tmp_path):
    args = argparse.Namespace(events=None, dataset="ml-100k", data_dir=str(_ml100k_dir(tmp_path)), ratings=None,
                              like_at=5)
    assert load_tables(args).events.collect()["event_type"].to_list() == ["like", "view", "view"]
    with pytest.raises(ValueError, match="--like-at applies to the MovieLens"):
        load_tables(argparse.Namespace(events=None, dataset="gowalla", data_dir=str(tmp_path), ratings=None,
                                       like_at=4))
