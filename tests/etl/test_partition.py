"""Byte ranges of a CSV: cut only at line starts no quoted field or blank line straddles; the ranges cover the file."""
from __future__ import annotations

from tapestry.etl.partition import byte_ranges, write_range

HEADER = b"user_id,item_id,event_type,timestamp\n"


def _lines(n: int) -> list[bytes]:
    return [f"u{i},i{i % 7},view,{1_600_000_000 + i}\n".encode() for i in range(n)]


def _check_cover(path, ranges, body: bytes) -> None:
    assert ranges[0].start == len(HEADER) and ranges[-1].end == len(HEADER) + len(body)
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
    data = path.read_bytes()
    assert all(data[r.start - 1:r.start] == b"\n" for r in ranges)   # every range starts a line


def test_ranges_cover_the_file_at_line_starts(tmp_path):
    body = b"".join(_lines(1000))
    path = tmp_path / "e.csv"
    path.write_bytes(HEADER + body)
    ranges = byte_ranges(path, ",", 4)
    assert len(ranges) == 4
    _check_cover(path, ranges, body)
    out = write_range(ranges[1], tmp_path / "r1.csv").read_bytes()
    assert out.startswith(HEADER) and out[len(HEADER):] == (HEADER + body)[ranges[1].start:ranges[1].end]


def test_no_cut_inside_a_quoted_field_or_next_to_a_blank_line(tmp_path):
    lines = _lines(400)
    # A quoted field spanning lines 150-249 (RFC 4180: inner quotes doubled), blank lines around line 100.
    lines[150] = b'u150,"i1\n'
    lines[249] = b'still ""quoted"" text",view,1600000000\n'
    lines[100:100] = [b"\n", b"\n"]
    body = b"".join(lines)
    path = tmp_path / "e.csv"
    path.write_bytes(HEADER + body)
    data = path.read_bytes()
    quote_open = (data.index(b'"i1'), data.index(b'text"'))
    ranges = byte_ranges(path, ",", 8)
    _check_cover(path, ranges, body)
    for r in ranges[1:]:
        assert not quote_open[0] < r.start <= quote_open[1], r
        assert data[r.start - 2:r.start] != b"\n\n" and data[r.start:r.start + 1] != b"\n", r


def test_a_file_with_only_a_header_is_not_cut(tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(HEADER)
    assert byte_ranges(path, ",", 2) is None


def test_plan_cuts_the_input_file_itself_and_stages_anything_else(tmp_path):
    import gzip

    from tapestry.etl.partition import ByteRange, RowSlice, plan_partitions
    from tapestry.etl.sources import generic_tables

    body = b"".join(_lines(300))
    plain, packed = tmp_path / "e.csv", tmp_path / "e.csv.gz"
    plain.write_bytes(HEADER + body)
    packed.write_bytes(gzip.compress(HEADER + body))
    parts = plan_partitions(generic_tables(plain, check_events=False), 3, tmp_path)
    assert len(parts) == 3 and all(isinstance(p, ByteRange) for p in parts)
    (tmp_path / "stage").mkdir()
    parts = plan_partitions(generic_tables(packed, check_events=False), 3, tmp_path / "stage")
    assert all(isinstance(p, RowSlice) for p in parts) and sum(p.length for p in parts) == 300
    assert [p.offset for p in parts] == [0, 100, 200]
