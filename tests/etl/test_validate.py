"""Row-level validation of a generic event table: every bad row is quarantined with exactly its reason."""
from __future__ import annotations

import csv
import json
import lzma
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.pipeline import run_etl
from tapestry.etl.schema import SchemaError
from tapestry.etl.sources import generic_tables, read_table
from tapestry.etl.validate import validate_events

HEADER = ["user_id", "item_id", "event_type", "timestamp", "weight", "session_id"]


def _utc(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


# (row, expected reason or None for a good row, expected unix-seconds timestamp for good rows)
ROWS: list[tuple[list[str], str | None, int | None]] = [
    (["u1", "i1", "view", "1600000000", "", "s1"], None, 1600000000),
    (["u1", "i2", "CLICK", "2021-03-04T05:06:07", "2.5", ""], None, _utc(2021, 3, 4, 5, 6, 7)),
    (["u1", "i3", "Purchase", "2021-03-04T05:06:07Z", "", ""], None, _utc(2021, 3, 4, 5, 6, 7)),
    (["u2", "i1", "Add_To_Cart", "2021-03-04T07:06:07+02:00", "0.5", "s2"], None, _utc(2021, 3, 4, 5, 6, 7)),
    (["u2", "i2", "view", "2021-03-04", "", ""], None, _utc(2021, 3, 4)),
    (["u2", "i3", " rating ", " 1600000001 ", " 4 ", ""], None, 1600000001),
    (["u2", "i4", "like", "2021-03-04 05:06:07.250", "", ""], None, _utc(2021, 3, 4, 5, 6, 7)),
    # --- suspicious but acceptable under the id policy: plain numbers may start with a sign; 256 characters ---
    (["-1", "+44", "view", "1600000002", "0.001", "-7"], None, 1600000002),
    (["u" * 256, "i 1 (été)", "view", "1600000003", "", ""], None, 1600000003),
    # --- bad rows, one or more of every kind ---
    (["", "i1", "view", "1600000000", "", ""], S.MISSING_USER_ID, None),
    (["   ", "i1", "view", "1600000000", "", ""], S.MISSING_USER_ID, None),
    (["", "i1", "view", "1600000000", "abc", ""], S.MISSING_USER_ID, None),  # first reason wins
    (["u3", "", "view", "1600000000", "", ""], S.MISSING_ITEM_ID, None),
    (["u3", "i1", "view", "", "", ""], S.MISSING_TIMESTAMP, None),
    (["u3", "i1", "view", "yesterday", "", ""], S.BAD_TIMESTAMP, None),
    (["u3", "i1", "view", "2021-13-45T00:00:00", "", ""], S.BAD_TIMESTAMP, None),
    (["u3", "i1", "view", "1600000000.5", "", ""], S.BAD_TIMESTAMP, None),
    (["u3", "i1", "view", "1600000000000", "", ""], S.TIMESTAMP_OUT_OF_RANGE, None),  # milliseconds
    (["u3", "i1", "view", "0", "", ""], S.TIMESTAMP_OUT_OF_RANGE, None),
    (["u3", "i1", "view", "1985-01-01T00:00:00", "", ""], S.TIMESTAMP_OUT_OF_RANGE, None),
    (["u3", "i1", "teleport", "1600000000", "", ""], S.UNKNOWN_EVENT_TYPE, None),
    (["u3", "i1", "", "1600000000", "", ""], S.UNKNOWN_EVENT_TYPE, None),
    (["u3", "i1", "view", "1600000000", "abc", ""], S.BAD_WEIGHT, None),
    (["u3", "i1", "view", "1600000000", "inf", ""], S.BAD_WEIGHT, None),
    (["u3", "i1", "view", "1600000000", "-inf", ""], S.BAD_WEIGHT, None),
    (["u3", "i1", "view", "1600000000", "nan", ""], S.BAD_WEIGHT, None),
    (["u3", "i1", "view", "1600000000", "1e39", ""], S.BAD_WEIGHT, None),  # finite f64, inf as f32
    # --- the id policy (schema.py): quarantined, never rewritten ---
    (['=HYPERLINK("http://x","y")', "i1", "view", "1600000000", "", ""], S.BAD_USER_ID, None),
    (["@SUM(A1)", "i1", "view", "1600000000", "", ""], S.BAD_USER_ID, None),
    (["-2+3", "i1", "view", "1600000000", "", ""], S.BAD_USER_ID, None),
    (["u\x1b[31m", "i1", "view", "1600000000", "", ""], S.BAD_USER_ID, None),      # terminal escape
    (["u" * 257, "i1", "view", "1600000000", "", ""], S.BAD_USER_ID, None),
    (["u3", "+cmd|' /C calc'!A0", "view", "1600000000", "", ""], S.BAD_ITEM_ID, None),
    (["u3", "i\u200b1", "view", "1600000000", "", ""], S.BAD_ITEM_ID, None),       # zero-width space
    (["u3", "i\u202e1", "view", "1600000000", "", ""], S.BAD_ITEM_ID, None),       # right-to-left override
    (["u3", "i\ufffd", "view", "1600000000", "", ""], S.BAD_ITEM_ID, None),        # undecodable bytes
    (["u3", "i\x001", "view", "1600000000", "", ""], S.BAD_ITEM_ID, None),
    (["u3", "i1", "view", "1600000000", "0", ""], S.NONPOSITIVE_WEIGHT, None),
    (["u3", "i1", "view", "1600000000", "-2.5", ""], S.NONPOSITIVE_WEIGHT, None),
    (["u3", "i1", "view", "1600000000", "1e-50", ""], S.NONPOSITIVE_WEIGHT, None),  # 0 as f32
    (["u3", "i1", "view", "1600000000", "", "=1+1"], S.BAD_SESSION_ID, None),
    (["u3", "i1", "view", "1600000000", "", "s\x07"], S.BAD_SESSION_ID, None),
]
GOOD = {i: ts for i, (_, reason, ts) in enumerate(ROWS) if reason is None}
BAD = {i: reason for i, (_, reason, _) in enumerate(ROWS) if reason is not None}
QUIET = dict(log=lambda *a, **k: None)


def _write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows() -> list[list[str]]:
    return [r for r, _, _ in ROWS]


def _strings_parquet(path: Path) -> Path:
    pl.DataFrame([dict(zip(HEADER, r)) for r in _rows()], schema={c: pl.String for c in HEADER}).with_columns(
        [pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in HEADER]
    ).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def csv_etl(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate_csv")
    path = _write_csv(d / "events.csv", _rows())
    return run_etl(generic_tables(path), "acme", root=d / "artifacts", **QUIET)


def _quarantine(result) -> pl.DataFrame:
    return pl.read_parquet(result.path / "quarantine.parquet")


def test_every_bad_row_is_quarantined_with_its_reason_and_source_row(csv_etl):
    q = _quarantine(csv_etl).filter(pl.col("source") == "events")
    got = dict(zip(q["source_row"].to_list(), q["reason"].to_list()))
    assert got == BAD
    assert q["source_row"].dtype == pl.Int64
    assert set(q["reason"]) <= set(S.REASONS)


def test_quarantine_keeps_the_raw_values(csv_etl):
    q = _quarantine(csv_etl)
    by_row = {r["source_row"]: r for r in q.iter_rows(named=True)}
    inf_row = next(i for i, (r, reason, _) in enumerate(ROWS) if r[4] == "inf")
    assert by_row[inf_row]["weight"] == "inf"
    ms_row = next(i for i, (r, _, _) in enumerate(ROWS) if r[3] == "1600000000000")
    assert by_row[ms_row]["timestamp"] == "1600000000000"
    tele = next(i for i, (r, _, _) in enumerate(ROWS) if r[2] == "teleport")
    assert by_row[tele]["event_type"] == "teleport"
    assert all(isinstance(by_row[i]["timestamp"], (str, type(None))) for i in BAD)


def test_good_plus_quarantined_equals_input_and_manifest_agrees(csv_etl):
    events = pl.read_parquet(csv_etl.path / "events.parquet")
    q = _quarantine(csv_etl)
    manifest = json.loads((csv_etl.path / "manifest.json").read_text())
    counts = manifest["counts"]
    assert events.height == len(GOOD)
    assert q.height == len(BAD)
    assert events.height + q.height == len(ROWS)
    assert counts["input_rows"] == len(ROWS)
    assert counts["valid_rows"] == len(GOOD)
    assert counts["quarantined_rows"] == len(BAD)
    assert counts["valid_rows"] + counts["quarantined_rows"] == counts["input_rows"]
    assert counts["by_reason"] == dict(Counter(BAD.values()))
    assert sum(counts["by_reason"].values()) == counts["quarantined_rows"] + counts["quarantined_entity_rows"]
    assert counts["train_rows"] + counts["valid_rows_split"] + counts["test_rows"] == len(GOOD)


def test_iso_timestamps_become_unix_seconds_and_event_types_are_lowercased(tmp_path):
    good, bad = validate_events(read_table(_write_csv(tmp_path / "e.csv", _rows())), ETLConfig())
    good = good.collect()
    assert dict(zip(good["source_row"].to_list(), good["timestamp"].to_list())) == GOOD
    assert good["timestamp"].dtype == pl.Int64
    types = dict(zip(good["source_row"].to_list(), good["event_type"].to_list()))
    assert types[1] == "click" and types[2] == "purchase" and types[3] == "add_to_cart" and types[5] == "rating"
    weights = dict(zip(good["source_row"].to_list(), good["weight"].to_list()))
    assert weights[0] == 1.0 and weights[1] == 2.5 and weights[5] == 4.0  # default 1, stripped, f32
    assert good["weight"].dtype == pl.Float32
    sessions = dict(zip(good["source_row"].to_list(), good["session_id"].to_list()))
    assert sessions[0] == "s1" and sessions[1] is None
    assert bad.collect().height == len(BAD)


@pytest.mark.parametrize("order", [1, -1])
def test_mixed_iso_forms_parse_regardless_of_order(order):
    """The format must not be inferred once from the first value: `Z`, offset and naive forms mix freely."""
    values = ["2021-03-04T05:06:07Z", "2021-03-04T05:06:07", "2021-03-04T06:06:07+01:00", "2021-03-04 05:06:07"]
    values = values[::order]
    lf = pl.LazyFrame({"user_id": ["u"] * 4, "item_id": ["i"] * 4, "event_type": ["view"] * 4, "timestamp": values,
                       "source_row": list(range(4))})
    good, bad = validate_events(lf, ETLConfig())
    assert bad.collect().height == 0
    assert good.collect()["timestamp"].to_list() == [_utc(2021, 3, 4, 5, 6, 7)] * 4


def test_event_types_case_insensitive_against_a_mixed_case_vocabulary(tmp_path):
    rows = [["u", "i", "addtocart", "1600000000", "", ""], ["u", "i", "VIEW", "1600000000", "", ""],
            ["u", "i", "click", "1600000000", "", ""]]
    good, bad = validate_events(read_table(_write_csv(tmp_path / "e.csv", rows)),
                                ETLConfig(event_types=("View", "AddToCart")))
    assert sorted(good.collect()["event_type"].to_list()) == ["addtocart", "view"]
    assert bad.collect()["reason"].to_list() == [S.UNKNOWN_EVENT_TYPE]


def test_optional_columns_may_be_absent(tmp_path):
    path = _write_csv(tmp_path / "e.csv", [["u", "i", "view", "1600000000"]], header=list(S.EVENT_COLUMNS))
    good, bad = validate_events(read_table(path), ETLConfig())
    good = good.collect()
    assert good["weight"].to_list() == [1.0] and good["session_id"].to_list() == [None]
    assert bad.collect().height == 0


@pytest.mark.parametrize("column", S.EVENT_COLUMNS)
def test_missing_required_column_raises_schema_error_naming_it(tmp_path, column):
    header = [c for c in HEADER if c != column]
    rows = [[v for c, v in zip(HEADER, r) if c != column] for r in _rows()[:3]]
    path = _write_csv(tmp_path / "events.csv", rows, header=header)
    with pytest.raises(SchemaError, match=column):
        generic_tables(path)
    assert not (tmp_path / "artifacts").exists()


def test_missing_required_column_raises_for_entity_tables(tmp_path):
    ev = _write_csv(tmp_path / "events.csv", _rows())
    items = tmp_path / "items.csv"
    items.write_text("sku,title\n1,x\n")
    with pytest.raises(SchemaError, match="item_id"):
        generic_tables(ev, items=items)


def test_unsupported_file_type_raises(tmp_path):
    path = tmp_path / "events.json"
    path.write_text("[]")
    with pytest.raises(SchemaError, match="unsupported file type for .*events.json"):
        read_table(path)


def test_missing_input_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="input file not found: .*nope.csv"):
        read_table(tmp_path / "nope.csv")


def _summary(result):
    q = _quarantine(result).filter(pl.col("source") == "events")
    ev = pl.read_parquet(result.path / "events.parquet")
    return (dict(zip(q["source_row"].to_list(), q["reason"].to_list())),
            sorted(ev.select("timestamp", "event_type", "weight").rows()),
            json.loads((result.path / "manifest.json").read_text())["counts"]["by_reason"])


def test_parquet_input_behaves_like_csv(tmp_path, csv_etl):
    path = _strings_parquet(tmp_path / "events.parquet")
    res = run_etl(generic_tables(path), "acme", root=tmp_path / "artifacts", **QUIET)
    assert _summary(res) == _summary(csv_etl)
    assert _summary(res)[0] == BAD


def test_xz_parquet_input_behaves_like_csv(tmp_path, csv_etl):
    raw = _strings_parquet(tmp_path / "events.parquet").read_bytes()
    path = tmp_path / "events.parquet.xz"
    path.write_bytes(lzma.compress(raw))
    res = run_etl(generic_tables(path), "acme", root=tmp_path / "artifacts", **QUIET)
    assert _summary(res) == _summary(csv_etl)


def test_typed_parquet_input(tmp_path):
    """Non-string Parquet columns are read as strings and validated the same way."""
    path = tmp_path / "typed.parquet"
    pl.DataFrame({
        "user_id": [1, 2, None, 4, 5],
        "item_id": [10, 20, 30, 40, 50],
        "event_type": ["view", "Click", "view", "view", "view"],
        "timestamp": [1600000000, 1600000100, 1600000000, 1600000000000, 1600000000],
        "weight": [1.5, None, 1.0, 1.0, float("inf")],
    }).write_parquet(path)
    good, bad = validate_events(read_table(path), ETLConfig())
    good, bad = good.collect(), bad.collect()
    assert good["user_id"].to_list() == ["1", "2"]
    assert good["weight"].to_list() == [1.5, 1.0]
    assert dict(zip(bad["source_row"].to_list(), bad["reason"].to_list())) == {
        2: S.MISSING_USER_ID, 3: S.TIMESTAMP_OUT_OF_RANGE, 4: S.BAD_WEIGHT}


def test_xz_compressed_csv_works(tmp_path, csv_etl):
    plain = _write_csv(tmp_path / "plain.csv", _rows())
    path = tmp_path / "events.csv.xz"
    path.write_bytes(lzma.compress(plain.read_bytes()))
    res = run_etl(generic_tables(path), "acme", root=tmp_path / "artifacts", **QUIET)
    assert _summary(res) == _summary(csv_etl)
    assert res.manifest["counts"]["input_rows"] == len(ROWS)


def test_tsv_is_read_with_tabs(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("user_id\titem_id\tevent_type\ttimestamp\nu,1\tx\tview\t1600000000\n")
    good, _ = validate_events(read_table(path), ETLConfig())
    assert good.collect()["user_id"].to_list() == ["u,1"]


def test_ragged_csv_lines_are_quarantined_not_fatal(tmp_path):
    from tapestry.config import ETLConfig
    from tapestry.etl import run_etl
    from tapestry.etl.sources import generic_tables

    src = tmp_path / "ragged.csv"
    src.write_text("user_id,item_id,event_type,timestamp\n"
                   "u1,i1,view,1600000000\n"
                   "u1,i2,view,1600000001,extra\n"
                   "u2,i3,view,1600000003\n")
    res = run_etl(generic_tables(src), "rag", root=tmp_path / "art", cfg=ETLConfig(min_user_events=1),
                  log=lambda *a: None)
    q = pl.read_parquet(res.path / "quarantine.parquet")
    assert q.select("source_row", "reason").rows() == [(1, "malformed_line")]
    assert "extra" in q["raw_line"][0]
    assert res.manifest["counts"]["valid_rows"] == 2


def test_entity_ids_follow_the_id_policy(tmp_path):
    ev = _write_csv(tmp_path / "events.csv", [["u1", f"i{k}", "view", str(1600000000 + k), "", ""] for k in range(4)])
    items = tmp_path / "items.csv"
    items.write_text('item_id,title\ni0,Zero\n=cmd,Evil\n"i\x07",Bell\n,Nobody\n')
    res = run_etl(generic_tables(ev, items=items), "acme", root=tmp_path / "art", **QUIET)
    q = _quarantine(res).filter(pl.col("source") == "items")
    assert q.select("item_id", "reason").rows() == [
        ("=cmd", S.BAD_ENTITY_ID), ("i\x07", S.BAD_ENTITY_ID), (None, S.MISSING_ENTITY_ID)]


def test_a_spreadsheet_export_end_to_end(tmp_path):
    """BOM, CRLF, quoted separators and newlines, latin-1 text: every row valid or quarantined with a reason."""
    text = ("\ufeffuser_id,item_id,event_type,timestamp,weight\r\n"
            'u1,"Café, crème",view,1600000000,1\r\n'
            'u1,"two\r\nlines",view,1600000001,\r\n'
            "u1,i3,view,1600000002,0\r\n"
            "u2,=1+1,view,1600000003,\r\n"
            "u2,i4,view,1600000004,,surplus\r\n"
            "u2,i5,view,1600000005,2.5\r\n")
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode("utf-8"))
    res = run_etl(generic_tables(path), "acme", root=tmp_path / "art", cfg=ETLConfig(min_user_events=1), **QUIET)
    c = res.manifest["counts"]
    assert c["input_rows"] == 6 and c["valid_rows"] == 2 and c["quarantined_rows"] == 4
    # A newline inside an id is a control character: that row is quarantined, its neighbours are not.
    assert c["by_reason"] == {S.NONPOSITIVE_WEIGHT: 1, S.BAD_ITEM_ID: 2, S.MALFORMED_LINE: 1}
    items = pl.read_parquet(res.path / "item_map.parquet")["item_id"].to_list()
    assert sorted(items) == ["Café, crème", "i5"]
