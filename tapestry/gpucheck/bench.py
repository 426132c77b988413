"""gpu-check's benchmark step: the same work on the CPU and on CUDA in one run, side by side (ratios, not
absolute targets).

- training: one SASRec epoch (the default line-up's sequential retriever, 64-d, 2 blocks, full softmax) on a
  synthetic tenant; CUDA is timed twice, the first fit paying for CUDA's start-up, the second the steady cost.
- retrieval at 1M items: FAISS exact inner-product search (IndexFlatIP, 64-d, top-100, one query per call, the
  way a request arrives), p50/p99 over `queries` calls after a warm-up, CPU index vs its GPU copy.
  This is the retrieval stage's search alone, not a request through Triton (serving_cuda runs those).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_TENANT = dict(num_users=4_000, num_items=2_000, events_per_user=(20, 80), seed=0)
SASREC = dict(hidden_dim=64, num_blocks=2, max_len=50, batch_size=256, epochs=1, patience=0, loss="softmax")
ANN = dict(items=1_000_000, dim=64, k=100, queries=300, warmup=20)


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def train_epoch(device: str) -> dict:
    from tapestry.etl import run_etl
    from tapestry.etl.synthetic import synthetic_tables
    from tapestry.training import registry
    from tapestry.training.data import InteractionData

    with tempfile.TemporaryDirectory(prefix="gpucheck-train-") as tmp:
        etl = run_etl(synthetic_tables(**TRAIN_TENANT), "gpucheck", root=Path(tmp), log=lambda *a, **k: None)
        data = InteractionData.load(etl.path)
        devices = ["cpu"] + (["cuda", "cuda"] if device == "cuda" else [])
        times = []
        for dev in devices:
            model = registry.build("sasrec", params=SASREC, device=dev, progress=False)
            started = time.perf_counter()
            model.fit(data)
            times.append(time.perf_counter() - started)
    out = {"model": "sasrec", "params": SASREC, "tenant": TRAIN_TENANT, "events": int(data.train.height),
           "cpu_s": round(times[0], 3)}
    if device == "cuda":
        out.update(cuda_first_s=round(times[1], 3), cuda_s=round(times[2], 3),
                   cpu_over_cuda=round(times[0] / times[2], 2))
    return out


def ann_latency(device: str) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    items = rng.standard_normal((ANN["items"], ANN["dim"]), dtype=np.float32)
    queries = rng.standard_normal((ANN["queries"] + ANN["warmup"], ANN["dim"]), dtype=np.float32)
    cpu = faiss.IndexFlatIP(ANN["dim"])
    cpu.add(items)
    indexes = {"cpu": cpu}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if device == "cuda" and gpus:
        indexes["gpu"] = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    out = {**ANN, "index": "IndexFlatIP", "faiss": faiss.__version__}
    for name, index in indexes.items():
        seconds = []
        for i, q in enumerate(queries):
            started = time.perf_counter()
            index.search(q[None, :], ANN["k"])
            if i >= ANN["warmup"]:
                seconds.append(time.perf_counter() - started)
        out[name] = _percentiles(seconds)
    if "gpu" in out:
        out["cpu_over_gpu_p50"] = round(out["cpu"]["p50_ms"] / out["gpu"]["p50_ms"], 2)
    else:
        out["gpu"] = f"not available (faiss {faiss.__version__} sees {gpus} GPU(s))"
    return out


def run_benchmark(device: str) -> dict:
    out: dict = {"device": device}
    for name, fn in (("train_epoch", train_epoch), ("ann_1m", ann_latency)):
        try:
            out[name] = fn(device)
        except ImportError as e:     # polars / faiss missing on this machine
            out[name] = f"not available: {e}"
    if device != "cuda":
        return {"status": "not_available", "reason": "no CUDA device: CPU numbers only", **out}
    complete = all(isinstance(out[k], dict) for k in ("train_epoch", "ann_1m")) and isinstance(out["ann_1m"]["gpu"],
                                                                                            dict)
    return {"status": "ok" if complete else "not_available",
            **({} if complete else {"reason": "a package is missing: see train_epoch / ann_1m"}), **out}
