"""Sizing arithmetic for `tapestry plan`: index memory, embedding-table memory per sharding plan, serving replicas.

Pure functions over the code's own formats, so the numbers follow the code:
- ANN indexes are those `tapestry.serving.ann.build_index` builds (every kind inside an `IndexIDMap2`, IVF list
  count `default_nlist(n)`, compressed codes re-scored against a float32 copy unless `rerank_exact=False`, HNSW built
  by `_build_hnsw_mips`). Byte counts are FAISS's serialized layout (what `save_index` writes and `load_index` reads
  back into memory), checked against FAISS itself in tests/test_planning.py; the `IndexIDMap2` reverse map exists
  only in memory and is added separately.
- Embedding tables are the DLRM ranker's TorchRec tables (tapestry.inference.dlrm_ranker.build_dlrm: an item table,
  and a user table when `user_table` is on), sharded as tapestry.training.distributed.Placement asks TorchRec to
  (table-wise, row-wise, column-wise), with the fused sparse optimizer's state (DLRMConfig.sparse_optimizer).
- Replicas come from this repository's serving benchmarks (benchmarks/results/*.json), see `measured_throughput`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tapestry.serving.ann import AUTO_EXACT_BELOW, default_nlist
from tapestry.serving.batching import DEFAULT_MAX_BATCH_SIZE

DTYPE_BYTES = {"float32": 4, "float16": 2}
ID_BYTES = 8                    # faiss.idx_t: IDMap ids and IVF list ids
LINK_BYTES = 4                  # HNSW neighbour ids (int32)
# std::unordered_map<idx_t, idx_t> that IndexIDMap2 rebuilds when an index is read (not in the file): measured
# here as the resident-memory growth of faiss.read_index on 1M items, IDMap2 minus IDMap (FAISS 1.15.1, glibc).
REVERSE_MAP_BYTES = 44
HNSW_M = 32                     # "HNSW32": the HNSW kind benchmarks/ann.py measures
FASTSCAN_BLOCK = 32             # IVF-PQ fast scan stores each list's codes in blocks of 32 vectors
# Fused sparse optimizers (tapestry.training.distributed.SPARSE_OPTIMIZERS): float32 state per row and column.
# rowwise_adagrad keeps one accumulator per row (per column shard, so column-wise sharding multiplies it).
OPTIMIZER_STATE = {"sgd": "none", "adagrad": "per element", "rowwise_adagrad": "per row"}
STATE_BYTES = 4
SHARDING_TYPES = ("table_wise", "row_wise", "column_wise")
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@dataclass(frozen=True)
class PlanRequest:
    """What to size. items: catalogue size; dim: embedding width; qps: peak requests per second to serve.
    users: rows of a DLRM user table (0: none, the DLRM default `user_table=False`); dtype: embedding and exact
    vector storage; shards: processes the training tables are sharded over; optimizer: the fused sparse optimizer;
    cores_per_replica: CPU cores given to one serving replica; per_core_qps: a throughput of your own (None: the
    benchmark's, see `measured_throughput`)."""
    items: int
    dim: int
    qps: float
    users: int = 0
    dtype: str = "float32"
    shards: int = 2
    optimizer: str = "rowwise_adagrad"
    cores_per_replica: int = 1
    per_core_qps: float | None = None

    def __post_init__(self):
        if self.items < 2 or self.dim < 1 or self.qps <= 0 or self.users < 0 or self.shards < 1:
            raise ValueError(f"need items >= 2, dim >= 1, qps > 0, users >= 0, shards >= 1; got items={self.items} "
                             f"dim={self.dim} qps={self.qps} users={self.users} shards={self.shards}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.optimizer not in OPTIMIZER_STATE:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATE)}, got {self.optimizer!r}")
        if self.cores_per_replica < 1 or (self.per_core_qps is not None and self.per_core_qps <= 0):
            raise ValueError("cores_per_replica must be >= 1 and per_core_qps > 0")


# ---- ANN indexes ----------------------------------------------------------------------------------------------
@dataclass
class IndexSize:
    kind: str              # a row label
    factory: str           # the FAISS factory string (what `tapestry export --index` takes)
    bytes: int             # serialized = loaded size, without the IDMap2 reverse map
    parts: dict[str, int]  # where the bytes go
    note: str = ""


def flat_size(n: int, d: int, dtype: str = "float32") -> IndexSize:
    """IndexIDMap2(IndexFlatIP): n * d * 4 bytes + ids. float16: `--index SQfp16` (FAISS's fp16 scalar quantizer,
    2 bytes per dimension, no re-score: build_index re-scores only integer codes)."""
    parts = {"vectors": n * d * DTYPE_BYTES[dtype], "ids": n * ID_BYTES}
    factory = "Flat" if dtype == "float32" else "SQfp16"
    return IndexSize("Flat (exact)", factory, sum(parts.values()), parts,
                     "the export's `auto` choice" if n < AUTO_EXACT_BELOW and dtype == "float32" else "")


def ivf_sq8_size(n: int, d: int) -> IndexSize:
    """IVF{nlist},SQ8 with the exact re-score (`auto` at >= AUTO_EXACT_BELOW items): 1 byte per dimension in the
    lists, + list ids, + centroids, + the SQ8 range (2 floats per dimension), + the float32 copy re-scored."""
    nlist = default_nlist(n)
    parts = {"codes": n * d, "list ids": n * ID_BYTES, "centroids": nlist * d * 4, "sq8 ranges": 2 * d * 4,
             "exact copy": n * d * 4, "ids": n * ID_BYTES}
    return IndexSize("IVF-SQ8 + exact re-score", f"IVF{nlist},SQ8", sum(parts.values()), parts,
                     "the export's `auto` choice" if n >= AUTO_EXACT_BELOW else "")


def pq_subquantizers(d: int) -> int:
    """PQ{m}x4fs with m = d // 2 (4 bits each: d / 4 bytes per vector), as benchmarks/ann.py measures it."""
    return max(1, d // 2)


def ivf_pq_size(n: int, d: int, rerank_exact: bool = True) -> IndexSize:
    """IVF{nlist},PQ{m}x4fs: m 4-bit codes per vector, stored per list in blocks of 32 vectors (half a block of
    padding per list on average, a whole block for lists under 32 vectors; uneven lists pad more), + list ids,
    + centroids, + the codebooks (m * 16 centroids of d/m floats), and, with `rerank_exact` (IndexConfig's default
    for compressed codes), the float32 copy re-scored."""
    nlist, m = default_nlist(n), pq_subquantizers(d)
    code = math.ceil(m * 4 / 8)
    padded = nlist * max(FASTSCAN_BLOCK, n / nlist + FASTSCAN_BLOCK / 2)   # at least one block per list
    parts = {"codes": round(padded * code), "list ids": n * ID_BYTES, "centroids": nlist * d * 4,
             "codebooks": 16 * d * 4, "ids": n * ID_BYTES}
    if rerank_exact:
        parts["exact copy"] = n * d * 4
    label = "IVF-PQ + exact re-score" if rerank_exact else "IVF-PQ codes only"
    return IndexSize(label, f"IVF{nlist},PQ{m}x4fs", sum(parts.values()), parts,
                     "" if rerank_exact else "IndexConfig(rerank_exact=False); recall not measured here")


def hnsw_links_per_vector(m: int) -> float:
    """Expected neighbour slots per vector: 2M on level 0, M on each level above; FAISS draws a vector's top level
    with P(level >= l) = M^-l, so the upper levels add M * sum(M^-l) = M / (M - 1) slots on average."""
    return 2 * m + m / (m - 1)


def hnsw_size(n: int, d: int, m: int = HNSW_M) -> IndexSize:
    """IndexHNSWFlat(d, M): the float32 vectors, the links (int32), a level (int32) and an offset (size_t) each."""
    parts = {"vectors": n * d * 4, "links": round(n * hnsw_links_per_vector(m) * LINK_BYTES),
             "levels + offsets": n * (4 + 8), "ids": n * ID_BYTES}
    return IndexSize("HNSW", f"HNSW{m}", sum(parts.values()), parts)


def index_sizes(n: int, d: int, dtype: str = "float32") -> list[IndexSize]:
    """Every kind's size. `dtype` changes only the Flat row: build_index keeps float32 vectors for IVF re-scores
    and HNSW (it casts the item table to float32)."""
    return [flat_size(n, d, dtype), ivf_sq8_size(n, d), ivf_pq_size(n, d, True), ivf_pq_size(n, d, False),
            hnsw_size(n, d, HNSW_M)]


# ---- embedding tables per sharding plan -----------------------------------------------------------------------
@dataclass
class Table:
    name: str
    rows: int
    cols: int


@dataclass
class ShardPlan:
    plan: str                       # "one process", table_wise, row_wise, column_wise
    shard_bytes: list[int]          # weights + optimizer state held by each shard
    note: str = ""

    @property
    def largest(self) -> int:
        return max(self.shard_bytes)

    @property
    def total(self) -> int:
        return sum(self.shard_bytes)


def dlrm_tables(items: int, dim: int, users: int = 0) -> list[Table]:
    """The tables whose size grows with the catalogue and the users: `item` (items + 1 rows: row 0 is padding) and,
    with a user table, `user`. The per-attribute and cross tables (at most DLRMConfig.cross_buckets = 16,384 rows
    each) depend on the tenant's attributes and are left out."""
    tables = [Table("item", items + 1, dim)]
    if users:
        tables.append(Table("user", users + 1, dim))
    return tables


def shard_blocks(tables: list[Table], shards: int, plan: str) -> list[list[Table]]:
    """The blocks (table name, rows, cols) each of `shards` processes holds under a TorchRec sharding type, as
    Placement asks the planner for them (tests/test_planning.py compares them with TorchRec's own plan).

    table_wise: whole tables, each to the least loaded shard, largest first (the largest table bounds a shard);
    row_wise: every table cut into row blocks of ceil(rows / shards), the last one shorter;
    column_wise: every table cut into column blocks of embedding_dim // shards (dlrm_loop's column_shard_dim; a
        remainder is a block of its own), dealt round-robin.
    """
    if plan not in SHARDING_TYPES:
        raise ValueError(f"plan must be one of {SHARDING_TYPES}, got {plan!r}")
    out: list[list[Table]] = [[] for _ in range(shards)]
    if plan == "table_wise":
        loads = [0] * shards
        for t in sorted(tables, key=lambda t: t.rows * t.cols, reverse=True):
            i = loads.index(min(loads))
            loads[i] += t.rows * t.cols
            out[i].append(t)
    elif plan == "row_wise":
        for t in tables:
            block = math.ceil(t.rows / shards)
            for s in range(shards):
                if t.rows - s * block > 0:
                    out[s].append(Table(t.name, min(block, t.rows - s * block), t.cols))
    else:
        for t in tables:
            width = max(1, t.cols // shards)
            widths = [width] * (t.cols // width) + ([t.cols % width] if t.cols % width else [])
            for i, w in enumerate(widths):
                out[i % shards].append(Table(t.name, t.rows, w))
    return out


def block_bytes(block: Table, dtype: str = "float32", optimizer: str = "rowwise_adagrad") -> int:
    """Weights in `dtype` + the fused optimizer's float32 state (per element, per row of the block, or none)."""
    weights = block.rows * block.cols * DTYPE_BYTES[dtype]
    state = {"none": 0, "per element": block.rows * block.cols, "per row": block.rows}[OPTIMIZER_STATE[optimizer]]
    return weights + state * STATE_BYTES


def shard_plans(tables: list[Table], shards: int, dtype: str = "float32",
                optimizer: str = "rowwise_adagrad") -> list[ShardPlan]:
    """Bytes per shard: one process (no sharding), then each TorchRec sharding type over `shards` processes."""
    plans = [ShardPlan("one process", [sum(block_bytes(t, dtype, optimizer) for t in tables)])]
    for kind in SHARDING_TYPES:
        blocks = shard_blocks(tables, shards, kind)
        idle = sum(1 for b in blocks if not b)
        note = f"{idle} of {shards} shards hold nothing" if idle else ""
        if kind == "column_wise" and optimizer == "rowwise_adagrad" and shards > 1:
            note = (note + "; " if note else "") + "row-wise state kept per column block"
        plans.append(ShardPlan(kind, [sum(block_bytes(b, dtype, optimizer) for b in bs) for bs in blocks], note))
    return plans


# ---- replicas -------------------------------------------------------------------------------------------------
@dataclass
class Throughput:
    per_core_qps: float
    source: str            # the result file (or "given")
    figure: str            # which number in it, and why this one
    num_items: int | None = None


def _server_cores(level: dict) -> float:
    """Cores the server used at one load level: every process but the load generator (concurrency.py's `cores`)."""
    return sum(v for k, v in level.get("cores", {}).items() if k != "load_generator")


def measured_throughput(items: int, results_dir: Path = RESULTS_DIR) -> Throughput:
    """Requests per second one server core answers, from this repository's own serving benchmarks.

    Below AUTO_EXACT_BELOW items the export serves a Flat index: benchmarks/concurrency.py's results, which record
    the CPU each process used, give it directly: requests/s divided by the server's cores (Triton and its stubs, not
    the load generator) at the busiest level of the default export (dynamic batching, max_batch_size 64, the
    feature reranker); of several such files, the largest catalogue. At or above it the export serves IVF-SQ8:
    benchmarks/large_catalogue.py (1M items) is the only measurement, and it records no CPU split, so its best
    requests/s is divided by all the machine's cores: the load generator's share is counted as the server's, which
    understates the per-core throughput (a safe side for sizing).
    """
    results_dir = Path(results_dir)
    if items < AUTO_EXACT_BELOW:
        best = None
        for path in sorted(results_dir.glob("concurrency-*.json")):
            doc = json.loads(path.read_text())
            if doc.get("reranker", "feature") != "feature":
                continue
            for config in doc.get("configurations", []):
                if config.get("max_batch_size") != DEFAULT_MAX_BATCH_SIZE:
                    continue
                level = max(config["results"], key=lambda r: r["requests_per_s"])
                cores = _server_cores(level)
                if cores <= 0:
                    continue
                key = (doc.get("num_items", 0), level["requests_per_s"] / cores)
                if best is None or key > best[0]:
                    figure = (f"max_batch_size {DEFAULT_MAX_BATCH_SIZE}, {level['clients']} clients: "
                              f"{level['requests_per_s']:.1f} req/s on {cores:.2f} server cores "
                              f"({doc.get('served_model')}, {doc.get('index', {}).get('factory')} index over "
                              f"{doc.get('num_items', 0):,} items)")
                    best = (key, Throughput(key[1], str(path.relative_to(results_dir.parents[1])
                                                         if results_dir.parents[1] in path.parents else path),
                                            figure, doc.get("num_items")))
        if best is None:
            raise FileNotFoundError(f"no concurrency-*.json result with the feature reranker and max_batch_size "
                                    f"{DEFAULT_MAX_BATCH_SIZE} under {results_dir}: run benchmarks/concurrency.py "
                                    "or pass --per-core-qps")
        return best[1]
    best = None
    for path in sorted(results_dir.glob("large_catalogue-*.json")):
        doc = json.loads(path.read_text())
        export = doc.get("exports", {}).get("auto")
        cpus = doc.get("machine", {}).get("cpu_count")
        if not export or not cpus:
            continue
        level = max(export["results"], key=lambda r: r["requests_per_s"])
        qps = level["requests_per_s"] / cpus
        if best is None or qps > best.per_core_qps:
            factory = export.get("index", {}).get("factory")
            figure = (f"export 'auto' ({factory}), {level['clients']} clients: {level['requests_per_s']:.1f} req/s "
                      f"on a {cpus}-core machine, load generator included ({export.get('num_items', 0):,} items)")
            best = Throughput(qps, str(path.relative_to(results_dir.parents[1])
                                       if results_dir.parents[1] in path.parents else path), figure,
                              export.get("num_items"))
    if best is None:
        raise FileNotFoundError(f"no large_catalogue-*.json result under {results_dir}: run "
                                "benchmarks/large_catalogue.py or pass --per-core-qps")
    return best


@dataclass
class Replicas:
    per_core_qps: float
    cores: int             # ceil(qps / per_core_qps)
    replicas: int          # ceil(cores / cores_per_replica)
    source: str
    figure: str
    caveats: list[str] = field(default_factory=list)


def replicas_for(req: PlanRequest, results_dir: Path = RESULTS_DIR) -> Replicas:
    if req.per_core_qps is not None:
        t = Throughput(req.per_core_qps, "given", "--per-core-qps")
    else:
        t = measured_throughput(req.items, results_dir)
    cores = math.ceil(req.qps / t.per_core_qps)
    caveats = []
    if t.num_items and req.items > t.num_items:
        caveats.append(f"measured at {t.num_items:,} items: a larger catalogue costs more per request (not measured)")
    if t.source != "given":
        caveats.append("measured with 64-dim item vectors on a shared 2-core machine, no GPU")
    return Replicas(t.per_core_qps, cores, math.ceil(cores / req.cores_per_replica), t.source, t.figure, caveats)


# ---- the worksheet --------------------------------------------------------------------------------------------
def plan(req: PlanRequest, results_dir: Path = RESULTS_DIR) -> dict:
    """Everything `tapestry plan` prints, as plain data (what --json writes)."""
    indexes = index_sizes(req.items, req.dim, req.dtype)
    tables = dlrm_tables(req.items, req.dim, req.users)
    served = indexes[0] if req.items < AUTO_EXACT_BELOW else indexes[1]     # what `--index auto` exports
    encoder = (req.items + 1) * req.dim * DTYPE_BYTES[req.dtype]           # the user encoder's item table
    dlrm = sum(t.rows * t.cols * DTYPE_BYTES[req.dtype] for t in tables)   # unsharded at serving time
    return {
        "request": asdict(req),
        "indexes": [{**asdict(i), "reverse_map_bytes": req.items * REVERSE_MAP_BYTES,
                     "in_memory_bytes": i.bytes + req.items * REVERSE_MAP_BYTES} for i in indexes],
        "tables": [asdict(t) for t in tables],
        "serving_tables_bytes": dlrm,
        "per_replica": {"index": served.factory, "index_bytes": served.bytes + req.items * REVERSE_MAP_BYTES,
                        "encoder_item_table_bytes": encoder, "dlrm_tables_bytes": dlrm,
                        "total_bytes": served.bytes + req.items * REVERSE_MAP_BYTES + encoder + dlrm},
        "sharding": [{**asdict(p), "largest": p.largest, "total": p.total}
                     for p in shard_plans(tables, req.shards, req.dtype, req.optimizer)],
        "replicas": asdict(replicas_for(req, results_dir)),
    }
