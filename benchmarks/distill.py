"""The distilled two-tower student against the plain two-tower, on ML-1M (issue 17 item 3: the fusion reranker as
the teacher; target: the student's Recall@100 >= the plain two-tower's + 3 %).

    /tmp/cpurun .venv/bin/python benchmarks/distill.py --seeds 0                 # fits every model
    /tmp/cpurun .venv/bin/python benchmarks/distill.py --seeds 0 --models-dirs /tmp/lb-ml1m/ml-1m/models/v0001 \
        --variants distill_fusion,distill_sasrec_lightgcn,distill_fusion_a0.8 --deadline 20:38   # the committed run

Per seed, in one process and in this order: LightGCN, the hybrid SASRec (sasrec_lightgcn), the plain two-tower, the
fusion reranker over sasrec_lightgcn's candidates, then the students (`two_tower_distill` with the two-tower's own
settings plus a teacher). Every model uses the registry's settings, which are the committed leaderboard's on ML-1M
(benchmarks/leaderboard.py passes no params there), with the seed set. The students' distillation settings
(alpha, temperature) are chosen on VALIDATION Recall@100 among the few `VARIANTS` of each teacher; test is read
once, after that choice, for the chosen student of each teacher, the plain two-tower and the teachers.

Protocol: leave-one-out, full ranking over all items (tapestry.training.evaluate), Recall@100 / Recall@10 /
NDCG@10. Paired Wilcoxon on per-user test Recall@100 (averaged over seeds) of each chosen student vs the plain
two-tower (tapestry.reporting.leaderboard.paired_test). Fitted models are cached under --root, so a run that is
cut short resumes where it stopped.

Writes benchmarks/results/distill-ml-1m.json at the end; a rerun with the same --root reloads what was fitted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BASE_MODELS = ("lightgcn", "sasrec_lightgcn", "two_tower", "fusion")
# Student variants in priority order: name -> (teacher, distillation overrides). Chosen per teacher on validation.
VARIANTS = {
    "distill_fusion": ("fusion", {}),                                            # alpha 0.5, temperature 1
    "distill_sasrec_lightgcn": ("sasrec_lightgcn", {}),
    "distill_fusion_a0.8": ("fusion", {"alpha": 0.8}),
    "distill_fusion_t2": ("fusion", {"distill_temperature": 2.0}),
}
K_VALUES = (10, 100)


def _metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user metrics from 0-based ranks (rows sorted by user by the caller)."""
    out = {}
    for k in K_VALUES:
        out[f"recall@{k}"] = (ranks < k).astype(np.float64)
    out["ndcg@10"] = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)
    return out


def per_user(model, data, split: str) -> dict[str, np.ndarray]:
    from tapestry.training.evaluate import evaluation_ranks

    frame = getattr(data, split)
    order = np.argsort(frame["user_idx"].to_numpy(), kind="stable")
    ranks = evaluation_ranks(model, data, split).astype(np.float64)[order]
    return {"users": frame["user_idx"].to_numpy()[order], **_metrics(ranks)}


def _means(metrics: dict) -> dict:
    return {m: round(float(v.mean()), 6) for m, v in metrics.items() if m != "users"}


def _fit_or_load(name: str, registry_name: str, params: dict, fitted: dict, data, graph, cache: Path, log,
                 trained: Path | None = None):
    """A fitted model: a base model from the leaderboard's models dir `trained`, else from the cache when an earlier
    (cut-short) run saved it, else fitted now."""
    from tapestry.training import registry
    from tapestry.training.base import Recommender

    path = cache / f"{name}.pt"
    if trained is not None and name in BASE_MODELS:   # the leaderboard run's own model: the committed baseline
        model = Recommender.load(trained / registry.get(name).filename, device="cpu")
        model.bind(fitted)
        m = json.loads((trained / "metrics.json").read_text())[name]
        log(f"[distill] {name}: loaded from {trained}")
        return model, {"fit_seconds": m.get("fit_seconds"), "best_epoch": m.get("best_epoch"), "from": str(trained)}
    if path.exists():
        model = Recommender.load(path, device="cpu")
        model.bind(fitted)
        log(f"[distill] {name}: loaded from {path}")
        return model, json.loads(path.with_suffix(".json").read_text())
    model = registry.build(registry_name, params, device="cpu")
    model.bind(fitted)
    t0 = time.perf_counter()
    model.fit(data, graph)
    info = {"fit_seconds": round(time.perf_counter() - t0, 1), "params": params,
            "best_epoch": getattr(model, "best_epoch_", None)}
    model.save(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path.with_suffix(".json"))
    log(f"[distill] {name}: fitted in {info['fit_seconds']}s (epoch kept: {info['best_epoch']})")
    return model, info


def run_seed(seed: int, data, graph, root: Path, variants: list[str], log, trained: Path | None = None,
             deadline: float | None = None) -> dict:
    """{name: {"valid": per-user, "info": ...}} of the base models and students; models stay in "model"."""
    cache = root / f"seed{seed}"
    cache.mkdir(parents=True, exist_ok=True)
    fitted, out = {}, {}
    for name in BASE_MODELS:
        model, info = _fit_or_load(name, name, {"seed": seed}, fitted, data, graph, cache, log, trained)
        fitted[name] = model
        out[name] = {"model": model, "info": info}
    slowest = 0.0
    for name in variants:
        teacher, overrides = VARIANTS[name]
        if deadline is not None and slowest and time.time() + 1.2 * slowest > deadline:
            log(f"[distill] {name}: skipped, it would end past --deadline (a student took {slowest:.0f}s)")
            continue
        t0 = time.time()
        model, info = _fit_or_load(name, "two_tower_distill", {"seed": seed, "teacher": teacher, **overrides},
                                   fitted, data, graph, cache, log)
        out[name] = {"model": model, "info": info, "teacher": teacher, "overrides": overrides}
        slowest = max(slowest, time.time() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--seeds", default="0")
    p.add_argument("--variants", default=",".join(VARIANTS), help="student variants, in the order they are fitted")
    p.add_argument("--root", default="/tmp/tapestry-distill", help="ETL + fitted-model cache (reused on rerun)")
    p.add_argument("--output")
    p.add_argument("--models-dirs", help="comma-separated models dirs of a leaderboard run, one per seed in --seeds "
                   "order (e.g. /tmp/lb-ml1m/ml-1m/models/v0001): its base models are loaded, not refitted, so the "
                   "baseline is the committed leaderboard's own two-tower")
    p.add_argument("--deadline", help="HH:MM UTC: a student variant (after the first) that would end later is "
                   "skipped (the machine is shared; the JSON records what ran)")
    p.add_argument("--quick", action="store_true", help="smoke-sized: registry quick settings, not for numbers")
    args = p.parse_args()
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    from tapestry.cli import load_tables
    from tapestry.graph.hetero import build_hetero_graph
    from tapestry.reporting.leaderboard import across_seeds, paired_test
    from tapestry.training import registry
    from tapestry.training.data import InteractionData
    from tapestry.etl import run_etl

    load_avg = [round(x, 2) for x in os.getloadavg()]
    t_start = time.perf_counter()
    root = Path(args.root)
    tenant = args.dataset.replace(".", "-")
    seeds = [int(s) for s in args.seeds.split(",")]
    trained = {}
    if args.models_dirs:
        dirs = [Path(d) for d in args.models_dirs.split(",")]
        if len(dirs) != len(seeds):
            raise SystemExit(f"--models-dirs names {len(dirs)} dirs for {len(seeds)} seeds")
        for seed, d in zip(seeds, dirs):
            config = json.loads((d / "config.json").read_text())
            got = {config["params"].get(m, {}).get("seed") for m in BASE_MODELS}
            if got != {seed} or config.get("quick"):
                raise SystemExit(f"{d} was trained with seeds {got} (quick={config.get('quick')}), not seed {seed}")
            trained[seed] = d
    etl_dir = root / "etl-path.txt"
    if trained:      # the ETL version the leaderboard's models were trained on
        etl_path = Path((trained[seeds[0]] / "etl_version.txt").read_text().strip())
    elif etl_dir.exists():
        etl_path = Path(etl_dir.read_text().strip())
    else:
        ns = argparse.Namespace(events=None, items=None, users=None, dataset=args.dataset, data_dir=None,
                                ratings=None)
        etl_path = run_etl(load_tables(ns), tenant, root).path
        etl_dir.write_text(str(etl_path))
    data = InteractionData.load(etl_path)
    graph = build_hetero_graph(data)
    if args.quick:      # smoke: shrink every model through the registry's quick settings
        for name in ("lightgcn", "sasrec_lightgcn", "two_tower", "fusion", "two_tower_distill"):
            spec = registry.get(name)
            registry.MODELS[name] = dataclasses.replace(spec, params={**spec.params, **spec.quick})
    variants = [v for v in args.variants.split(",") if v]
    deadline = None
    if args.deadline:
        import calendar

        day = time.strftime("%Y-%m-%d", time.gmtime())
        deadline = calendar.timegm(time.strptime(f"{day} {args.deadline}", "%Y-%m-%d %H:%M"))
    out_path = Path(args.output or RESULTS / f"distill-{args.dataset}.json")
    valid: dict[str, list] = {}
    test: dict[str, list] = {}
    info: dict[str, list] = {}
    for seed in seeds:
        log(f"[distill] {args.dataset} seed {seed}")
        runs = run_seed(seed, data, graph, root, variants, log, trained.get(seed), deadline)
        for name, r in runs.items():
            valid.setdefault(name, []).append(per_user(r["model"], data, "valid"))
            info.setdefault(name, []).append(r["info"])
            log(f"[distill] seed {seed} {name}: valid {_means(valid[name][-1])}")
        seed_runs = runs
    # The choice, on validation only: per teacher, the variant with the best mean validation Recall@100.
    chosen = {}
    for name in [v for v in variants if v in valid]:
        teacher = VARIANTS[name][0]
        score = np.mean([v["recall@100"].mean() for v in valid[name]])
        if teacher not in chosen or score > chosen[teacher][1]:
            chosen[teacher] = (name, score)
    read_test = ["two_tower", *BASE_MODELS[1:2], "fusion", *[n for n, _ in chosen.values()]]
    # Test, read once for the final configurations (the last seed's models are in memory; earlier seeds reload).
    for seed in seeds:
        runs = seed_runs if seed == seeds[-1] else run_seed(seed, data, graph, root, [v for v in variants if v in valid],
                                                            log, trained.get(seed))
        for name in read_test:
            test.setdefault(name, []).append(per_user(runs[name]["model"], data, "test"))
    report_paths = {}
    for name in valid:
        entry = {"valid": {m: across_seeds([float(u[m].mean()) for u in valid[name]]) for m in _metrics(np.zeros(1))},
                 "fit_seconds": across_seeds([i["fit_seconds"] for i in info[name]]),
                 "best_epoch": [i.get("best_epoch") for i in info[name]]}
        if name in VARIANTS:
            entry["teacher"], entry["distill_overrides"] = VARIANTS[name]
        if name in test:
            entry["test"] = {m: across_seeds([float(u[m].mean()) for u in test[name]]) for m in _metrics(np.zeros(1))}
        report_paths[name] = entry
    base = np.mean([u["recall@100"] for u in test["two_tower"]], axis=0)
    paired = {n: paired_test(np.mean([u["recall@100"] for u in test[n]], axis=0), base)
              for n in test if n != "two_tower"}
    target = {}
    for teacher, (name, _) in chosen.items():
        s, b = report_paths[name]["test"]["recall@100"]["mean"], report_paths["two_tower"]["test"]["recall@100"]["mean"]
        target[name] = {"student_recall@100": s, "two_tower_recall@100": b, "relative": round(s / b - 1, 4),
                        "meets_plus_3pct": s >= 1.03 * b}
    report = {"dataset": args.dataset, "seeds": seeds, "quick": args.quick, "baseline": "two_tower",
              "protocol": "leave-one-out, full ranking over all items",
              "choice": "per teacher, the variant with the best mean validation Recall@100; test read once after",
              "chosen": {t: n for t, (n, _) in chosen.items()}, "paths": report_paths,
              "variants_skipped": [v for v in variants if v not in valid],
              "note": "a ranker (fusion) scores only its retriever's top num_candidates = 100 items: its Recall@100 "
                      "is its retriever's (sasrec_lightgcn); the teacher lists hold those 100 items",
              "paired_recall@100_vs_two_tower": paired, "target_plus_3pct": target,
              "registry_params": {n: registry.get(n).params for n in (*BASE_MODELS, "two_tower_distill")},
              "seconds": round(time.perf_counter() - t_start, 1),
              "machine": {"cpu_count": os.cpu_count(), "load_average_at_start": load_avg,
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "base_models_from": {str(k): str(v) for k, v in trained.items()},
              "command": " ".join(sys.argv), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, out_path)
    log(json.dumps({n: {"valid_r100": e["valid"]["recall@100"]["mean"],
                        "test_r100": e.get("test", {}).get("recall@100", {}).get("mean")}
                    for n, e in report_paths.items()}, indent=1))
    log(f"[distill] {out_path}")


if __name__ == "__main__":
    main()
