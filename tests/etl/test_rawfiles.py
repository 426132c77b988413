"""Raw text files as exporters and spreadsheet tools write them: BOM, CRLF, quoting, encodings, compression."""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import polars as pl
import pytest

from tapestry.etl import rawfiles
from tapestry.etl.rawfiles import ROW, clean_names, compression_of
from tapestry.etl.schema import MALFORMED_LINE, SchemaError
from tapestry.etl.sources import generic_tables, read_bytes, read_table

HEADER = "user_id,item_id,event_type,timestamp\n"
BODY = "u1,i1,view,1600000000\nu2,i2,click,1600000001\n"
EXPECTED = [(0, "u1", "i1", "view", "1600000000"), (1, "u2", "i2", "click", "1600000001")]


def _rows(lf: pl.LazyFrame) -> list[tuple]:
    return lf.select(ROW, "user_id", "item_id", "event_type", "timestamp").collect().rows()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


COMPRESSORS = {
    "plain": ("", lambda b: b),
    "gzip": (".gz", gzip.compress),
    "xz": (".xz", lzma.compress),
    "bz2": (".bz2", bz2.compress),
    "zstd": (".zst", lambda b: pytest.importorskip("zstandard").ZstdCompressor().compress(b)),
}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_csv_reads_like_plain(tmp_path, kind):
    suffix, compress = COMPRESSORS[kind]
    path = _write(tmp_path / f"events.csv{suffix}", compress((HEADER + BODY).encode()))
    assert compression_of(path) == (None if kind == "plain" else kind)
    assert _rows(read_table(path)) == EXPECTED


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_parquet_reads_like_plain(tmp_path, kind):
    suffix, compress = COMPRESSORS[kind]
    plain = tmp_path / "plain.parquet"
    pl.DataFrame([r[1:] for r in EXPECTED], schema=["user_id", "item_id", "event_type", "timestamp"],
                 orient="row").write_parquet(plain)
    path = _write(tmp_path / f"events.parquet{suffix}", compress(plain.read_bytes()))
    assert _rows(read_table(path)) == EXPECTED


def test_compression_is_recognised_by_content_not_name(tmp_path):
    path = _write(tmp_path / "events.csv", gzip.compress((HEADER + BODY).encode()))  # gzip, named .csv
    assert _rows(read_table(path)) == EXPECTED


def test_native_adapters_read_any_compression(tmp_path):
    path = _write(tmp_path / "u.data.gz", gzip.compress(b"1\t2\t3\t4\n"))
    assert read_bytes(path) == b"1\t2\t3\t4\n"


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_bom_and_line_endings(tmp_path, eol, bom):
    path = _write(tmp_path / "events.csv", bom + (HEADER + BODY).replace("\n", eol).encode())
    assert _rows(read_table(path)) == EXPECTED


def test_bom_in_a_file_that_takes_the_csv_module_path(tmp_path):
    """The byte-order mark must not end up in the first column's name on the fallback path either."""
    data = b"\xef\xbb\xbf" + (HEADER + BODY + "u3,i3,view,1600000002,EXTRA\n").replace("\n", "\r\n").encode()
    rejected: list[pl.DataFrame] = []
    lf = read_table(_write(tmp_path / "events.csv", data), rejected=rejected)
    assert _rows(lf) == EXPECTED
    assert rejected[0].select(ROW, "reason").rows() == [(2, MALFORMED_LINE)]


def test_quoted_fields_keep_separators_quotes_and_newlines(tmp_path):
    data = HEADER + 'u1,"i,1",view,1600000000\n"u""2""","multi\nline",click,1600000001\n'
    got = _rows(read_table(_write(tmp_path / "events.csv", data.encode())))
    assert got == [(0, "u1", "i,1", "view", "1600000000"), (1, 'u"2"', "multi\nline", "click", "1600000001")]


def test_latin1_declared_by_option(tmp_path):
    path = _write(tmp_path / "events.csv", (HEADER + "Zoë,Café,view,1600000000\n").encode("latin-1"))
    assert _rows(read_table(path, encoding="latin-1")) == [(0, "Zoë", "Café", "view", "1600000000")]
    # Read as UTF-8 (the default) the bytes do not decode: the row is kept, the bad bytes become U+FFFD.
    assert _rows(read_table(path)) == [(0, "Zo\ufffd", "Caf\ufffd", "view", "1600000000")]


def test_other_declared_encodings(tmp_path):
    path = _write(tmp_path / "events.csv", (HEADER + "Zoë,Café,view,1600000000\n").encode("utf-16"))
    assert _rows(read_table(path, encoding="utf-16"))[0][1:3] == ("Zoë", "Café")
    with pytest.raises(SchemaError, match="encoding"):
        read_table(path, encoding="no-such-codec")


def test_generic_tables_pass_the_encoding_to_every_table(tmp_path):
    ev = _write(tmp_path / "events.csv.gz", gzip.compress((HEADER + "u1,Café,view,1600000000\n").encode("cp1252")))
    items = _write(tmp_path / "items.csv", "item_id,title\nCafé,Crème brûlée\n".encode("cp1252"))
    tables = generic_tables(ev, items=items, encoding="cp1252")
    assert tables.events.collect()["item_id"].to_list() == ["Café"]
    assert tables.items.collect()["title"].to_list() == ["Crème brûlée"]
    assert tables.scratch is not None and Path(tables.scratch.name).exists()


def test_lines_with_too_many_fields_are_malformed_and_the_rest_is_kept(tmp_path):
    data = HEADER + "u1,i1,view,1600000000\nu9,i9,view,1600000000,surplus\nu2,i2,click,1600000001\n"
    rejected: list[pl.DataFrame] = []
    lf = read_table(_write(tmp_path / "events.csv", data.encode()), rejected=rejected)
    assert _rows(lf) == [EXPECTED[0], (2, *EXPECTED[1][1:])]
    bad = pl.concat(rejected)
    assert bad.select(ROW, "raw_line", "source", "reason").rows() == [
        (1, "u9,i9,view,1600000000,surplus", "events", MALFORMED_LINE)]


def test_malformed_lines_are_never_dropped_silently(tmp_path):
    path = _write(tmp_path / "events.csv", (HEADER + "u,i,view,1,surplus\n").encode())
    with pytest.raises(ValueError, match="malformed"):
        read_table(path, rejected=None)


def test_short_lines_and_blank_lines_read_as_missing_fields(tmp_path):
    data = HEADER + "u1,i1,view\n\nu2,i2,click,1600000001\n"
    assert _rows(read_table(_write(tmp_path / "events.csv", data.encode()))) == [
        (0, "u1", "i1", "view", None), (1, None, None, None, None), (2, "u2", "i2", "click", "1600000001")]


@pytest.mark.parametrize("broken", ['u9,"i9,view,1600000000\n', 'u9,i"9,view,1600000000\n', 'u9,"i9"x,view,1\n'])
def test_broken_quoting_does_not_fail_the_file(tmp_path, broken):
    data = HEADER + "u1,i1,view,1600000000\n" + broken
    rejected: list[pl.DataFrame] = []
    lf = read_table(_write(tmp_path / "events.csv", data.encode()), rejected=rejected)
    rows = _rows(lf)
    assert rows[0] == EXPECTED[0]
    assert len(rows) + sum(r.height for r in rejected) == 2


def test_csv_module_path_reads_in_chunks_like_one_piece(tmp_path, monkeypatch):
    lines = [f"u{i},i{i % 7},view,{1600000000 + i}" for i in range(50)]
    lines[17] += ",surplus"
    path = _write(tmp_path / "events.csv", (HEADER + "\n".join(lines) + "\n").encode())
    whole = _rows(read_table(path, rejected=[]))
    monkeypatch.setattr(rawfiles, "_CHUNK_ROWS", 7)
    assert _rows(read_table(path, rejected=[])) == whole
    assert len(whole) == 49 and 17 not in [r[0] for r in whole]


def test_huge_field_on_the_csv_module_path(tmp_path):
    huge = "x" * 300_000   # larger than the csv module's default field limit (128 KiB)
    data = HEADER + f"u1,{huge},view,1600000000\nu2,i2,view,1,surplus\n"
    lf = read_table(_write(tmp_path / "events.csv", data.encode()), rejected=[])
    assert lf.collect()["item_id"].to_list() == [huge]


def test_header_names_are_cleaned_and_duplicates_refused(tmp_path):
    assert clean_names(["\ufeff user_id ", "", "b"]) == ["user_id", "column_2", "b"]
    with pytest.raises(SchemaError, match="duplicate"):
        read_table(_write(tmp_path / "events.csv", b"user_id,user_id,item_id\n1,2,3\n"))


def test_empty_file_is_a_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="empty"):
        read_table(_write(tmp_path / "events.csv", b""))


def test_names_that_repeat_only_after_cleaning_are_refused(tmp_path):
    with pytest.raises(SchemaError, match="duplicate"):
        read_table(_write(tmp_path / "events.csv", b"user_id, user_id ,item_id\n1,2,3\n"))


def test_cli_etl_reads_a_latin1_gzip_table_with_encoding_flag(tmp_path):
    from tapestry.cli import main

    rows = "".join(f"Zoë{u},Café{k},view,{1600000000 + k}\n" for u in range(2) for k in range(4))
    path = _write(tmp_path / "events.csv.gz", gzip.compress((HEADER + rows).encode("latin-1")))
    main(["etl", "--tenant", "acme", "--root", str(tmp_path / "art"), "--events", str(path), "--encoding", "latin-1"])
    items = pl.read_parquet(tmp_path / "art" / "acme" / "etl" / "v0001" / "item_map.parquet")["item_id"]
    assert sorted(items) == [f"Café{k}" for k in range(4)]
    with pytest.raises(SystemExit, match="--encoding"):
        main(["etl", "--tenant", "acme", "--root", str(tmp_path / "art"), "--dataset", "ml-100k",
              "--encoding", "latin-1"])


@pytest.mark.parametrize("check_events", [True, False])
def test_run_etl_gives_the_same_result_with_or_without_the_up_front_check(tmp_path, check_events):
    from tapestry.config import ETLConfig
    from tapestry.etl.pipeline import run_etl

    lines = [f"u{i % 3},i{i},view,{1600000000 + i}" for i in range(12)]
    lines[4] += ",surplus"
    lines[7] = 'u9,"broken,view,1600000000'
    path = _write(tmp_path / "events.csv", (HEADER + "\n".join(lines) + "\n").encode())
    tables = generic_tables(path, check_events=check_events)
    assert (tables.reread_events is None) == check_events
    res = run_etl(tables, "acme", root=tmp_path / "art", cfg=ETLConfig(min_user_events=1), log=lambda *a: None)
    q = pl.read_parquet(res.path / "quarantine.parquet")
    # Row 7's open quote runs to the end of the file: one record whose item id holds newlines.
    assert sorted(q.select(ROW, "reason").rows()) == [(4, MALFORMED_LINE), (7, "bad_item_id")]
    assert res.manifest["counts"]["input_rows"] == 8 and res.manifest["counts"]["valid_rows"] == 6
