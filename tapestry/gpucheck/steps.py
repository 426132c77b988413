"""The gpu-check steps; each runs in its own process (`python -m tapestry.gpucheck.steps NAME RESULT.json`) so the
driver can kill it at its limit. A step returns {"status": "ok" | "failed" | "not_available" | "skipped", ...}:
"not_available" when what it compares is missing here (a package, the GPU, a data set), with the reason.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from tapestry.gpucheck.install import install_step
from tapestry.gpucheck.runner import REPO, write_json_atomic



def _device() -> str:
    """The driver's choice (TAPESTRY_GPUCHECK_DEVICE); a step run by hand looks for itself."""
    chosen = os.environ.get("TAPESTRY_GPUCHECK_DEVICE")
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE = _device()
SAMPLING_REFERENCE = REPO / "benchmarks" / "results" / "sampling-stats-cpu.json"
# One skewed graph both samplers draw from (10 batches: ~10k seeds, ~6 s of CPU sampling + statistics).
SAMPLING_GRAPH = dict(num_users=20_000, num_items=10_000, num_edges=400_000, seed=0)
SAMPLING_LOADER = dict(num_neighbors=[10, 5], batch_size=1024, num_negatives=4, max_batches=10)
OPTIONAL_MODULES = ("numpy", "polars", "cudf_polars", "cugraph_pyg", "torch_geometric", "torch_sparse", "pyg_lib",
                    "faiss", "tritonclient", "pytriton", "pytest")
NGC_TRITON = Path("/opt/tritonserver/bin/tritonserver")


def not_available(reason: str, **extra) -> dict:
    return {"status": "not_available", "reason": reason, **extra}


def module_versions(names=OPTIONAL_MODULES) -> dict:
    """{module: installed distribution version, or "absent"}, found without importing them (imports of CUDA
    packages take seconds each and can fail on their own; the steps that use a module report that)."""
    import importlib.util
    from importlib import metadata

    dists = metadata.packages_distributions()
    out = {}
    for name in names:
        if importlib.util.find_spec(name) is None:
            out[name] = "absent"
            continue
        versions = []
        for dist in dists.get(name, []):
            try:
                versions.append(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                continue
        out[name] = ", ".join(versions) or "present"
    return out


def triton_binaries() -> dict:
    """The Triton binaries here: the NGC container's and the nvidia-pytriton wheel's bundled one. TritonServer
    (tapestry.serving.triton_server) launches the bundled one."""
    try:
        from tapestry.serving.triton_server import find_triton_bundle

        bundled = str(find_triton_bundle().binary)
    except Exception as e:
        bundled = f"none ({str(e)[:160]})"
    return {"ngc": str(NGC_TRITON) if NGC_TRITON.is_file() else None, "bundled": bundled}


def environment() -> dict:
    import platform

    import torch

    facts = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
             "torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": DEVICE,
             "modules": module_versions(), "triton": triton_binaries()}
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     compute_capability=f"{props.major}.{props.minor}")
    try:
        facts["faiss_gpus"] = _faiss_gpus()
    except ImportError:
        facts["faiss_gpus"] = 0
    return {"status": "ok", **facts}


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


# ---- cuGraph-PyG vs PyG sampling ----------------------------------------------------------------------------------
def sampler_stats(sampler: str, device: str) -> dict:
    """sampling_stats of the HGT-style triplet link loader on the shared skewed graph, with `sampler`."""
    import torch
    from torch_geometric.sampler import NegativeSampling

    from tapestry.training.sampler_contract import link_neighbor_loader
    from tapestry.training.sampling_stats import sampling_stats, skewed_interaction_graph

    g, c = skewed_interaction_graph(**SAMPLING_GRAPH), SAMPLING_LOADER
    num_neighbors = {et: list(c["num_neighbors"]) for et in g.edge_types}
    weight = torch.ones(int(g["item"].num_nodes))
    weight[0] = 0.0
    torch.manual_seed(0)
    loader = link_neighbor_loader(
        g, num_neighbors, sampler, torch.device(device),
        edge_label_index=(("user", "interacts", "item"), g["user", "interacts", "item"].edge_index),
        batch_size=c["batch_size"], neg_sampling=NegativeSampling("triplet", c["num_negatives"], dst_weight=weight),
        shuffle=True, generator=torch.Generator().manual_seed(0))
    stats = sampling_stats(loader, g, num_neighbors, c["batch_size"], c["max_batches"])
    return {**stats, "graph": SAMPLING_GRAPH, "loader": SAMPLING_LOADER}


def write_sampling_reference(path: Path = SAMPLING_REFERENCE) -> dict:
    """Store PyG's CPU statistics: the reference where the GPU host has no PyG CPU sampler (torch-sparse and
    pyg-lib are built per torch version; a CUDA image's torch often has neither)."""
    stats = sampler_stats("pyg", "cpu")
    write_json_atomic(path, stats)
    return stats


def _same_setup(stats: dict) -> bool:
    return stats.get("graph") == SAMPLING_GRAPH and stats.get("loader") == SAMPLING_LOADER


def sampling_compare() -> dict:
    from tapestry.training.sampling_stats import compare_sampling_stats

    out: dict = {}
    try:
        reference, out["reference"] = sampler_stats("pyg", "cpu"), "pyg on the CPU, this run"
    except ImportError as e:    # neither torch-sparse nor pyg-lib: PyG has no neighbour sampler here
        if not SAMPLING_REFERENCE.is_file():
            return not_available(f"no PyG CPU sampler here ({e}) and no stored reference {SAMPLING_REFERENCE}")
        reference = json.loads(SAMPLING_REFERENCE.read_text())
        out["reference"] = f"stored {SAMPLING_REFERENCE.relative_to(REPO)} (PyG CPU sampler unavailable: {e})"
        if not _same_setup(reference):
            return not_available("the stored sampling reference was made for another graph or loader; "
                                 "regenerate it: python -m tapestry.gpucheck.steps write_sampling_reference")
    try:
        from tapestry.training.sampler_contract import use_cugraph

        use_cugraph("cugraph", __import__("torch").device(DEVICE))
    except (ImportError, RuntimeError) as e:
        # Without cuGraph, this run's PyG statistics against the stored ones still check the reference itself.
        stored = json.loads(SAMPLING_REFERENCE.read_text()) if SAMPLING_REFERENCE.is_file() else None
        same_setup = stored is not None and stored is not reference and _same_setup(stored)
        self_check = compare_sampling_stats(stored, reference) if same_setup else None
        return not_available(f"cuGraph-PyG sampling cannot run here: {type(e).__name__}: {e}", pyg_stats=reference,
                             pyg_vs_stored_reference=self_check)
    other = sampler_stats("cugraph", DEVICE)
    comparison = compare_sampling_stats(reference, other)
    return {"status": "ok" if comparison["ok"] else "failed", **out, "pyg": reference, "cugraph": other,
            "comparison": comparison}


# ---- FAISS GPU vs CPU ---------------------------------------------------------------------------------------------
def faiss_compare(num_items: int = 200_000, dim: int = 64, queries: int = 1000, k: int = 100) -> dict:
    import faiss
    import numpy as np

    if _faiss_gpus() == 0:
        return not_available(f"faiss {faiss.__version__} has no GPU support or sees no GPU (faiss-cpu installed? "
                             "the `gpu` extra brings faiss-gpu-cu12)")
    rng = np.random.default_rng(0)
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(items)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    d_cpu, i_cpu = cpu.search(q, k)
    d_gpu, i_gpu = gpu.search(q, k)
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(i_cpu, i_gpu)]))
    max_score_diff = float(np.abs(d_cpu - d_gpu).max())
    # Near-ties at rank k may swap between two float summation orders; anything beyond that is a wrong result.
    return {"status": "ok" if overlap >= 0.99 and max_score_diff < 1e-3 else "failed", "items": num_items,
            "dim": dim, "queries": queries, "k": k, "topk_overlap": overlap, "max_score_diff": max_score_diff}


# ---- cudf-polars vs CPU ETL ---------------------------------------------------------------------------------------
def etl_compare() -> dict:
    try:
        from tapestry.etl.compare import compare_artifacts
        from tapestry.etl.engines import gpu_status
    except ImportError as e:
        return not_available(f"ETL engine comparison is not in this tree yet ({e})")
    usable, why = gpu_status()
    if not usable:
        return not_available(f"the Polars GPU engine is not usable: {why}")
    from tapestry.config import ETLConfig
    from tapestry.etl import run_etl
    from tapestry.etl.synthetic import synthetic_tables

    quiet = lambda *a, **k: None   # noqa: E731
    with tempfile.TemporaryDirectory(prefix="gpucheck-etl-") as tmp:
        paths = {}
        for engine in ("cpu", "gpu"):
            tables = synthetic_tables(num_users=5_000, num_items=2_000, seed=0, bad_rows=200)
            paths[engine] = run_etl(tables, "gpucheck", root=Path(tmp) / engine,
                                    cfg=ETLConfig(polars_engine=engine), log=quiet).path
        differences = compare_artifacts(paths["cpu"], paths["gpu"])   # a list of differences: empty = equal
    same = not differences
    detail = differences[:20]
    return {"status": "ok" if same else "failed", "comparison": detail}


# ---- pytest-driven steps ------------------------------------------------------------------------------------------
def _pytest(args: list[str], env_extra: dict | None = None) -> dict:
    import importlib.util

    per_test = ["--timeout", "120"] if importlib.util.find_spec("pytest_timeout") else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *per_test, *args]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env_extra or {})}, capture_output=True, text=True)
    text = done.stdout + done.stderr
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)}
    return {"exit_code": done.returncode, "counts": counts, "output_tail": text[-2500:]}


def cuda_tests() -> dict:
    paths = os.environ.get("TAPESTRY_GPUCHECK_TEST_PATHS", "tests").split()
    # A test module that cannot be imported here (a package missing on the GPU machine) must not hide the others.
    run = _pytest(["-p", "tapestry.gpucheck.cuda_select", "--ignore=tests/integration",
                   "--continue-on-collection-errors", *paths])
    c = run["counts"]
    if run["exit_code"] == 0 and not c.get("passed") and c.get("skipped"):
        return not_available(f"{c['skipped']} CUDA tests selected, all skipped (no CUDA here)", counts=c)
    status = "ok" if run["exit_code"] == 0 and c.get("passed") else "failed"
    return {"status": status, "counts": c, **({"output_tail": run["output_tail"]} if status != "ok" else {})}


def serving_cuda() -> dict:
    triton = triton_binaries()
    if triton["bundled"].startswith("none"):
        return not_available(f"no Triton binary that TritonServer can launch: {triton['bundled']}", triton=triton)
    if DEVICE != "cuda":
        return not_available("no CUDA device: the serving stages would run on the CPU", triton=triton)
    from tapestry.config import datasets_dir

    if not (datasets_dir() / "ml-100k" / "u.item").exists():
        return not_available(f"MovieLens-100K not found under {datasets_dir()} (the integration tenant; set "
                             "TAPESTRY_DATASETS)", triton=triton)
    run = _pytest(["tests/integration/test_triton_ensemble.py", "tests/serving/test_batching.py"],
                  {"TAPESTRY_SERVING_DEVICE": "cuda", "TAPESTRY_FAISS_GPU": "1"})
    c = run["counts"]
    ok = run["exit_code"] == 0 and c.get("passed", 0) > 0
    return {"status": "ok" if ok else "failed", "counts": c, "triton": {**triton, "used": "bundled"},
            **({} if ok else {"output_tail": run["output_tail"]})}


def benchmark() -> dict:
    from tapestry.gpucheck.bench import run_benchmark

    return run_benchmark(DEVICE)


STEPS = {"environment": environment, "install": install_step, "sampling_compare": sampling_compare,
         "faiss_compare": faiss_compare, "etl_compare": etl_compare, "cuda_tests": cuda_tests,
         "serving_cuda": serving_cuda, "benchmark": benchmark, "write_sampling_reference": write_sampling_reference}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in STEPS:
        print(f"usage: python -m tapestry.gpucheck.steps {{{','.join(STEPS)}}} [RESULT.json]", file=sys.stderr)
        return 2
    try:
        result = STEPS[argv[0]]()
    except Exception as e:
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    if len(argv) > 1:
        write_json_atomic(Path(argv[1]), result)
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("status") != "failed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
