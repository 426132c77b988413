"""IdEncoder: contiguous 1..n ids, OOV index 0, natural order, round trip and persistence."""
from __future__ import annotations

import polars as pl
import pytest

from tapestry.etl.encode import OOV_INDEX, IdEncoder


def test_round_trip_and_contiguous_indices():
    ids = ["b", "a", "c", "a", "b"]
    enc = IdEncoder.fit("item", pl.Series(ids))
    assert enc.mapping.columns == ["item_id", "item_idx"]
    assert enc.mapping.schema == {"item_id": pl.String, "item_idx": pl.Int64}
    assert enc.mapping["item_idx"].to_list() == [1, 2, 3]
    assert len(enc) == 4  # incl. the OOV row
    codes = enc.encode_ids(ids)
    assert all(1 <= c < len(enc) for c in codes)
    assert enc.decode(codes) == ids
    assert enc.decode(enc.encode_ids(["a", "b", "c"])) == ["a", "b", "c"]


def test_unknown_ids_encode_to_zero_and_decode_to_none():
    enc = IdEncoder.fit("user", pl.Series(["u1", "u2"]))
    assert OOV_INDEX == 0
    assert enc.encode_ids(["u2", "nope", "u1"]) == [2, 0, 1]
    assert enc.decode([0, 1, 2, 3, -1]) == [None, "u1", "u2", None, None]


def test_frame_encoding_keeps_row_order_and_fills_oov():
    enc = IdEncoder.fit("user", pl.Series(["x", "y", "z"]))
    df = pl.DataFrame({"user_id": ["z", "unknown", "x", "z", None], "v": [1, 2, 3, 4, 5]})
    out = enc.encode(df)
    assert out["v"].to_list() == [1, 2, 3, 4, 5]
    assert out["user_idx"].to_list() == [3, 0, 1, 3, 0]
    lazy = enc.encode(df.lazy())
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect()["user_idx"].to_list() == [3, 0, 1, 3, 0]
    other = enc.encode(pl.DataFrame({"buyer": ["y"]}), column="buyer")
    assert other["user_idx"].to_list() == [2]


def test_numeric_ids_sort_numerically():
    enc = IdEncoder.fit("item", pl.Series(["10", "2", "1", "33", "2", "100"]))
    assert enc.mapping["item_id"].to_list() == ["1", "2", "10", "33", "100"]
    assert enc.encode_ids(["1", "2", "10", "33", "100"]) == [1, 2, 3, 4, 5]


def test_non_numeric_ids_sort_as_text_and_fit_is_deterministic():
    ids = ["b10", "a", "b2", "10", "A"]
    enc = IdEncoder.fit("item", pl.Series(ids))
    assert enc.mapping["item_id"].to_list() == sorted(set(ids))
    again = IdEncoder.fit("item", pl.Series(list(reversed(ids))))
    assert again.mapping.equals(enc.mapping)


def test_integer_series_and_nulls():
    enc = IdEncoder.fit("user", pl.Series([3, None, 1, 3]))
    assert enc.mapping["user_id"].to_list() == ["1", "3"]
    assert enc.encode_ids([3, 1, 2]) == [2, 1, 0]


def test_empty_fit():
    enc = IdEncoder.fit("user", pl.Series([], dtype=pl.String))
    assert len(enc) == 1
    assert enc.encode_ids(["a"]) == [0]


def test_save_load(tmp_path):
    enc = IdEncoder.fit("item", pl.Series(["10", "2", "7"]))
    path = tmp_path / "item_map.parquet"
    enc.save(path)
    loaded = IdEncoder.load("item", path)
    assert loaded.mapping.equals(enc.mapping)
    assert loaded.mapping.schema == {"item_id": pl.String, "item_idx": pl.Int64}
    assert loaded.encode_ids(["2", "7", "10", "x"]) == [1, 2, 3, 0]
    assert loaded.decode([3, 0]) == ["10", None]
    assert len(loaded) == len(enc) == 4


@pytest.mark.parametrize("ids", [["5", "-3", "0"], ["007", "7", "8"]])
def test_numeric_edge_cases_are_unique_and_contiguous(ids):
    enc = IdEncoder.fit("item", pl.Series(ids))
    assert sorted(enc.mapping["item_id"].to_list()) == sorted(set(ids))
    assert enc.mapping["item_idx"].to_list() == list(range(1, len(set(ids)) + 1))
    assert enc.decode(enc.encode_ids(ids)) == ids
