"""The Gowalla (NGCF/LightGCN split) adapter: small hand-made files, then the real data through run_etl."""
from __future__ import annotations

import lzma

import polars as pl
import pytest

from tapestry.config import ETLConfig, datasets_dir
from tapestry.etl import schema as S
from tapestry.etl.gowalla import EVENT_TYPE, SYNTHETIC_BASE, TEST_OFFSET, gowalla
from tapestry.etl.pipeline import run_etl
from tapestry.etl.split import FIXED
from tapestry.etl.validate import validate_events

GOWALLA = datasets_dir() / "gowalla-lightgcn"
QUIET = dict(log=lambda *a, **k: None)


def test_small_files_parse_with_synthetic_timestamps_and_malformed_lines(tmp_path):
    (tmp_path / "train.txt").write_text("0 5 3 9\n1 3\n2\n3 x 4\n\n4 7  8 \r\n")
    with lzma.open(tmp_path / "test.txt.xz", "wt") as f:  # the .xz copy is found when the plain file is absent
        f.write("0 1 2\n1 9\n")
    raw = gowalla(tmp_path)
    ev = raw.events.collect()
    assert ev.select("user_id", "item_id", "split").rows() == [
        ("0", "5", "train"), ("0", "3", "train"), ("0", "9", "train"), ("1", "3", "train"),
        ("4", "7", "train"), ("4", "8", "train"),  # any whitespace separates; CR and trailing blanks are fine
        ("0", "1", "test"), ("0", "2", "test"), ("1", "9", "test")]
    assert ev["source_row"].to_list() == list(range(9))
    assert ev["timestamp"].cast(pl.Int64).to_list() == [SYNTHETIC_BASE + p for p in (0, 1, 2, 0, 0, 1)] + [
        SYNTHETIC_BASE + TEST_OFFSET + p for p in (0, 1, 0)]
    assert set(ev["event_type"]) == {EVENT_TYPE} and set(ev["weight"]) == {"1"}
    bad = pl.concat([r for r in raw.rejected if r.height])
    # a user without items and a non-integer id are malformed; the blank line is not a record
    assert bad.select("source_row", "raw_line", "reason", "file").rows() == [
        (2, "2", S.MALFORMED_LINE, "train.txt"), (3, "3 x 4", S.MALFORMED_LINE, "train.txt")]
    assert "synthetic" in raw.sources["timestamps"]
    good, quarantined = (f.collect() for f in validate_events(raw.events, ETLConfig()))
    assert good.height == 9 and quarantined.height == 0

    res = run_etl(raw, "gw-small", root=tmp_path / "art", **QUIET)
    c = res.manifest["counts"]
    assert c["input_rows"] == 11 and c["valid_rows"] == 9 and c["quarantined_rows"] == 2
    assert (c["train_rows"], c["valid_rows_split"], c["test_rows"]) == (6, 0, 3)


@pytest.fixture(scope="module")
def gowalla_etl(tmp_path_factory):
    if not (GOWALLA / "train.txt.xz").exists() and not (GOWALLA / "train.txt").exists():
        pytest.skip(f"Gowalla (LightGCN split) not found under {GOWALLA} (set TAPESTRY_DATASETS)")
    return run_etl(gowalla(GOWALLA), "gowalla", root=tmp_path_factory.mktemp("gowalla"), **QUIET)


def _read(res, name: str) -> pl.DataFrame:
    return pl.read_parquet(res.path / f"{name}.parquet")


def test_real_counts_match_the_published_split(gowalla_etl):
    m = gowalla_etl.manifest
    c = m["counts"]
    assert m["split"] == FIXED
    assert m["num_users"] - 1 == 29_858 and m["num_items"] - 1 == 40_981
    assert c["input_rows"] == c["valid_rows"] == 810_128 + 217_242 and c["quarantined_rows"] == 0
    assert (c["train_rows"], c["valid_rows_split"], c["test_rows"]) == (810_128, 0, 217_242)
    assert c["split_users"] == {"train": 29_858, "valid": 0, "test": 29_858}
    assert c["test_users_without_train"] == 0
    assert _read(gowalla_etl, "valid").height == 0
    assert set(m["sources"]) == {"events", "test_events", "timestamps"}


def test_real_test_items_are_never_train_items_and_follow_train(gowalla_etl):
    train, test = _read(gowalla_etl, "train"), _read(gowalla_etl, "test")
    assert test.join(train, on=["user_idx", "item_idx"], how="semi").height == 0
    assert test["timestamp"].min() > train["timestamp"].max()
    per_user = test.group_by("user_idx").len()["len"]
    assert per_user.max() > 1  # many test rows per user, unlike leave-one-out


def test_real_ids_are_kept_as_written(gowalla_etl):
    # The file ids are 0-based integers; as strings they sort numerically, so idx = id + 1 throughout.
    for name in ("user", "item"):
        mapping = _read(gowalla_etl, f"{name}_map")
        assert (mapping[f"{name}_id"].cast(pl.Int64) + 1 == mapping[f"{name}_idx"]).all()
    first = _read(gowalla_etl, "train").filter(pl.col("user_idx") == 1)
    assert first["item_idx"].head(3).to_list() == [1, 2, 3]  # line 1 of train.txt: `0 0 1 2 ...`
