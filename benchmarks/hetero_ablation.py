"""Does the typed graph help? The same model on (a) the full typed graph, (b) interactions only, (c) no graph
(issue 19 item 2), on real heterogeneous data, with tapestry's full-ranking evaluation.

    python benchmarks/hetero_ablation.py --datasets hetrec-lastfm,ml-1m --models rsage --seeds 0,1,2
    python benchmarks/hetero_ablation.py --quick            # smoke: 150 users per data set, 1 epoch (~1 min)
    python benchmarks/hetero_ablation.py --table            # the README's Markdown table from the result JSONs

Data sets (ETL'd into a temp dir with the project's adapters; graph built from the training split only):
- `hetrec-lastfm`: HetRec 2011 Last.fm 2K (tapestry.etl.hetrec). Relations: play (user-artist, weight = plays),
  tag (user-artist tag assignments, with the tag id as a context column: user-tag and artist-tag edges), friends
  (user-user). Positives and held-out targets are plays only (`target_events=("play",)`); the split is the
  adapter's seeded one (one random untagged played artist per user for test, one for valid).
- `ml-1m`: MovieLens 1M with rating >= 4 as a `like` and below as a `view` (movielens_1m(like_at=4)); relations
  like, view, genre, gender, age group, occupation; leave-one-out by time; every event is a positive. Without the
  full ratings.dat (`tapestry datasets fetch ml-1m`) the partial copy in ../shared (users 1-2999) is used and
  the JSON says so.
- `beauty`: Amazon Beauty from the S3-Rec release (tapestry.etl.s3rec): clicks plus each item's brand and fine
  categories as `attribute` entity nodes; leave-one-out by (synthetic, order-only) time; every event a positive.

Variants (the model's `graph` setting; everything else identical): `typed` (tapestry.graph.typed, all parts the
data has), `interactions` (one user-item relation over every event: no types, entities, tags or friends), `none`
(no edges: the model's ID embeddings and root weights, i.e. matrix factorisation trained with the same loss).

Metrics: NDCG@10, Recall@10 (+ MRR, Recall@100) on valid and test, per seed; across seeds the mean and a 95 %
t-interval; paired Wilcoxon test of per-user test NDCG@10 (averaged over seeds) of each variant against
`interactions` (and of `typed` against `none`), with a bootstrap interval and the relative difference
(tapestry.reporting.leaderboard). One JSON per data set: benchmarks/results/hetero_ablation-<dataset>.json (`-quick`
in the name for --quick runs).

Every finished (model, variant, seed) run is kept in --cache-dir (keyed by its hyper-parameters and user cap), and
the loops are seed-major, so a long ablation stopped half-way resumes and the seeds can be run in separate
processes (then once more with all seeds to write the summary from the cache).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("typed", "interactions", "none")
TARGET_EVENTS = {"hetrec-lastfm": ("play",), "ml-1m": (), "beauty": ()}
BASELINE = "interactions"  # every variant is tested against the same model on the untyped interaction graph
# Full-run hyper-parameters per model (the variants share them): GraphSAGE's ML-100K defaults (Last.fm's 89k plays
# are ML-100K-sized); ML-1M has 5x the positives per epoch, so half the epochs at twice the batch. `--params`
# overrides them, --quick shrinks them.
PARAMS = {
    "rsage": dict(embedding_dim=64, num_neighbors=(10, 5), epochs=10, batch_size=1024, lr=1e-2),
    "hgt": dict(hidden_dim=64, out_dim=64, num_neighbors=(10, 5), epochs=20, batch_size=4096),
}
DATASET_PARAMS = {"ml-1m": {"rsage": dict(epochs=5, batch_size=2048), "hgt": dict(epochs=10)}}
QUICK = {
    "rsage": dict(embedding_dim=16, num_neighbors=(5,), epochs=1, batch_size=512),
    "hgt": dict(hidden_dim=16, out_dim=16, num_layers=1, num_neighbors=(5,), epochs=1, batch_size=512),
}


def _machine() -> dict:
    import torch

    return {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def _first_users(tables, max_users: int | None):
    """Keep the events (and user rows) of the first `max_users` distinct users of the event table (--quick)."""
    import polars as pl

    if not max_users:
        return tables
    keep = tables.events.select(pl.col("user_id").unique(maintain_order=True).head(max_users)).collect()["user_id"]
    tables.events = tables.events.filter(pl.col("user_id").is_in(keep.implode()))
    if tables.users is not None:
        tables.users = tables.users.filter(pl.col("user_id").is_in(keep.implode()))
    return tables


def load(dataset: str, root: Path, max_users: int | None, log):
    """ETL `dataset` into `root` -> (InteractionData, ETL manifest)."""
    from tapestry.config import ETLConfig
    from tapestry.etl import run_etl
    from tapestry.etl.datasets import locate
    from tapestry.training.data import InteractionData

    if dataset not in TARGET_EVENTS:
        raise ValueError(f"unknown data set {dataset!r}: use one of {', '.join(TARGET_EVENTS)}")
    directory = locate(dataset)
    if dataset == "hetrec-lastfm":
        from tapestry.etl.hetrec import hetrec_etl_config, hetrec_lastfm

        tables, cfg = hetrec_lastfm(directory), hetrec_etl_config()
    elif dataset == "ml-1m":
        from tapestry.cli import ml1m_ratings_default
        from tapestry.etl.movielens import movielens_1m

        tables, cfg = movielens_1m(directory, ml1m_ratings_default(directory), like_at=4), ETLConfig()
    elif dataset == "beauty":
        from tapestry.etl.s3rec import s3rec

        tables, cfg = s3rec(directory, "beauty"), ETLConfig()
    else:
        raise AssertionError(dataset)  # TARGET_EVENTS names a data set this function does not load
    result = run_etl(_first_users(tables, max_users), dataset.replace(".", "-"), root, cfg, log=log)
    return InteractionData.load(result.path), result.manifest


def run_one(name: str, variant: str, seed: int, data, params: dict, device: str) -> dict:
    """Fit one (model, graph variant, seed) and evaluate it: metrics, per-user test NDCG@10, fit seconds."""
    from tapestry.training import registry
    from tapestry.training.evaluate import evaluate, per_user_metrics

    model = registry.build(name, {**params, "graph": variant, "seed": seed}, device=device, progress=False)
    t0 = time.perf_counter()
    model.fit(data)
    fit_s = time.perf_counter() - t0
    per_user = per_user_metrics(model, data, "test", k=10)
    return {"fit_seconds": round(fit_s, 1), "valid": evaluate(model, data, "valid", k=10),
            "test": evaluate(model, data, "test", k=10), "relations": [list(et) for et in _relations(model)],
            "_users": per_user["users"], "_ndcg": per_user["ndcg@10"]}


def _relations(model) -> list:
    return getattr(model, "relations_", [])


def _cache_file(cache_dir: Path, dataset: str, name: str, variant: str, seed: int, params: dict,
                max_users: int | None) -> Path:
    """One finished (model, variant, seed) run per file, keyed by everything that changes its result, so a long
    ablation killed half-way (or split over several processes) resumes instead of starting again."""
    key = json.dumps({"params": params, "max_users": max_users}, sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir / dataset / f"{name}-{variant}-seed{seed}-{digest}.json"


def cached_run(cache: Path | None, fit) -> dict:
    """`fit()`'s result, read from / written to `cache` (atomically) when a cache file is given."""
    if cache is not None and cache.exists():
        r = json.loads(cache.read_text())
        return {**r, "_users": np.asarray(r["_users"]), "_ndcg": np.asarray(r["_ndcg"]), "cached": True}
    r = fit()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({**r, "_users": np.asarray(r["_users"]).tolist(),
                                   "_ndcg": np.asarray(r["_ndcg"]).tolist()}, default=float))
        os.replace(tmp, cache)
    return r


def summarise(runs: dict, seeds: list[int]) -> dict:
    """Across seeds per (model, variant), and the paired tests of each variant against `interactions` (and of
    `typed` against `none`)."""
    from tapestry.reporting.leaderboard import across_seeds, paired_test

    out = {}
    for name, by_variant in runs.items():
        table, per_user = {}, {}
        for variant, by_seed in by_variant.items():
            table[variant] = {f"{split}_{m}": across_seeds([by_seed[s][split][m] for s in seeds])
                              for split in ("valid", "test") for m in ("ndcg@10", "recall@10")}
            table[variant]["fit_seconds"] = across_seeds([by_seed[s]["fit_seconds"] for s in seeds])
            users = by_seed[seeds[0]]["_users"]
            assert all(np.array_equal(by_seed[s]["_users"], users) for s in seeds)
            per_user[variant] = np.mean([by_seed[s]["_ndcg"] for s in seeds], axis=0)
        pairs = [(v, BASELINE) for v in by_variant if v != BASELINE and BASELINE in by_variant]
        pairs += [("typed", "none")] if {"typed", "none"} <= set(by_variant) else []
        paired = {f"{a}_vs_{b}": paired_test(per_user[a], per_user[b]) for a, b in pairs}
        out[name] = {"variants": table, "paired_test_ndcg@10": paired}
    return out


def _mean_ci(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['ci95']:.4f}"


def markdown_table(reports: list[dict]) -> str:
    """One row per (data set, model, variant): test NDCG@10 and Recall@10 as mean ± 95 % half-interval over the
    seeds, and the relative difference and paired Wilcoxon p of per-user NDCG@10 against `interactions`."""
    lines = ["| data set | model | graph | seeds | test NDCG@10 | test Recall@10 | vs interactions | p |",
             "|---|---|---|---|---|---|---|---|"]
    for report in reports:
        for name, summary in report["summary"].items():
            for variant, row in summary["variants"].items():
                test = summary["paired_test_ndcg@10"].get(f"{variant}_vs_{BASELINE}")
                versus = ("—", "—")
                if test:  # relative is None when the baseline's mean is 0
                    versus = ("n/a" if test["relative"] is None else f"{test['relative']:+.1%}",
                              f"{test['p_value']:.2g}")
                lines.append(f"| {report['dataset']} | {name} | {variant} | {len(report['seeds'])} | "
                             f"{_mean_ci(row['test_ndcg@10'])} | {_mean_ci(row['test_recall@10'])} | "
                             f"{versus[0]} | {versus[1]} |")
    return "\n".join(lines)


def _params(name: str, dataset: str, quick: bool, overrides: dict) -> dict:
    return {**PARAMS[name], **DATASET_PARAMS.get(dataset, {}).get(name, {}), **(QUICK[name] if quick else {}),
            **overrides.get(name, {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="hetrec-lastfm,ml-1m")
    p.add_argument("--models", default="rsage", help="comma-separated: rsage, hgt")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--params", help='JSON overrides: {"rsage": {"epochs": 30}}')
    p.add_argument("--max-users", type=int, help="only the first N users of each data set")
    p.add_argument("--quick", action="store_true", help="smoke: 150 users, 1 epoch, tiny models, seed 0")
    p.add_argument("--device", default="auto")
    p.add_argument("--root", help="artifact root (default: a temp dir)")
    p.add_argument("--output-dir", default=str(RESULTS))
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "tapestry-hetero-cache"),
                   help="finished runs are kept here and reused (resume); '' disables")
    p.add_argument("--suffix", default="", help="appended to the result file name")
    p.add_argument("--note", default="", help="kept in the JSON (e.g. why epochs were reduced)")
    p.add_argument("--table", nargs="*", metavar="JSON",
                   help="print the Markdown ablation table of these result files (default: every full-run "
                        "hetero_ablation-*.json in --output-dir) and exit")
    args = p.parse_args()
    if args.table is not None:
        paths = args.table or sorted(p for p in Path(args.output_dir).glob("hetero_ablation-*.json")
                                     if "-quick" not in p.name)
        print(markdown_table([json.loads(Path(path).read_text()) for path in paths]))
        return

    import torch

    models, variants = args.models.split(","), args.variants.split(",")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    max_users = args.max_users or (150 if args.quick else None)
    overrides = json.loads(args.params or "{}")
    root = Path(args.root or tempfile.mkdtemp(prefix="tapestry-hetero-"))
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    load_at_start = os.getloadavg()  # the machine is shared: fit seconds are only comparable within one run
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    for dataset in args.datasets.split(","):
        t_data = time.perf_counter()
        data, manifest = load(dataset, root, max_users, log)
        runs = {}
        for name in models:
            params = {**_params(name, dataset, args.quick, overrides), "target_events": TARGET_EVENTS[dataset]}
            for seed in seeds:  # seed-major: a run stopped early still has whole seeds (all variants)
                for variant in variants:
                    cache = cache_dir and _cache_file(cache_dir, dataset, name, variant, seed, params, max_users)
                    r = cached_run(cache, lambda: run_one(name, variant, seed, data, params, args.device))
                    runs.setdefault(name, {}).setdefault(variant, {})[seed] = r
                    log(f"[hetero] {dataset} {name} {variant} seed={seed}: test ndcg@10 {r['test']['ndcg@10']:.4f} "
                        f"recall@10 {r['test']['recall@10']:.4f} (valid ndcg@10 {r['valid']['ndcg@10']:.4f}; "
                        f"fit {r['fit_seconds']}s)")
        report = {
            "dataset": dataset, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv), "quick": args.quick, "machine": _machine(),
            "torch_threads": torch.get_num_threads(), "loadavg_at_start": list(load_at_start),
            "note": args.note, "seeds": seeds, "variants": variants,
            "target_events": list(TARGET_EVENTS[dataset]), "max_users": max_users,
            "etl": {"sources": manifest["sources"], "split": manifest["split"], "counts": manifest["counts"],
                    "num_users": manifest["num_users"] - 1, "num_items": manifest["num_items"] - 1},
            "params": {name: _params(name, dataset, args.quick, overrides) for name in models},
            "summary": summarise(runs, seeds),
            "runs": {name: {v: {str(s): {k: x for k, x in r.items() if not k.startswith("_")}
                                for s, r in by_seed.items()} for v, by_seed in by_variant.items()}
                     for name, by_variant in runs.items()},
            "total_seconds": round(time.perf_counter() - t_data, 1),
        }
        out = Path(args.output_dir) / f"hetero_ablation-{dataset}{'-quick' if args.quick else ''}{args.suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float))
        os.replace(tmp, out)
        for name, s in report["summary"].items():
            for test, res in s["paired_test_ndcg@10"].items():
                log(f"[hetero] {dataset} {name} {test}: relative {res['relative']}, p = {res['p_value']:.3g}")
        log(f"[hetero] {out} ({report['total_seconds']}s)")


if __name__ == "__main__":
    main()
