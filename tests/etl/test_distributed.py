"""`tapestry etl --engine dask`: the artifacts of a run on a 2-worker LocalCluster equal the single-node run's, row
for row (compare_artifacts), with bad rows in quarantine, erased users, and both kinds of partition."""
from __future__ import annotations

import pytest

from tapestry.etl.compare import compare_artifacts
from tapestry.etl.partition import byte_ranges
from tapestry.etl.pipeline import run_etl
from tapestry.etl.sources import generic_tables
from tapestry.etl.synthetic import synthetic_tables, write_event_table
from tapestry.online.tombstones import append_tombstone

distributed = pytest.importorskip("distributed")
from tapestry.etl.distributed import DaskStages  # noqa: E402  (needs dask.distributed)

QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def client():
    """Two worker processes, started for this module and stopped after it."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  env={"POLARS_MAX_THREADS": "1"}) as cluster, distributed.Client(cluster) as c:
        yield c


def test_synthetic_tables_with_bad_rows_and_an_erased_user(client, tmp_path):
    append_tombstone("acme", "u0003", tmp_path)   # its rows are dropped, not even quarantined, by both engines
    make = lambda: synthetic_tables(num_users=80, num_items=40, bad_rows=2, seed=5)  # noqa: E731
    single = run_etl(make(), "acme", tmp_path, **QUIET)
    stages = DaskStages(client, partitions=3)     # 3 row slices of the staged table on 2 workers
    spread = run_etl(make(), "acme", tmp_path, stages=stages, **QUIET)
    assert compare_artifacts(single.path, spread.path) == []
    counts = spread.manifest["counts"]
    assert counts["erased_rows"] > 0 and counts["quarantined_rows"] > 0
    assert counts["by_reason"]["malformed_line"] == 2 and counts["by_reason"]["missing_entity_id"] == 4


def test_csv_byte_ranges_with_a_line_the_polars_reader_refuses(client, tmp_path):
    """A line with too many fields sends the single-node run to the csv module for the whole file: the ranges
    must then be read the same way (`""` differs between the two readers), and the line is quarantined once."""
    path = tmp_path / "events.csv"
    write_event_table(path, 6_000, chunk_rows=6_000, bad_fraction=0.05)
    lines = path.read_bytes().split(b"\n")
    lines.insert(4_500, b"u1,i1,view,1600000000,1,s1,EXTRA")
    lines[2_000:2_000] = [b"", b""]
    path.write_bytes(b"\n".join(lines))
    assert len(byte_ranges(path, ",", 2)) == 2
    single = run_etl(generic_tables(path, check_events=False), "acme", tmp_path, **QUIET)
    spread = run_etl(generic_tables(path, check_events=False), "acme", tmp_path, stages=DaskStages(client), **QUIET)
    assert compare_artifacts(single.path, spread.path) == []
    assert spread.manifest["counts"]["by_reason"]["malformed_line"] == 1
    assert spread.manifest["counts"]["input_rows"] == 6_003   # 6,000 + the long line + 2 blank lines (rows of nulls)


def test_clean_csv_in_byte_ranges_read_by_polars(client, tmp_path):
    path = tmp_path / "events.csv"
    write_event_table(path, 8_000, chunk_rows=4_000)
    single = run_etl(generic_tables(path, check_events=False), "acme", tmp_path, **QUIET)
    spread = run_etl(generic_tables(path, check_events=False), "acme", tmp_path,
                     stages=DaskStages(client, partitions=4), **QUIET)
    assert compare_artifacts(single.path, spread.path) == []
    assert spread.manifest["counts"]["input_rows"] == 8_000


def test_cli_runs_on_a_local_cluster_it_starts_and_refuses_cluster_flags_without_an_engine(tmp_path):
    from tapestry.cli import main

    path = tmp_path / "events.csv"
    write_event_table(path, 2_000, chunk_rows=2_000)
    main(["etl", "--tenant", "acme", "--root", str(tmp_path), "--events", str(path), "--engine", "dask",
          "--workers", "1", "--polars-engine", "cpu"])
    local = run_etl(generic_tables(path, check_events=False), "acme", tmp_path, **QUIET)
    assert compare_artifacts(tmp_path / "acme" / "etl" / "v0001", local.path) == []
    with pytest.raises(SystemExit, match="apply to --engine dask"):
        main(["etl", "--tenant", "acme", "--root", str(tmp_path), "--events", str(path), "--workers", "2"])
