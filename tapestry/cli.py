"""`tapestry` command line: etl -> train -> evaluate -> export -> serve -> recommend (and `demo` for all of it)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.cli_datasets import add_datasets_command
from tapestry.cli_monitor import add_monitor_command
from tapestry.cli_global import add_global_commands
from tapestry.cli_plan import add_plan_command
from tapestry.cli_serving import add_serving_commands, print_recommendations, serve_child_command  # noqa: F401
from tapestry.cli_tiers import TIER_HELP, TIERS
from tapestry.config import ETLConfig, TrainConfig, validate_tenant

DATASETS = ("ml-1m", "ml-100k")   # MovieLens: what `demo` runs on, and `etl` too
# `etl` also reads these; the S3-Rec names are the keys of tapestry.etl.s3rec.S3REC_DATASETS (not imported here:
# the CLI imports polars only when a command needs it).
S3REC_NAMES = ("beauty", "sports", "toys", "yelp", "lastfm-s3rec")
# hetrec-lastfm: plays, tag assignments (context column `tag`) and friends (user links): a typed-graph tenant.
ETL_DATASETS = (*DATASETS, "gowalla", *S3REC_NAMES, "hetrec-lastfm")   # each a tapestry.etl.datasets name


def ml1m_ratings_default(directory: Path) -> Path:
    """$TAPESTRY_ML1M_RATINGS; else the full ratings.dat (plain or .xz: fetched, or the user's own); else the real
    partial copy in ../shared (users 1-2999). movielens_1m records which one in its sources."""
    from tapestry.etl.datasets import file_present
    from tapestry.etl.movielens import ML1M_PARTIAL_RATINGS

    env = os.environ.get("TAPESTRY_ML1M_RATINGS")
    if env:
        return Path(env)
    return (file_present(directory, "ratings.dat") or file_present(directory, ML1M_PARTIAL_RATINGS)
            or directory / f"{ML1M_PARTIAL_RATINGS}.xz")


def load_tables(args):
    from tapestry.etl.gowalla import gowalla
    from tapestry.etl.movielens import movielens_1m, movielens_100k
    from tapestry.etl.s3rec import s3rec
    from tapestry.etl.sources import generic_tables

    if args.events:
        return generic_tables(Path(args.events), args.items and Path(args.items), args.users and Path(args.users))
    from tapestry.etl.datasets import locate

    dataset = args.dataset or "ml-1m"
    # --data-dir, else the first of $TAPESTRY_DATASETS, ../shared/datasets, the fetch cache that has it.
    directory = locate(dataset, args.data_dir)
    if args.ratings and dataset not in DATASETS:
        raise ValueError(f"--ratings applies to the MovieLens data sets only, not {dataset!r}")
    like_at = getattr(args, "like_at", None)
    if like_at is not None and dataset not in ("ml-1m", "ml-100k"):
        raise ValueError(f"--like-at applies to the MovieLens data sets only, not {dataset!r}")
    if dataset == "gowalla":
        return gowalla(directory)
    if dataset == "hetrec-lastfm":
        from tapestry.etl.hetrec import hetrec_lastfm

        return hetrec_lastfm(directory)
    if dataset in S3REC_NAMES:
        return s3rec(directory, dataset)
    if dataset == "ml-1m":
        return movielens_1m(directory, Path(args.ratings) if args.ratings else ml1m_ratings_default(directory),
                            like_at=like_at)
    return movielens_100k(directory, Path(args.ratings) if args.ratings else None, like_at=like_at)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def etl_config(args) -> ETLConfig:
    """The ETLConfig of `tapestry etl`: a data set adapter's own (HetRec Last.fm: event types play/tag, context
    column tag), else the defaults; then the flags."""
    if getattr(args, "dataset", None) == "hetrec-lastfm" and not args.events:
        from tapestry.etl.hetrec import hetrec_etl_config

        cfg = hetrec_etl_config(polars_engine=args.polars_engine)
    else:
        cfg = ETLConfig(polars_engine=args.polars_engine)
    if args.event_types:
        cfg.event_types = tuple(t.lower() for t in _names(args.event_types))
    if getattr(args, "context_columns", None):
        if not args.events:
            raise ValueError("--context-columns applies to generic tables (--events); a data set adapter declares "
                             "its own")
        cfg.context_columns = _names(args.context_columns)
    cfg.cold_items = bool(getattr(args, "cold_items", False))
    return cfg


def cmd_etl(args) -> None:
    from tapestry.etl import run_etl

    cfg = etl_config(args)
    if args.encoding and not args.events:
        raise ValueError("--encoding applies to generic tables (--events/--items/--users); the data set adapters "
                         "know their files' encodings")
    if getattr(args, "user_links", None) and not args.users:
        raise ValueError("--user-links names columns of the user table: pass --users too")
    if args.events:   # in the declared encoding, and without the up-front parse check: run_etl falls back itself
        from tapestry.etl.sources import generic_tables

        tables = generic_tables(Path(args.events), args.items and Path(args.items), args.users and Path(args.users),
                                encoding=args.encoding or "utf-8", check_events=False,
                                user_link_columns=list(_names(args.user_links)) or None)
    else:
        tables = load_tables(args)
    if args.engine == "local":
        if args.scheduler or args.workers is not None or args.scratch:
            raise ValueError("--workers, --scheduler and --scratch apply to --engine dask")
        run_etl(tables, args.tenant, args.root, cfg)
        return
    from tapestry.etl.distributed import ClusterConfig, dask_stages
    from tapestry.etl.engines import select_polars_engine

    cluster = ClusterConfig(workers=args.workers or 2, scheduler=args.scheduler, scratch=args.scratch)
    with dask_stages(cluster, select_polars_engine(cfg.polars_engine)) as stages:
        run_etl(tables, args.tenant, args.root, cfg, stages=stages)


def train_config(args) -> TrainConfig:
    cfg = TrainConfig.smoke() if getattr(args, "quick", False) else TrainConfig()
    changes = {}
    if getattr(args, "models", None):
        changes["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
        if cfg.serve not in changes["models"]:
            # The default served model is not in the line-up: "auto" (the best retriever on validation) or, for a
            # --quick run, the last retriever asked for (the registry's role); none: nothing served. Unknown names
            # are left for the training pipeline to report.
            from tapestry.training import registry

            found = [m for m in changes["models"] if m in registry.MODELS and registry.get(m).role == "retriever"]
            changes["serve"] = ("" if not found else "auto" if cfg.serve == "auto" and len(found) > 1
                                else found[-1])
    if getattr(args, "serve", None) is not None:
        changes["serve"] = args.serve
    if getattr(args, "session", None) is not None:
        changes["session"] = args.session
    if getattr(args, "distributed", None):
        changes["distributed"] = args.distributed
    if getattr(args, "params", None):
        try:
            changes["params"] = json.loads(args.params)
        except json.JSONDecodeError as e:
            raise ValueError(f"--params is not valid JSON ({e}): expected e.g. '{{\"lightgcn\": {{\"epochs\": 5}}}}'")
    return dataclasses.replace(cfg, **changes) if changes else cfg


def cmd_train(args) -> None:
    from tapestry.training.pipeline import run_train

    run_train(args.tenant, args.root, train_config(args))


def print_metrics(metrics: dict) -> None:
    rows = [(name, m) for name, m in metrics.items() if isinstance(m, dict) and "test" in m]
    if not rows:
        return
    keys = [k for k in rows[0][1]["test"] if k not in ("num_users", "num_candidates")]
    cold = [k for k in keys if k.startswith("ndcg@")]
    print(f"{'model (test, full ranking)':<30}" + "".join(f"{k:>12}" for k in keys)
          + "".join(f"{'cold items ' + k:>20}{'cold users ' + k:>20}" for k in cold))
    for name, m in rows:
        slices = m.get("slices", {})
        line = f"{name:<30}" + "".join(f"{m['test'].get(k, float('nan')):>12.4f}" for k in keys)
        for k in cold:
            for sl in ("cold_items", "cold_users"):
                line += f"{slices[sl][k]:>20.4f}" if sl in slices else f"{'':>20}"
        print(line)


def cmd_evaluate(args) -> None:
    from tapestry.training.pipeline import evaluate_models

    metrics = evaluate_models(args.tenant, args.root)
    out = Path(args.output) if args.output else latest_version(args.tenant, "models", args.root) / "evaluation.json"
    atomic_write_json(out, metrics)
    print_metrics(metrics)
    print(f"[evaluate] written to {out}")


def cmd_export(args) -> None:
    from tapestry.ensembles import run_export

    run_export(args.tenant, args.root, max_k=args.max_k, serve=args.serve, index=args.index,
               max_batch_size=args.max_batch_size, use_ranker=args.reranker, tier=args.tier,
               rules=args.rules, sources=args.sources)


def cmd_models(args) -> None:
    from tapestry.training.registry import MODELS

    for spec in MODELS.values():
        print(f"{spec.name:<24} {spec.summary}")


def cmd_report(args) -> None:
    from tapestry.reporting import write_report

    out = write_report(args.tenant, args.root, output=args.output, ablation=args.ablation,
                       latency=Path(args.latency) if args.latency else None, leaderboard=args.leaderboard)
    print(f"[report] {out}")


def cmd_demo(args) -> None:
    from tapestry.demo import run_demo

    run_demo(args.tenant, args.root, dataset=args.dataset or "ml-1m", quick=args.quick, fetch=not args.no_fetch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tapestry", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help_, tenant_required=True):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--tenant", required=tenant_required, type=validate_tenant,
                        help="tenant id ([A-Za-z0-9_-])")
        sp.add_argument("--root", type=Path, default=None, help="artifact root (default $TAPESTRY_HOME or ./artifacts)")
        sp.set_defaults(fn=fn)
        return sp

    e = add("etl", cmd_etl, "validate, encode and split a tenant's raw data")
    e.add_argument("--dataset", choices=ETL_DATASETS, metavar="DATASET",
                   help="a public data set under the datasets dir: ml-1m, ml-100k (MovieLens); gowalla (LightGCN's "
                        "fixed train/test split); beauty, sports, toys, yelp, lastfm-s3rec (S3-Rec sequences, "
                        "leave-one-out); hetrec-lastfm (HetRec Last.fm 2K: plays, tags, friends; fixed split). "
                        "Gowalla, S3-Rec and Last.fm plays have synthetic timestamps (order only)")
    e.add_argument("--data-dir", help="directory of the data set's files (default: its folder, e.g. ml-1m, "
                                      "gowalla-lightgcn, s3rec-sequential, under the first of $TAPESTRY_DATASETS, "
                                      "../shared/datasets, the fetch cache that has it; `tapestry datasets list`)")
    e.add_argument("--ratings", help="ratings file override (ML-1M default: full ratings.dat if present, else partial)")
    e.add_argument("--like-at", type=int, default=None, metavar="RATING",
                   help="MovieLens: ratings >= RATING become `like` events, the others `view` (default: all `rating`)")
    e.add_argument("--events", help="generic event table (CSV/TSV/Parquet; plain, .gz, .xz, .bz2 or .zst)")
    e.add_argument("--items", help="generic item table")
    e.add_argument("--users", help="generic user table")
    e.add_argument("--event-types", help="comma-separated event vocabulary (default: built-in list)")
    e.add_argument("--context-columns", help="comma-separated context columns of the generic event table kept as "
                                             "typed-graph nodes, e.g. device,location (ETLConfig.context_columns)")
    e.add_argument("--cold-items", action="store_true",
                   help="item-table rows without events get item ids too (items.parquet has_events=false), so a "
                        "content model can serve them (ETLConfig.cold_items; docs/content-features.md)")
    e.add_argument("--user-links", help="comma-separated user-table columns whose values are user ids, e.g. "
                                        "friends (a|b): user -> user relations of the typed graph")
    e.add_argument("--encoding", help="text encoding of the generic CSV/TSV tables, e.g. latin-1 or cp1252 "
                                      "(default: UTF-8, with or without BOM)")
    e.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="local: this process; dask: validation, id maps and the sorted split on Dask workers "
                        "(a local cluster of --workers processes, or --scheduler's), same artifacts")
    e.add_argument("--workers", type=int, help="--engine dask: local worker processes to start (default 2)")
    e.add_argument("--scheduler", help="--engine dask: address of a running Dask scheduler, e.g. tcp://host:8786 "
                                       "(its workers must read the input and --scratch at the same paths)")
    e.add_argument("--scratch", type=Path, help="--engine dask: a directory shared by the driver and every worker "
                                                "(default: a temporary directory here)")
    e.add_argument("--polars-engine", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: Polars' GPU engine (cudf-polars) when CUDA and the package are present, else CPU")
    t = add("train", cmd_train, "train LightGCN, SASRec (graph-initialised) and the reranker; evaluate")
    t.add_argument("--quick", action="store_true", help="tiny epochs, for smoke tests")
    t.add_argument("--models", help="comma-separated registry names in training order (default: "
                                    "popularity,lightgcn,sasrec_lightgcn); `tapestry models` lists them")
    t.add_argument("--params", help='JSON hyper-parameter overrides per model, e.g. \'{"lightgcn": {"epochs": 5}}\'')
    t.add_argument("--serve", help="the retriever to fit the reranker on and export (sasrec*, two_tower, bert4rec, "
                                   "comirec*); default 'auto': the line-up's retriever with the best validation "
                                   "NDCG@k ('' = none)")
    t.add_argument("--session", help="the anonymous-session encoder exported beside it (default 'auto': the "
                                     "line-up's model over the served item table, e.g. srgnn_shared; '' = none: "
                                     "anonymous sessions are encoded by the served model)")
    t.add_argument("--distributed", type=int, metavar="N", help="train each model on N processes under torchrun "
                   "(gloo on CPU, NCCL on CUDA): data-parallel DDP with the same global batch (lightgcn, sasrec*, "
                   "two_tower*, bert4rec, comirec*, srgnn*), TorchRec-sharded tables for dlrm; models that train in "
                   "one process only (sage, hgt, fusion) are refused")
    v = add("evaluate", cmd_evaluate, "full-ranking Recall/NDCG/MRR of the latest models")
    v.add_argument("--output", help="JSON path (default: <models>/evaluation.json)")
    x = add("export", cmd_export, "FAISS index + Triton model repository")
    x.add_argument("--max-k", type=int, default=100)
    x.add_argument("--serve", help="export another trained sequential encoder than the run's served one")
    x.add_argument("--index", default="auto", help="FAISS index: auto (exact below 50k items, else IVF+SQ8 with an "
                                                   "exact re-score, tuned to recall@100 >= 0.95), Flat, "
                                                   "IVF4096,Flat, HNSW32, ... (benchmarks/ann.py compares them)")
    x.add_argument("--max-batch-size", type=int, default=64, help="Triton dynamic batching: the most users one "
                   "request, and one batched stage call, may hold (0: off, one user per request)")
    x.add_argument("--reranker", default="auto", help="auto (a trained DLRM replaces the feature reranker; a fusion "
                   "reranker is served when it beats both on validation NDCG), feature, or a trained ranker's name")
    x.add_argument("--tier", choices=TIERS, help=TIER_HELP)
    x.add_argument("--rules", type=Path, help="the tenant's business rules, a JSON file (max_per, mmr_weight, "
                   "blocked_item_ids, fresh_boost, fresh_days; README 'Business rules'): checked and stored in the "
                   "export as artifacts/rules.json; none: the reranker's top K unchanged")
    x.add_argument("--sources", help="extra candidate sources merged into retrieval, trained models of the run, "
                   "e.g. two_tower,graph_filter (a retriever's user tower + FAISS index, or the graph filter's "
                   "item-to-item neighbour table); default: the served encoder alone (README 'Multi-source "
                   "candidates')")
    add_serving_commands(sub, add)
    add_monitor_command(add)
    rp = add("report", cmd_report, "one self-contained HTML page: data, metrics per model and slice, loss curves, "
                                   "ablation, serving latency")
    rp.add_argument("--output", type=Path, help="HTML path (default: <root>/<tenant>/reports/report-vNNNN.html)")
    rp.add_argument("--ablation", nargs="*", type=Path, default=[],
                    help="benchmark ablation run files to include (benchmarks/results/ablation-*.json)")
    rp.add_argument("--leaderboard", nargs="*", type=Path, default=None,
                    help="leaderboard files to show (default: every benchmarks/results/leaderboard-*.json)")
    rp.add_argument("--latency", help="serving latency benchmark JSON (default: "
                                      "benchmarks/results/serving_latency-<tenant>.json when present)")
    ls = sub.add_parser("models", help="list the registered models")
    ls.set_defaults(fn=cmd_models)
    add_datasets_command(sub)
    add_global_commands(sub)
    add_plan_command(sub)
    d = add("demo", cmd_demo, "ETL -> train -> evaluate -> export -> serve -> recommend, with timings")
    d.add_argument("--dataset", choices=DATASETS)
    d.add_argument("--quick", action="store_true")
    d.add_argument("--no-fetch", action="store_true", help="use only local data (default: download the data set "
                   "when no datasets root has it whole, e.g. ML-1M's full ratings.dat; `tapestry datasets fetch`)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (FileNotFoundError, ValueError) as e:
        # Expected user errors (missing artifacts or inputs, bad schema, bad settings): a message, no traceback.
        raise SystemExit(f"tapestry {args.command}: error: {e}")


if __name__ == "__main__":
    main()
