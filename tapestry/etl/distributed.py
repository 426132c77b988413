"""`tapestry etl --engine dask`: the stages of run_etl that read every event, run on a Dask cluster's workers.

The same Polars code as the single-node run, on partitions of the input (tapestry/etl/partition.py):
1. validate: each worker validates one partition (byte range of the CSV, or row slice of a staged copy) with
   pipeline.validate_to_parquet, unchanged, into Parquet files on the shared scratch directory. The driver then
   numbers the rows of the whole input (a byte range's rows are numbered from 0; it adds the records before it).
2. id maps: each worker takes its partition's distinct user and item ids; they are merged pairwise on the workers
   (a tree reduce) and the driver fits the IdEncoders on the union, so the ids get exactly the single-node order
   (IdEncoder orders the distinct ids, whichever partition they came from).
3. encode + split: each worker encodes its partition and cuts it by user range (the single-node run's
   split.sort_by_user ranges); then each user range is sorted (SORT_KEY) and tagged for the split on one worker.
   A user's events are all in one range, and source_row breaks every tie, so the ranges read back in order are
   the single-node order row for row.
Everything after that (entity tables, quarantine, the versioned write, the manifest) is run_etl's own code.

The cluster: `dask_stages(workers=N)` starts a LocalCluster of N worker processes and stops it at the end;
`dask_stages(scheduler="tcp://host:8786", scratch=DIR)` uses a running cluster, whose workers must read the input
and DIR (shared storage) at the same paths as the driver. Dask was chosen over Ray here: ~3 MB of wheels
(dask + distributed, pure Python; Ray's wheel alone is 79 MB), a 2-worker LocalCluster starts in ~0.7 s on the
2-core development box, and both install beside numpy<2 (README, "ETL on a cluster").
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from tapestry.config import ETLConfig
from tapestry.etl.encode import IdEncoder
from tapestry.etl.engines import collect_engine, select_polars_engine
from tapestry.etl.partition import ByteRange, RowSlice, plan_partitions, write_range
from tapestry.etl.pipeline import LocalStages, validate_to_parquet
from tapestry.etl.rawfiles import ROW, scan_csv_unchecked
from tapestry.etl.sources import RawTables
from tapestry.etl.split import BUCKET_ROWS, LEAVE_ONE_OUT, SORT_KEY, tag_positions
from tapestry.online.tombstones import drop_erased_events


# --- what runs on the workers (module-level functions: Dask pickles them by reference) -------------------------

@dataclass
class PartValidated:
    valid: str                       # Parquet of the partition's valid rows
    bad: str                         # Parquet of its quarantined rows
    records: int                     # input records it held: valid + quarantined + malformed lines
    rejected: pl.DataFrame | None    # malformed lines (the csv-module re-read), rows numbered within the partition
    numbered_from_zero: bool         # True for a byte range: the driver adds the records of the ranges before it
    csv_module: bool = False         # read by Python's csv module (Polars could not parse the range)


def validate_part(index: int, part: ByteRange | RowSlice, cfg: ETLConfig, scratch: str,
                  csv_module: bool = False) -> PartValidated:
    """One partition through validate_to_parquet. `csv_module`: read a byte range with Python's csv module from the
    start, as the single-node run reads the whole file once Polars fails on any line of it."""
    out = Path(scratch) / f"part-{index:05d}"
    out.mkdir(parents=True, exist_ok=True)
    rejected: list[pl.DataFrame] = []
    if isinstance(part, ByteRange):
        path = write_range(part, out / "range.csv")
        lf, reread = scan_csv_unchecked(path, part.separator, "events", out, rejected, "utf-8")
        tables = RawTables(events=reread() if csv_module else lf, reread_events=None if csv_module else reread,
                           rejected=rejected)
    else:
        tables = RawTables(events=pl.scan_parquet(part.path).slice(part.offset, part.length))
    good, bad = validate_to_parquet(tables, cfg, out)
    n_good, n_bad = (lf.select(pl.len()).collect().item() for lf in (good, bad))
    n_rejected = sum(r.height for r in rejected)
    if isinstance(part, ByteRange):
        (out / "range.csv").unlink()      # validated: only the Parquet outputs are read from here on
    return PartValidated(str(out / "valid.parquet"), str(out / "quarantined.parquet"), n_good + n_bad + n_rejected,
                         pl.concat(rejected) if rejected else None, isinstance(part, ByteRange),
                         isinstance(part, ByteRange) and tables.reread_events is None)


def distinct_ids(good: pl.LazyFrame) -> tuple[pl.Series, pl.Series]:
    return tuple(good.select(pl.col(c).unique()).collect()[c] for c in ("user_id", "item_id"))


def union_ids(a: tuple[pl.Series, pl.Series], b: tuple[pl.Series, pl.Series]) -> tuple[pl.Series, pl.Series]:
    return tuple(pl.concat([x, y]).unique() for x, y in zip(a, b))


def encode_part(index: int, good: pl.LazyFrame, users: pl.DataFrame, items: pl.DataFrame, width: int,
                scratch: str) -> dict[int, list[str]]:
    """The partition encoded and cut into user ranges of `width` user indices: {range: its Parquet files}."""
    encoded = IdEncoder("item", items).encode(IdEncoder("user", users).encode(good, maintain_order=False),
                                              maintain_order=False)
    base = Path(scratch) / f"encoded-{index:05d}"
    encoded.with_columns((pl.col("user_idx") // width).alias("_range")).sink_parquet(
        pl.PartitionBy(base, key="_range", include_key=False), mkdir=True)
    return {int(d.name.split("=", 1)[1]): [str(p) for p in sorted(d.glob("*.parquet"))]
            for d in base.glob("_range=*")}


def sort_range(files: list[str], split_kind: str, out: str, polars_engine: str) -> int:
    """One user range in SORT_KEY order (tagged for leave-one-out), written to `out`: its row count."""
    part = pl.scan_parquet(files).sort(SORT_KEY)
    frame = (tag_positions(part) if split_kind == LEAVE_ONE_OUT else part).collect(
        engine=collect_engine(select_polars_engine(polars_engine), "in-memory"))
    frame.write_parquet(out)
    return frame.height


# --- the driver ------------------------------------------------------------------------------------------------

class DaskStages(LocalStages):
    """run_etl's `stages` on a Dask cluster (see the module doc). `partitions`: how many pieces the input is cut
    into (default: one per worker); `scratch`: a directory every worker can read and write (default: run_etl's
    scratch directory, which is right for a LocalCluster on this machine)."""

    def __init__(self, client, partitions: int | None = None, scratch: Path | None = None, engine: str = "cpu"):
        super().__init__(engine)
        self.client = client
        self.workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        self.partitions = partitions or self.workers
        self.scratch = Path(scratch) if scratch else None
        self._goods: list[pl.LazyFrame] = []
        self._cfg = ETLConfig()
        self._work: Path | None = None

    def validate(self, tables: RawTables, cfg: ETLConfig, scratch: Path, erased: frozenset[str]
                 ) -> tuple[pl.LazyFrame, pl.LazyFrame, int]:
        self._cfg = cfg
        self._work = Path(self.scratch or scratch) / f"dask-{os.getpid()}-{id(self):x}"
        self._work.mkdir(parents=True, exist_ok=True)
        parts = plan_partitions(tables, self.partitions, self._work)
        done = self.client.gather([self.client.submit(validate_part, i, p, cfg, str(self._work), pure=False)
                                   for i, p in enumerate(parts)])
        if any(d.csv_module for d in done):
            # One range needed the csv module: the single-node run then reads the whole file with it, and the two
            # readers differ in details kept in quarantine (`""` is "" to Polars, null to the csv module).
            again = {i: self.client.submit(validate_part, i, p, cfg, str(self._work), True, pure=False)
                     for i, (p, d) in enumerate(zip(parts, done)) if not d.csv_module}
            done = [again[i].result() if i in again else d for i, d in enumerate(done)]
        goods, bads, erased_rows, offset = [], [], 0, 0
        for part in done:
            shift = offset if part.numbered_from_zero else 0
            good, bad = (pl.scan_parquet(p).with_columns(pl.col(ROW) + shift) for p in (part.valid, part.bad))
            good, bad, n = drop_erased_events(good, bad, erased)
            goods.append(good)
            bads.append(bad)
            erased_rows += n
            if part.rejected is not None:
                tables.rejected.append(part.rejected.with_columns(pl.col(ROW) + shift))
            offset += part.records
        self._goods = goods
        return (pl.concat(goods, how="vertical"), pl.concat(bads, how="diagonal_relaxed"), erased_rows)

    def fit_ids(self, good: pl.LazyFrame) -> tuple[IdEncoder, IdEncoder]:
        futures = [self.client.submit(distinct_ids, g, pure=False) for g in self._goods]
        while len(futures) > 1:   # a tree reduce on the workers: pairs merged until one is left
            pairs = [self.client.submit(union_ids, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
            futures = pairs + (futures[-1:] if len(futures) % 2 else [])
        user_ids, item_ids = futures[0].result()
        return IdEncoder.fit("user", user_ids), IdEncoder.fit("item", item_ids)

    def encode_sorted(self, good: pl.LazyFrame, users: IdEncoder, items: IdEncoder, rows: int, split_kind: str,
                      scratch: Path) -> pl.LazyFrame:
        # At least one user range per worker, and never more than BUCKET_ROWS events in one (as on one node).
        k = max(self.workers, -(-rows // BUCKET_ROWS))
        width = max(1, -(-len(users) // k))
        maps = self.client.scatter([users.mapping, items.mapping], broadcast=True)
        cut = self.client.gather([self.client.submit(encode_part, i, g, maps[0], maps[1], width, str(self._work),
                                                     pure=False) for i, g in enumerate(self._goods)])
        ranges = sorted({r for files in cut for r in files})
        outs = [str(self._work / f"sorted-{r:05d}.parquet") for r in ranges]
        counts = self.client.gather([
            self.client.submit(sort_range, [f for files in cut for f in files.get(r, [])], split_kind, out,
                               self._cfg.polars_engine, pure=False) for r, out in zip(ranges, outs)])
        if sum(counts) != rows:   # PartitionBy is marked unstable in Polars: never lose rows to a layout change
            raise RuntimeError(f"user-range partitioning on the workers kept {sum(counts)} of {rows} rows")
        return pl.scan_parquet(outs)

    def cleanup(self) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)


@dataclass
class ClusterConfig:
    """`tapestry etl --engine dask --workers N [--scheduler ADDRESS] [--scratch DIR]`."""
    workers: int = 2                 # local worker processes (ignored with a scheduler address)
    scheduler: str | None = None     # e.g. tcp://10.0.0.5:8786: a running cluster; None = start a LocalCluster
    scratch: Path | None = None      # shared directory for the workers' files (required with a scheduler)
    partitions: int | None = None    # pieces the input is cut into (default: one per worker)


@contextmanager
def dask_stages(cluster: ClusterConfig, polars_engine: str = "cpu") -> Iterator[DaskStages]:
    """DaskStages on a LocalCluster of `cluster.workers` processes (started here, stopped at the end), or on the
    running cluster at `cluster.scheduler`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise RuntimeError("`--engine dask` needs dask.distributed: pip install '.[distributed]'") from e
    local = None
    if cluster.scheduler:
        if cluster.scratch is None:
            raise ValueError("--scheduler needs --scratch: a directory every worker reads and writes at the same path")
        client = Client(cluster.scheduler)
    else:
        if cluster.workers < 1:
            raise ValueError(f"--workers must be >= 1, not {cluster.workers}")
        # Each worker's Polars gets its share of the cores, so N workers do not each start a pool of all of them.
        threads = str(max(1, (os.cpu_count() or 1) // cluster.workers))
        local = LocalCluster(n_workers=cluster.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                             env={"POLARS_MAX_THREADS": threads})
        client = Client(local)
    stages = DaskStages(client, cluster.partitions, cluster.scratch, polars_engine)
    try:
        yield stages
    finally:
        stages.cleanup()
        client.close()
        if local is not None:
            local.close()
