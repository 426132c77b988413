"""The S3-Rec sequential adapter: small hand-made files, then the real Beauty through run_etl, and the CLI names."""
from __future__ import annotations

import argparse
import json
import lzma

import polars as pl
import pytest

from tapestry import cli
from tapestry.config import datasets_dir
from tapestry.etl import schema as S
from tapestry.etl.pipeline import run_etl
from tapestry.etl.s3rec import S3REC_DATASETS, SYNTHETIC_BASE, s3rec
from tapestry.etl.split import LEAVE_ONE_OUT

S3REC = datasets_dir() / "s3rec-sequential"
QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture
def small_dir(tmp_path):
    (tmp_path / "Tiny.txt").write_text("1 1 2 3 4 5\n2 3 1 4 2 6\n3\n")  # user 2 repeats item 2 (as Yelp does)
    (tmp_path / "Tiny_item2attributes.json").write_text(
        json.dumps({"1": [1, 2], "2": [2, 2], "3": [], "4": [3], "5": [1], "6": [4], "7": [5]}))
    return tmp_path


def test_small_files_keep_line_order_and_attributes(small_dir, tmp_path):
    raw = s3rec(small_dir, "Tiny")
    ev = raw.events.collect()
    assert ev.filter(pl.col("user_id") == "2")["item_id"].to_list() == ["3", "1", "4", "2", "6"]
    assert ev["timestamp"].cast(pl.Int64).to_list() == [SYNTHETIC_BASE + p for p in (0, 1, 2, 3, 4) * 2]
    bad = pl.concat([r for r in raw.rejected if r.height])
    assert bad.select("source_row", "raw_line", "reason").rows() == [(2, "3", S.MALFORMED_LINE)]

    res = run_etl(raw, "tiny", root=tmp_path / "art", **QUIET)
    users = dict(pl.read_parquet(res.path / "user_map.parquet").select("user_idx", "user_id").rows())
    items = dict(pl.read_parquet(res.path / "item_map.parquet").select("item_idx", "item_id").rows())
    read = lambda n: {users[u]: items[i] for u, i in  # noqa: E731
                      pl.read_parquet(res.path / f"{n}.parquet").select("user_idx", "item_idx").rows()}
    assert read("test") == {"1": "5", "2": "6"} and read("valid") == {"1": "4", "2": "2"}
    ent = pl.read_parquet(res.path / "item_entities.parquet")
    got = {(items[i], t, v) for i, t, v in ent.rows()}
    assert got == {("1", "attribute", "a1"), ("1", "attribute", "a2"), ("2", "attribute", "a2"),
                   ("4", "attribute", "a3"), ("5", "attribute", "a1"), ("6", "attribute", "a4")}  # 3 has none
    assert res.manifest["catalog_items_without_events"] == 1  # item 7
    assert res.manifest["counts"]["quarantined_rows"] == 1


def test_a_bad_attribute_file_is_a_schema_error(small_dir):
    (small_dir / "Tiny_item2attributes.json").write_text('{"1": 3}')
    with pytest.raises(S.SchemaError, match="expected a JSON object of item id -> list of attribute ids"):
        s3rec(small_dir, "Tiny")


@pytest.fixture(scope="module")
def beauty_etl(tmp_path_factory):
    if not (S3REC / "Beauty.txt.xz").exists():
        pytest.skip(f"S3-Rec data sets not found under {S3REC} (set TAPESTRY_DATASETS)")
    return run_etl(s3rec(S3REC, "beauty"), "beauty", root=tmp_path_factory.mktemp("beauty"), **QUIET)


def _read(res, name: str) -> pl.DataFrame:
    return pl.read_parquet(res.path / f"{name}.parquet")


def test_beauty_counts_match_the_readme(beauty_etl):
    m = beauty_etl.manifest
    c = m["counts"]
    assert m["split"] == LEAVE_ONE_OUT
    assert m["num_users"] - 1 == 22_363 and m["num_items"] - 1 == 12_101
    assert c["input_rows"] == c["valid_rows"] == 198_502 and c["quarantined_rows"] == 0
    assert c["train_rows"] == 198_502 - 2 * 22_363
    assert m["catalog_items_without_events"] == 0


def test_beauty_every_user_has_exactly_one_valid_and_one_test_row(beauty_etl):
    for name in ("valid", "test"):
        df = _read(beauty_etl, name)
        assert df.height == 22_363 and df["user_idx"].n_unique() == 22_363


def test_beauty_test_is_the_last_item_of_the_line_and_valid_the_one_before(beauty_etl):
    with lzma.open(S3REC / "Beauty.txt.xz", "rt") as f:
        lines = [ln.split() for ln in f if ln.strip()]
    expected_test = {ln[0]: ln[-1] for ln in lines}
    expected_valid = {ln[0]: ln[-2] for ln in lines}
    users = dict(_read(beauty_etl, "user_map").select("user_idx", "user_id").rows())
    items = dict(_read(beauty_etl, "item_map").select("item_idx", "item_id").rows())
    for name, expected in (("test", expected_test), ("valid", expected_valid)):
        got = {users[u]: items[i] for u, i in _read(beauty_etl, name).select("user_idx", "item_idx").rows()}
        assert got == expected
    # Train keeps each line's order: user 1's line is `1 1 2 3 4 5`, so train is items 1, 2, 3.
    u1 = next(u for u, uid in users.items() if uid == "1")
    assert [items[i] for i in _read(beauty_etl, "train").filter(pl.col("user_idx") == u1)["item_idx"]] == \
        lines[0][1:-2]


def test_beauty_attribute_entities(beauty_etl):
    ent = _read(beauty_etl, "item_entities")
    assert set(ent["entity_type"]) == {"attribute"}
    assert ent["entity_value"].n_unique() == 637
    assert ent["entity_value"].str.contains(r"^a[0-9]+$").all()
    assert ent["item_idx"].n_unique() == 12_101  # every Beauty item has at least one attribute


def test_cli_names_match_the_adapter():
    assert set(cli.S3REC_NAMES) == set(S3REC_DATASETS)
    assert set(cli.ETL_DATASETS) >= {"gowalla", *S3REC_DATASETS}


def test_cli_load_tables_honours_data_dir(small_dir):
    (small_dir / "Beauty.txt").write_text("1 1 2 3\n")
    (small_dir / "Beauty_item2attributes.json").write_text('{"1": [1], "2": [2], "3": [3]}')
    args = argparse.Namespace(events=None, dataset="beauty", data_dir=str(small_dir), ratings=None)
    raw = cli.load_tables(args)
    assert raw.events.collect().height == 3
    with pytest.raises(ValueError, match="--ratings"):
        cli.load_tables(argparse.Namespace(events=None, dataset="beauty", data_dir=str(small_dir), ratings="x"))
