"""tapestry.planning against the things it models: FAISS's serialized indexes (built by tapestry.serving.ann the way
the export builds them), TorchRec's sharding planner, this repo's benchmark results; and `tapestry plan` itself."""
from __future__ import annotations

import json
import math

import faiss
import numpy as np
import pytest

from tapestry import planning as P
from tapestry.serving.ann import IndexConfig, build_index, default_nlist

MIB = 2 ** 20


def _items(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([np.zeros((1, d)), rng.standard_normal((n, d))]).astype(np.float32)   # row 0 = padding


def _serialized(index) -> int:
    return faiss.serialize_index(index).nbytes


@pytest.mark.parametrize("dtype,factory", [("float32", "Flat"), ("float16", "SQfp16")])
def test_flat_matches_faiss(dtype, factory):
    n, d = 3000, 16
    est = P.flat_size(n, d, dtype)
    assert est.factory == factory
    real = _serialized(build_index(_items(n, d), IndexConfig(factory)))
    assert est.bytes == pytest.approx(real, abs=1024)   # the rest is FAISS's headers
    assert est.bytes == n * (d * P.DTYPE_BYTES[dtype] + 8)


def test_ivf_sq8_and_ivf_pq_match_faiss():
    n, d = 20_000, 8
    items, nlist = _items(n, d), default_nlist(n)
    sq8 = build_index(items, IndexConfig(f"IVF{nlist},SQ8", train_size=5000))
    assert P.ivf_sq8_size(n, d).bytes == pytest.approx(_serialized(sq8), rel=0.01)
    assert P.ivf_sq8_size(n, d).factory == f"IVF{nlist},SQ8"
    for rerank in (True, False):
        est = P.ivf_pq_size(n, d, rerank_exact=rerank)
        pq = build_index(items, IndexConfig(est.factory, rerank_exact=rerank, train_size=5000))
        # codes: 32-vector blocks per list; the padding is estimated (half a block per list), hence 5 %
        assert est.bytes == pytest.approx(_serialized(pq), rel=0.05), est.factory


def test_hnsw_matches_faiss():
    n, d = 3000, 16
    real = _serialized(build_index(_items(n, d), IndexConfig("HNSW32")))   # the MIPS-augmented build
    assert P.hnsw_size(n, d, 32).bytes == pytest.approx(real, rel=0.01)
    # FAISS's rule of thumb, (d * 4 + M * 2 * 4) bytes per vector, is the bulk of it
    assert P.hnsw_size(n, d, 32).bytes / n == pytest.approx(d * 4 + 32 * 2 * 4, rel=0.1)


def test_index_sizes_match_the_ann_benchmark_files():
    """benchmarks/ann.py recorded serialize_index sizes at 100k and 1M items: the formulas give them back."""
    checked = 0
    for path in sorted(P.RESULTS_DIR.glob("ann-synthetic-*.json")):
        doc = json.loads(path.read_text())
        for r in doc["results"]:
            est = {"Flat": P.flat_size, "IVF{},SQ8": P.ivf_sq8_size}
            key = "Flat" if r["factory"] == "Flat" else \
                "IVF{},SQ8" if r["factory"] == f"IVF{default_nlist(doc['items'])},SQ8" else None
            if key:
                assert est[key](doc["items"], doc["dim"]).bytes / MIB == pytest.approx(r["index_mb"], rel=0.001)
                checked += 1
    assert checked >= 4


def test_shard_blocks_match_torchrec_planner():
    """Row- and column-wise blocks as TorchRec's planner cuts them (column_shard_dim = dim // world, dlrm_loop's)."""
    pytest.importorskip("torchrec")
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    from tapestry.training.distributed import _RowWiseAllowedSharder

    world, dim = 3, 12
    tables = [P.Table("item", 1001, dim), P.Table("user", 301, dim)]
    configs = [EmbeddingBagConfig(name=t.name, embedding_dim=t.cols, num_embeddings=t.rows, feature_names=[t.name])
               for t in tables]
    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    for kind in ("row_wise", "column_wise"):
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, local_world_size=world, compute_device="cpu"),
            constraints={c.name: ParameterConstraints(sharding_types=[kind], min_partition=dim // world)
                         for c in configs})
        plan = planner.plan(ebc, [_RowWiseAllowedSharder()]).plan[""]
        theirs = sorted((name, *s.shard_sizes) for name, p in plan.items() for s in p.sharding_spec.shards)
        ours = sorted((b.name, b.rows, b.cols) for shard in P.shard_blocks(tables, world, kind) for b in shard)
        assert ours == theirs, kind


def test_shard_plans_arithmetic():
    tables = P.dlrm_tables(items=999, dim=8, users=199)        # 1000 x 8 and 200 x 8
    assert [(t.name, t.rows) for t in tables] == [("item", 1000), ("user", 200)]
    plans = {p.plan: p for p in P.shard_plans(tables, 2, "float32", "rowwise_adagrad")}
    one = 1200 * 8 * 4 + 1200 * 4                                # weights + one float32 accumulator per row
    assert plans["one process"].shard_bytes == [one]
    assert plans["table_wise"].shard_bytes == [1000 * 36, 200 * 36]
    assert plans["row_wise"].shard_bytes == [600 * 36, 600 * 36]
    assert plans["column_wise"].shard_bytes == [1200 * (4 * 4 + 4)] * 2   # the row state in every column block
    assert plans["column_wise"].total > one                      # ... so column-wise holds more in all
    adagrad = {p.plan: p for p in P.shard_plans(tables, 2, "float16", "adagrad")}
    assert adagrad["one process"].largest == 1200 * 8 * (2 + 4)
    sgd = {p.plan: p for p in P.shard_plans(tables, 4, "float32", "sgd")}
    assert sgd["table_wise"].note.startswith("2 of 4 shards hold nothing")


def test_optimizers_are_the_training_codes():
    pytest.importorskip("torchrec")
    from tapestry.training.distributed import SPARSE_OPTIMIZERS
    from tapestry.training.dlrm_loop import DLRMConfig

    assert set(P.OPTIMIZER_STATE) == set(SPARSE_OPTIMIZERS)
    assert P.PlanRequest(10, 8, 1).optimizer == DLRMConfig().sparse_optimizer
    assert set(P.SHARDING_TYPES) >= set(DLRMConfig().sharding_types)


def test_measured_throughput_reads_the_benchmark_files():
    small = P.measured_throughput(1000)
    doc = json.loads((P.RESULTS_DIR / "concurrency-ml1m.json").read_text())
    batched = next(c for c in doc["configurations"] if c["max_batch_size"] == 64)
    busiest = max(batched["results"], key=lambda r: r["requests_per_s"])
    cores = sum(v for k, v in busiest["cores"].items() if k != "load_generator")
    assert small.source.endswith("concurrency-ml1m.json")
    assert small.per_core_qps == pytest.approx(busiest["requests_per_s"] / cores)
    large = P.measured_throughput(2_000_000)
    assert large.source.endswith("large_catalogue-1000000.json") and large.per_core_qps > 0
    r = P.replicas_for(P.PlanRequest(2_000_000, 64, qps=1000, cores_per_replica=4))
    assert r.cores == math.ceil(1000 / large.per_core_qps) and r.replicas == math.ceil(r.cores / 4)
    assert any("1,000,001 items" in c for c in r.caveats)


def test_measured_throughput_without_results_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/concurrency.py or pass --per-core-qps"):
        P.measured_throughput(1000, tmp_path)
    assert P.replicas_for(P.PlanRequest(10, 8, qps=250, per_core_qps=100), tmp_path).cores == 3


@pytest.mark.parametrize("bad", [dict(items=1), dict(dim=0), dict(qps=0), dict(dtype="int8"), dict(shards=0),
                                 dict(optimizer="adam"), dict(users=-1)])
def test_bad_requests_are_refused(bad):
    with pytest.raises(ValueError):
        P.PlanRequest(**{"items": 100, "dim": 8, "qps": 10, **bad})


def test_cli_table_and_json(capsys):
    from tapestry.cli import main

    main(["plan", "--items", "1000000", "--dim", "64", "--qps", "2000", "--users", "1000", "--shards", "4"])
    out = capsys.readouterr().out
    for text in ("Flat (exact)", "IVF4096,SQ8", "IVF4096,PQ32x4fs", "HNSW32", "table_wise", "row_wise",
                 "column_wise", "large_catalogue-1000000.json", "cores   = ceil(2,000 /"):
        assert text in out, text
    main(["plan", "--items", "1000", "--dim", "8", "--qps", "50", "--per-core-qps", "20", "--json"])
    sheet = json.loads(capsys.readouterr().out)
    assert sheet["replicas"]["cores"] == 3 and sheet["replicas"]["source"] == "given"
    assert sheet["indexes"][0]["bytes"] == 1000 * (8 * 4 + 8)
    assert sheet["per_replica"]["index"] == "Flat"
    with pytest.raises(SystemExit, match="tapestry plan: error: .*items >= 2"):
        main(["plan", "--items", "1", "--dim", "8", "--qps", "5"])


def test_readme_example_is_the_current_output(capsys):
    """README's Sizing section shows what the command prints today (docs follow the code and the results)."""
    import re
    import shlex
    from pathlib import Path

    from tapestry.cli import main

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Sizing (`tapestry plan`)", 1)[1]
    command, shown = re.findall(r"```(?:bash)?\n(.*?)```", section, re.S)[:2]
    main(shlex.split(command.split("#", 1)[0])[1:])
    printed = "\n".join(line.rstrip() for line in capsys.readouterr().out.strip().splitlines())
    assert printed == shown.strip(), ("README's Sizing example is stale (new benchmark results?): paste in the "
                                      f"output of `{command.split('#', 1)[0].strip()}`")
