"""Property-based fuzzing of the ETL input path (hypothesis): no crash, nothing lost, good rows kept.

Bounded in time: a fixed number of examples per property (TAPESTRY_FUZZ_EXAMPLES, default 40), no deadline
(the machine may be shared; a slow example is not a failure), derandomized so that CI runs the same cases every
time. Run a deeper search with e.g. TAPESTRY_FUZZ_EXAMPLES=2000.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.pipeline import run_etl
from tapestry.etl.sources import generic_tables
from tapestry.etl.validate import bad_id

FUZZ = settings(max_examples=int(os.environ.get("TAPESTRY_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
HEADER = ["user_id", "item_id", "event_type", "timestamp", "weight", "session_id"]
CFG = ETLConfig(min_user_events=1)

ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.:", min_size=1, max_size=12)
good_rows = st.lists(st.tuples(
    ids, ids, st.sampled_from(["view", "click", "purchase", "Rating"]),
    st.integers(CFG.min_timestamp, CFG.max_timestamp).map(str),
    st.one_of(st.just(""), st.floats(0.01, 1000.0).map(lambda w: f"{w:.3f}")),
    st.one_of(st.just(""), ids),
).map(list), min_size=1, max_size=30)

# Lines that are not good rows: no quote and no line break, so that each is exactly one record (the test knows
# how many records the file has) and cannot swallow its neighbours.
_line_chars = st.characters(blacklist_characters='"\r\n', blacklist_categories=("Cs",))
bad_lines = st.one_of(
    st.text(_line_chars, max_size=60),                                           # anything, incl. separators
    good_rows.map(lambda rs: ",".join(rs[0]) + ",surplus"),                      # too many fields
    good_rows.map(lambda rs: ",".join(rs[0][:3])),                                # too few fields
    good_rows.map(lambda rs: ",".join(["=cmd()", *rs[0][1:]])),                  # formula injection
    good_rows.map(lambda rs: ",".join([*rs[0][:3], "yesterday", *rs[0][4:]])),   # bad timestamp
    good_rows.map(lambda rs: ",".join([*rs[0][:4], "-1", rs[0][5]])),            # negative weight
    good_rows.map(lambda rs: ",".join([rs[0][0] + "\x07", *rs[0][1:]])),         # control character
)


def _read(data: bytes) -> tuple[pl.DataFrame, pl.DataFrame, list[pl.DataFrame]]:
    """The ETL's input path on raw bytes: (valid rows, quarantined rows, rejected lines)."""
    from tapestry.etl.validate import validate_events

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.csv"
        path.write_bytes(data)
        tables = generic_tables(path)
        good, bad = validate_events(tables.events, CFG)
        good, bad = pl.collect_all([good, bad])
    return good, bad, tables.rejected


def _check_conservation(good: pl.DataFrame, bad: pl.DataFrame, rejected: list[pl.DataFrame]) -> int:
    """Every record index appears exactly once across valid, quarantined and rejected; returns the count."""
    rows = [*good["source_row"], *bad["source_row"], *[i for r in rejected for i in r["source_row"]]]
    assert sorted(rows) == list(range(len(rows)))
    assert bad["reason"].is_in(S.REASONS).all() and bad["reason"].null_count() == 0
    assert all(r["reason"].eq(S.MALFORMED_LINE).all() for r in rejected)
    # Nothing garbage is kept: every valid id passes the id policy, every weight is positive.
    assert not good.select(bad_id("user_id").any() | bad_id("item_id").any()).item()
    assert (good["weight"] > 0).all() and good["timestamp"].is_between(CFG.min_timestamp, CFG.max_timestamp).all()
    return len(rows)


def _kept(good: pl.DataFrame, positions: list[int], rows: list[list[str]]) -> None:
    by_row = {r["source_row"]: r for r in good.iter_rows(named=True)}
    for pos, row in zip(positions, rows):
        got = by_row[pos]
        assert (got["user_id"], got["item_id"], got["event_type"], got["timestamp"]) == (
            row[0], row[1], row[2].lower(), int(row[3]))
        assert got["weight"] == (1.0 if row[4] == "" else float(row[4])) or abs(got["weight"] - float(row[4])) < 1e-3


@FUZZ
@given(good=good_rows, bad=st.lists(bad_lines, max_size=20), data=st.data())
def test_malformed_lines_mixed_into_good_ones(good, bad, data):
    lines = [("good", r) for r in good] + [("bad", b) for b in bad]
    order = data.draw(st.permutations(range(len(lines))))
    lines = [lines[i] for i in order]
    crlf = data.draw(st.booleans())
    text = (("\r\n" if crlf else "\n").join([",".join(HEADER)] + [
        ",".join(v) if kind == "good" else v for kind, v in lines]) + "\n")
    got, quarantined, rejected = _read(text.encode())
    assert _check_conservation(got, quarantined, rejected) == len(lines)
    _kept(got, [i for i, (kind, _) in enumerate(lines) if kind == "good"], [v for kind, v in lines if kind == "good"])


@FUZZ
@given(good=good_rows, blob=st.binary(max_size=400), before=st.integers(0, 30))
def test_random_bytes_between_good_rows(good, blob, before):
    """Arbitrary bytes (invalid UTF-8, NULs, stray quotes) after some good rows: the rows before them are kept."""
    before = min(before, len(good))
    head = "\n".join([",".join(HEADER)] + [",".join(r) for r in good[:before]]) + "\n"
    tail = "\n".join(",".join(r) for r in good[before:])
    got, quarantined, rejected = _read(head.encode() + blob + b"\n" + tail.encode())
    assert _check_conservation(got, quarantined, rejected) >= before
    _kept(got, list(range(before)), good[:before])


@FUZZ
@given(blob=st.binary(max_size=2000))
def test_random_bytes_after_the_header(blob):
    got, quarantined, rejected = _read((",".join(HEADER) + "\n").encode() + blob)
    _check_conservation(got, quarantined, rejected)


@FUZZ
@given(values=st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
                                min_size=len(HEADER), max_size=len(HEADER)), min_size=1, max_size=10))
def test_any_text_quoted_by_a_csv_writer_reads_back_exactly(values):
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER, *values])   # CRLF ends: a lone \r or \n in a value is then quoted too
    got, quarantined, rejected = _read(buf.getvalue().encode())
    assert _check_conservation(got, quarantined, rejected) == len(values)
    assert not rejected
    # Quarantined rows keep the raw text; valid rows hold it with surrounding whitespace stripped.
    for row in quarantined.select("source_row", *HEADER).iter_rows():
        assert list(row[1:]) == [v if v != "" else None for v in values[row[0]]]
    for row in got.select("source_row", "user_id", "item_id").iter_rows():
        assert list(row[1:]) == [v.strip() for v in values[row[0]][:2]]


@FUZZ
@given(size=st.integers(257, 200_000), column=st.sampled_from(["user_id", "item_id", "session_id", "weight"]),
       extra_field=st.booleans())
def test_huge_fields_are_quarantined_and_neighbours_kept(size, column, extra_field):
    row = dict(zip(HEADER, ["u1", "i1", "view", "1600000000", "1", "s1"]))
    row[column] = "x" * size
    lines = [",".join(HEADER), "u0,i0,view,1600000000,1,s0", ",".join(row.values()), "u2,i2,view,1600000001,2,s2"]
    if extra_field:   # forces the csv-module path as well
        lines.append("u3,i3,view,1600000002,1,s3,surplus")
    got, quarantined, rejected = _read(("\n".join(lines) + "\n").encode())
    assert _check_conservation(got, quarantined, rejected) == len(lines) - 1
    assert got["user_id"].to_list() == ["u0", "u2"]
    reason = {"user_id": S.BAD_USER_ID, "item_id": S.BAD_ITEM_ID, "session_id": S.BAD_SESSION_ID,
              "weight": S.BAD_WEIGHT}[column]
    assert quarantined.select("source_row", "reason").rows() == [(1, reason)]


@settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 4))
@given(good=good_rows, bad=st.lists(bad_lines, max_size=10), check_events=st.booleans())
def test_run_etl_counts_add_up(good, bad, check_events):
    """Through run_etl, with and without the up-front parse check (the CLI skips it; run_etl falls back)."""
    text = "\n".join([",".join(HEADER)] + [",".join(r) for r in good] + bad) + "\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.csv"
        path.write_text(text)
        res = run_etl(generic_tables(path, check_events=check_events), "fuzz", root=Path(d) / "art", cfg=CFG,
                      log=lambda *a: None)
        q = pl.read_parquet(res.path / "quarantine.parquet")
        c = res.manifest["counts"]
        assert c["input_rows"] == len(good) + len(bad)
        assert c["valid_rows"] + c["quarantined_rows"] == c["input_rows"] >= len(good)
        assert q.height == c["quarantined_rows"] and sum(c["by_reason"].values()) == q.height
        assert c["train_rows"] + c["valid_rows_split"] + c["test_rows"] == c["valid_rows"]


@FUZZ
@given(ids=st.lists(st.one_of(
    st.text(max_size=8),
    st.from_regex(r"\A[+\-=@]?[0-9.]{0,5}[a-z\x00\u200b]?[0-9.]{0,3}\Z"),
), min_size=1, max_size=50))
def test_one_pass_id_regex_is_the_documented_rule(ids):
    """schema.ID_POLICY_PATTERN (used) == BAD_ID_PATTERN unless PLAIN_NUMBER_PATTERN (documented)."""
    s = pl.Series(ids, dtype=pl.String)
    documented = s.str.contains(S.BAD_ID_PATTERN) & ~s.str.contains(S.PLAIN_NUMBER_PATTERN)
    assert s.str.contains(S.ID_POLICY_PATTERN).to_list() == documented.to_list()
