"""The multi-seed leaderboard: named line-ups on ML-1M, Amazon Beauty and Gowalla, N seeds, every path's full-ranking
metrics, mean and 95 % interval across seeds, and a paired test of each path against the baseline path.

    python benchmarks/leaderboard.py run --dataset ml-1m --seeds 0,1,2          # + the RecTools peer if installed
    python benchmarks/leaderboard.py run --dataset gowalla --seeds 0,1,2
    python benchmarks/leaderboard.py table benchmarks/results/leaderboard-*.json   # markdown + PNG

A PATH is what could be served: a retriever alone ("sasrec_lightgcn"), a retriever followed by the feature
reranker fitted on its own candidates ("sasrec_lightgcn+rerank"), or a trained ranker over its retriever's
candidates ("fusion", "dlrm"). The SERVED path is chosen on VALIDATION (mean over seeds of the protocol's NDCG)
among the servable paths; test numbers are read once, for every path, after that choice. The baseline is the
two-tower's path ("two_tower+rerank"; Gowalla, which has no validation split and no order, uses LightGCN).

Protocols: ML-1M and Beauty leave-one-out, full ranking over all items, NDCG@10 / Recall@10; Gowalla the LightGCN
fixed split, Recall@20 / NDCG@20. The paired test (Wilcoxon signed-rank on per-user metrics averaged over seeds, and
a paired-bootstrap interval of the mean difference) is tapestry.reporting.leaderboard.

Model settings: the line-up's defaults, overridden per data set (GOWALLA_PARAMS; ML1M_PARAMS: SASRec max_len 200 +
AdamW, chosen on validation by benchmarks/sasrec_settings.py) or by --params. `--resume` of a file measured with
other settings must pass them again (e.g. `--params '{}'` for the line-up defaults).

    python benchmarks/leaderboard.py peer --dataset ml-1m --seeds 0 --peer-epochs 3   # only the RecTools peer,
                                                      # for seeds already in the file; merged into JSON/md/png
    python benchmarks/leaderboard.py merge A.json B.json --peer-from OLD.json   # seeds run in separate processes

Writes benchmarks/results/leaderboard-<dataset>.json, .md and .png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tapestry.reporting.leaderboard import (across_seeds, leaderboard_markdown, leaderboard_png,  # noqa: E402
                                            paired_test)

RESULTS = Path(__file__).resolve().parent / "results"

# Line-ups: (models in training order, retrievers that get a feature-reranked path, baseline path).
LINEUPS = {
    "default": (("popularity", "lightgcn", "sasrec_lightgcn", "two_tower"), ("sasrec_lightgcn", "two_tower"),
                "two_tower+rerank"),
    "graph": (("popularity", "lightgcn"), (), "lightgcn"),
    "filter": (("popularity",), (), "popularity"),     # with --extra graph_filter: the training-free path alone
}
DATASET_LINEUP = {"ml-1m": "default", "beauty": "default", "gowalla": "graph"}
# The settings of the committed single-seed Gowalla ablation (results/ablation-gowalla.json): ~14 min per fit here.
GOWALLA_PARAMS = {"lightgcn": {"batch_size": 8192, "entity_nodes": False, "epochs": 12, "loss": "softmax", "lr": 0.01,
                               "num_layers": 3, "num_negatives": 1024, "temperature": 0.1}}
# ML-1M: the published SASRec-CE settings (max_len 200, AdamW with weight decay) won on VALIDATION against
# SASRecConfig's defaults (results/sasrec_settings-ml-1m.json: NDCG@10 0.1805 vs 0.1705, seed 0).
ML1M_PARAMS = {"sasrec_lightgcn": {"max_len": 200, "optimizer": "adamw", "weight_decay": 0.01}}
DATASET_PARAMS = {"gowalla": GOWALLA_PARAMS, "ml-1m": ML1M_PARAMS}


def base_params(dataset: str, params_json: str | None) -> dict:
    """{"model": {field: value}} over the line-up's defaults: --params when given, else the data set's own."""
    return json.loads(params_json) if params_json else DATASET_PARAMS.get(dataset, {})


def _machine() -> dict:
    import platform

    import torch

    return {"device": "cpu", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _with_optional(models: tuple[str, ...], extra: list[str]) -> tuple[str, ...]:
    from tapestry.training import registry

    return models + tuple(m for m in extra if m in registry.MODELS and m not in models)


def _seeded_params(models, base: dict, seed: int) -> dict:
    from tapestry.training import registry

    out = {}
    for m in models:
        cls = registry.get(m).recommender_class()
        fields = {f.name for f in dataclasses.fields(cls.Config)} if cls.Config else set()
        p = dict(base.get(m, {}))
        if "seed" in fields:
            p["seed"] = seed
        if p:
            out[m] = p
    return out


def _paths_of_run(model_dir: Path, data, models, reranked: tuple[str, ...], seed: int, served: str) -> dict:
    """{path name: scorer} for one trained run (every model alone, reranked retrievers, rankers)."""
    from tapestry.config import RerankConfig
    from tapestry.training import registry
    from tapestry.training.base import Recommender
    from tapestry.training.rerank_fit import RerankedPath, fit_reranker

    loaded = {m: Recommender.load(model_dir / registry.get(m).filename, device="cpu") for m in models}
    for m in models:
        if registry.get(m).role == "ranker":     # a loaded ranker scores its retriever's candidates: bind it
            loaded[m].bind(loaded)
    paths = dict(loaded)
    rc = RerankConfig(seed=seed)
    for m in reranked:
        if m == served:     # the run fitted it already (same data, same seed): the file the export would serve
            from tapestry.inference.feature_reranker import FeatureReranker

            reranker = FeatureReranker.load(model_dir / "rerank.npz")
        else:
            reranker = fit_reranker(loaded[m], data, rc.num_candidates, rc.epochs, rc.lr, rc.seed,
                                    log=lambda *a: None)
        paths[f"{m}+rerank"] = RerankedPath(loaded[m], reranker, rc.num_candidates)
    return paths


def _load(dataset: str, root: Path):
    """(InteractionData, ETL result, k) of a data set: the split every path and the peer are measured on."""
    from tapestry.cli import load_tables
    from tapestry.etl import run_etl
    from tapestry.training.data import InteractionData
    from tapestry.training.evaluate import is_multi_target

    ns = argparse.Namespace(events=None, items=None, users=None, dataset=dataset, data_dir=None, ratings=None)
    etl = run_etl(load_tables(ns), dataset.replace(".", "-"), root)
    data = InteractionData.load(etl.path)
    return data, etl, 20 if is_multi_target(data, "test") else 10


def _add_peer(per_seed: dict, seed: int, r: dict) -> None:
    """Record one peer run; a seed measured again replaces its earlier numbers."""
    entry = per_seed.setdefault("rectools_sasrec", {"valid": [], "test": [], "fit": []})
    entry["peer"] = r["params"]
    seeds = entry.setdefault("seeds", [])
    if seed in seeds:
        i = seeds.index(seed)
        for key in ("valid", "test", "fit", "epoch_seconds"):
            del entry.setdefault(key, [])[i]
        del seeds[i]
    seeds.append(seed)
    entry["valid"].append(r["valid"])
    entry["test"].append(r["test"])
    entry["fit"].append(r["fit_seconds"])
    entry.setdefault("epoch_seconds", []).append(r["epoch_seconds"])


def cmd_run(args) -> None:
    from tapestry.config import TrainConfig
    from tapestry.training import registry
    from tapestry.training.evaluate import per_user_metrics
    from tapestry.training.pipeline import run_train

    lineup = args.lineup or DATASET_LINEUP.get(args.dataset, "default")
    models, reranked, baseline = LINEUPS[lineup]
    models = _with_optional(models, [m for m in (args.extra or "").split(",") if m])
    seeds = [int(s) for s in args.seeds.split(",")]
    params = base_params(args.dataset, args.params)
    root = Path(args.root or tempfile.mkdtemp(prefix="tapestry-leaderboard-"))
    tenant = args.dataset.replace(".", "-")
    data, etl, k = _load(args.dataset, root)
    has_valid = data.valid.height > 0
    per_seed: dict[str, dict[str, list]] = {}        # path -> {"valid": [per-user dicts], "test": [...], "fit": []}
    out = Path(args.output or RESULTS / f"leaderboard-{args.dataset}.json")
    done: list[int] = []
    if args.resume:
        done, per_seed = load_seeds(out, models, lineup)
        print(f"[leaderboard] resuming {out.name}: seeds {done} already measured", flush=True)
    t_start = time.perf_counter()
    for seed in seeds:
        if seed in done:
            continue
        served_retriever = next((m for m in reversed(models) if registry.get(m).role == "retriever"), "")
        cfg = TrainConfig(models=models, params=_seeded_params(models, params, seed), serve=served_retriever,
                          session="", quick=args.quick)
        print(f"[leaderboard] {args.dataset} seed {seed}: training {', '.join(models)}", flush=True)
        run = run_train(tenant, root, cfg, log=lambda *a, **kw: print(*a, flush=True))
        fit_s = {m: run.metrics[m].get("fit_seconds") for m in models}
        for name, scorer in _paths_of_run(run.path, data, models, reranked if has_valid else (), seed,
                                           served_retriever).items():
            entry = per_seed.setdefault(name, {"valid": [], "test": [], "fit": []})
            if has_valid:
                entry["valid"].append(per_user_metrics(scorer, data, "valid", k))
            entry["test"].append(per_user_metrics(scorer, data, "test", k))
            entry["fit"].append(fit_s.get(name.split("+")[0]) or 0.0)
        if args.peer and args.dataset != "gowalla":
            from peers import rectools_sasrec as peer

            if peer.available():
                print(f"[leaderboard] seed {seed}: RecTools SASRec peer ({args.peer_epochs} epochs)", flush=True)
                _add_peer(per_seed, seed, peer.run(data, seed, args.peer_epochs, k))
            else:
                print("[leaderboard] RecTools not installed (pip install -e '.[peers]'): peer skipped", flush=True)
        done.append(seed)
        save_seeds(out, done, per_seed, models, lineup)
        _write(args, data, k, list(done), per_seed, reranked, baseline, models, time.perf_counter() - t_start,
               lineup, etl)


def _seeds_path(out: Path) -> Path:
    return out.with_name(out.stem + ".per-user.npz")


def save_seeds(out: Path, seeds: list[int], per_seed: dict, models, lineup: str) -> None:
    """Every finished seed's per-user metrics beside the summary (`<name>.per-user.npz`, no pickles), so that a
    later `run --resume` adds seeds to the same paired test instead of starting again."""
    arrays, meta = {}, {"seeds": seeds, "models": list(models), "lineup": lineup, "paths": {}}
    for name, e in per_seed.items():
        meta["paths"][name] = {key: e[key] for key in ("fit", "epoch_seconds", "peer", "seeds") if key in e}
        for split in ("valid", "test"):
            for i, per_user in enumerate(e[split]):
                for metric, values in per_user.items():
                    arrays[f"{name}|{split}|{i}|{metric}"] = np.asarray(values)
    path = _seeds_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_seeds(out: Path, models, lineup: str) -> tuple[list[int], dict]:
    """(seeds already measured, per_seed) from save_seeds' file; nothing when absent. A file of another line-up
    is refused: its seeds would not be the same experiment."""
    path = _seeds_path(out)
    if not path.exists():
        return [], {}
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta["models"] != list(models) or meta["lineup"] != lineup:
            raise SystemExit(f"{path} holds line-up {meta['lineup']} {meta['models']}, not {lineup} "
                             f"{list(models)}: pass the same --lineup/--extra, or another --output")
        per_seed: dict[str, dict] = {}
        for name, extra in meta["paths"].items():
            e = per_seed.setdefault(name, {"valid": [], "test": [], **extra})
            for split in ("valid", "test"):
                i = 0
                while f"{name}|{split}|{i}|users" in f.files:
                    prefix = f"{name}|{split}|{i}|"
                    e[split].append({key[len(prefix):]: f[key] for key in f.files if key.startswith(prefix)})
                    i += 1
    return list(meta["seeds"]), per_seed


def _write(args, data, k, seeds, per_seed, reranked, baseline, models, seconds, lineup, etl,
           keep: dict | None = None) -> None:
    """Summaries after every seed (a run cut short still leaves its finished seeds). `keep`: fields of an earlier
    report that stay as they were (the peer-only command keeps the line-up run's command, machine and time)."""
    from tapestry.training import registry

    metrics = (f"ndcg@{k}", f"recall@{k}")
    paths = {}
    for name, e in per_seed.items():
        paths[name] = {m: across_seeds([float(u[m].mean()) for u in e["test"]]) for m in metrics}
        if e["valid"]:
            paths[name]["valid"] = {m: across_seeds([float(u[m].mean()) for u in e["valid"]]) for m in metrics}
        paths[name]["fit_seconds"] = across_seeds(e["fit"])
        if "epoch_seconds" in e:
            paths[name]["epoch_seconds"] = across_seeds(e["epoch_seconds"])
        if "peer" in e:
            paths[name]["peer_params"] = e["peer"]
        if "seeds" in e:        # a path measured on some of the seeds only (the peer added later: `peer`)
            paths[name]["seeds"] = list(e["seeds"])

    def servable(name: str) -> bool:
        """What the export can serve (a retriever, reranked or not, or a ranker over one): the same candidates as
        `tapestry train --serve auto`. A candidate source (graph_filter) is not served alone on a validated set."""
        base = name.split("+")[0]
        return base in registry.MODELS and registry.get(base).role in ("retriever", "ranker")

    candidates = [n for n in paths if servable(n)]
    if any("valid" in paths[n] for n in candidates):
        served = max(candidates, key=lambda n: paths[n]["valid"][metrics[0]]["mean"] if "valid" in paths[n] else -1)
        chosen_on = "validation"
    else:   # no validation split (Gowalla): the graph filter when trained, else the best LightGCN-family path
        served = next((n for n in ("graph_filter",) if n in paths), baseline)
        chosen_on = "fixed choice (no validation split)"
    if baseline not in paths:
        baseline = next(iter(paths))
    paired = {}
    for name, e in per_seed.items():
        if name == baseline:
            continue
        a = np.mean([u[metrics[0]] for u in e["test"]], axis=0)
        # against the baseline on the SAME seeds (the i-th per-user entry of a full path is seeds[i])
        base_tests = per_seed[baseline]["test"]
        if "seeds" in e:
            base_tests = [base_tests[seeds.index(s)] for s in e["seeds"]]
        b = np.mean([u[metrics[0]] for u in base_tests], axis=0)
        paired[name] = paired_test(a, b)
    report = {"dataset": args.dataset, "lineup": lineup, "models": list(models), "seeds": seeds, "k": k,
              "served": served, "served_chosen_on": chosen_on, "baseline": baseline,
              "protocol": "leave-one-out, full ranking" if k == 10 else "fixed split (LightGCN's), full ranking",
              "num_users": int(etl.manifest["num_users"] - 1), "num_items": int(etl.manifest["num_items"] - 1),
              "paths": paths, "paired": paired, "p_values": {n: t["p_value"] for n, t in paired.items()},
              "seconds": round(seconds, 1), "machine": _machine(), "command": " ".join(sys.argv),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report.update(keep or {})
    out = Path(args.output or RESULTS / f"leaderboard-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(leaderboard_markdown(report) + "\n")
    out.with_suffix(".png").write_bytes(leaderboard_png([report]))
    print(leaderboard_markdown(report), flush=True)
    print(f"[leaderboard] {out}", flush=True)


def cmd_peer(args) -> None:
    """Run ONLY the RecTools peer for seeds the line-up already measured (<output>.per-user.npz) and merge it into
    the JSON / markdown / PNG: its per-seed metrics and its paired test against the baseline on the same seeds."""
    from peers import rectools_sasrec as peer

    out = Path(args.output or RESULTS / f"leaderboard-{args.dataset}.json")
    if not out.exists():
        raise SystemExit(f"{out} does not exist: run the line-up first (`run`)")
    old = json.loads(out.read_text())
    lineup, models = old["lineup"], tuple(old["models"])
    done, per_seed = load_seeds(out, models, lineup)
    seeds = [int(s) for s in args.seeds.split(",")]
    missing = [s for s in seeds if s not in done]
    if missing:
        raise SystemExit(f"seeds {missing} are not in {_seeds_path(out).name} (measured: {done})")
    if not peer.available():
        raise SystemExit("RecTools is not installed: pip install -e '.[peers]'")
    _, reranked, baseline = LINEUPS[lineup]
    data, etl, k = _load(args.dataset, Path(args.root or tempfile.mkdtemp(prefix="tapestry-leaderboard-")))
    keep = {key: old[key] for key in ("command", "machine", "seconds", "created_at") if key in old}
    for seed in seeds:
        print(f"[leaderboard] {args.dataset} seed {seed}: RecTools SASRec peer ({args.peer_epochs} epochs)", flush=True)
        t0 = time.perf_counter()
        _add_peer(per_seed, seed, peer.run(data, seed, args.peer_epochs, k))
        keep.setdefault("peer_runs", dict(old.get("peer_runs", {})))[str(seed)] = {
            "command": " ".join(sys.argv), "machine": _machine(), "seconds": round(time.perf_counter() - t0, 1),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        save_seeds(out, done, per_seed, models, lineup)
        _write(args, data, k, done, per_seed, reranked, old["baseline"], models, old.get("seconds", 0.0), lineup,
               etl, keep)


def _peer_runs(entry: dict) -> dict[int, dict]:
    """{seed: one peer run as _add_peer takes it} from a stored peer entry."""
    return {seed: {"params": entry.get("peer"), "valid": entry["valid"][j], "test": entry["test"][j],
                   "fit_seconds": entry["fit"][j], "epoch_seconds": entry["epoch_seconds"][j]}
            for j, seed in enumerate(entry["seeds"])}


def join_runs(runs: list[tuple[list[int], dict]]) -> tuple[list[int], dict]:
    """(seeds, per_seed) of load_seeds results on disjoint seeds, joined in seed order (the i-th per-user entry of
    every full path is seeds[i], as _write's paired test expects); the peer keeps its own seed list."""
    seeds = sorted(s for done, _ in runs for s in done)
    if len(seeds) != len(set(seeds)):
        raise SystemExit(f"the files measure overlapping seeds {seeds}: merge disjoint runs only")
    per_seed: dict[str, dict] = {}
    for seed in seeds:
        done, part = next((d, ps) for d, ps in runs if seed in d)
        i = done.index(seed)
        for name, e in part.items():
            if "seeds" in e:
                if seed in e["seeds"]:
                    _add_peer(per_seed, seed, _peer_runs(e)[seed])
                continue
            entry = per_seed.setdefault(name, {"valid": [], "test": [], "fit": []})
            if e["valid"]:
                entry["valid"].append(e["valid"][i])
            entry["test"].append(e["test"][i])
            entry["fit"].append(e["fit"][i])
    return seeds, per_seed


def cmd_merge(args) -> None:
    """One leaderboard from runs of the same line-up on disjoint seeds (run side by side in separate processes,
    each with its own --output): the served path chosen again on validation over all seeds, the paired test on
    all seeds. `--peer-from` copies the RecTools peer's runs from another file of the same data set and split (the
    peer does not depend on tapestry's model settings)."""
    parts = [Path(p) for p in args.files]
    reports = [json.loads(p.read_text()) for p in parts]
    lineup, models = reports[0]["lineup"], tuple(reports[0]["models"])
    if any(r["dataset"] != reports[0]["dataset"] for r in reports):
        raise SystemExit("the files are of different data sets")
    seeds, per_seed = join_runs([load_seeds(p, models, lineup) for p in parts])
    keep = {"command": [r["command"] for r in reports], "machine": [r["machine"] for r in reports],
            "created_at": max(r["created_at"] for r in reports), "merged_from": [p.name for p in parts]}
    if args.peer_from:
        src = Path(args.peer_from)
        old = json.loads(src.read_text())
        if old["dataset"] != reports[0]["dataset"]:
            raise SystemExit(f"{src} is of {old['dataset']}, not {reports[0]['dataset']}")
        _, theirs = load_seeds(src, tuple(old["models"]), old["lineup"])
        if "rectools_sasrec" not in theirs:
            raise SystemExit(f"{src} has no RecTools peer runs")
        for seed, run in _peer_runs(theirs["rectools_sasrec"]).items():
            if seed in seeds:
                _add_peer(per_seed, seed, run)
        keep.update(peer_runs=old.get("peer_runs", {}), peer_from=src.name)
    reranked = LINEUPS[lineup][1]      # the baseline is the runs' own (reports[0])
    args.dataset = reports[0]["dataset"]
    data, etl, k = _load(args.dataset, Path(tempfile.mkdtemp(prefix="tapestry-leaderboard-")))
    out = Path(args.output or RESULTS / f"leaderboard-{args.dataset}.json")
    save_seeds(out, seeds, per_seed, models, lineup)
    _write(args, data, k, seeds, per_seed, reranked, reports[0]["baseline"], models,
           sum(r.get("seconds", 0.0) for r in reports), lineup, etl, keep)


def cmd_table(args) -> None:
    reports = [json.loads(Path(p).read_text()) for p in args.files]
    text = "\n\n".join(leaderboard_markdown(r) for r in reports)
    print(text)
    out = Path(args.output)
    out.write_text(text + "\n")
    out.with_suffix(".png").write_bytes(leaderboard_png(reports))
    print(f"[leaderboard] {out} + {out.with_suffix('.png')}")


README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def cmd_readme(args) -> None:
    """Rewrite the README's results section (between the two markers) from the committed leaderboard files."""
    reports = [json.loads(Path(p).read_text()) for p in args.files]
    body = "\n\n".join(leaderboard_markdown(r) for r in reports)
    body += ("\n\n± is the 95 % Student-t interval across seeds; p is the two-sided Wilcoxon signed-rank test of "
             "per-user metrics (averaged over seeds) against the baseline path. Generated by "
             "`python benchmarks/leaderboard.py readme` from " + ", ".join(f"`{Path(p).name}`" for p in args.files))
    readme = Path(args.readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} section")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_START + "\n" + body + "\n" + README_END + tail)
    print(f"[leaderboard] {readme}: results section rewritten from {len(reports)} file(s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", required=True, help="ml-1m, beauty, gowalla (any `tapestry etl --dataset` name)")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--lineup", choices=sorted(LINEUPS), help="default: by data set")
    r.add_argument("--extra", default="fusion,graph_filter",
                   help="models appended to the line-up when the registry has them (comma-separated)")
    r.add_argument("--params", help='JSON {"model": {...}} over the line-up defaults (default: the data set\'s '
                   'own, e.g. ML-1M\'s SASRec max_len 200 + AdamW)')
    r.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                   help="run the RecTools SASRec peer when rectools is installed")
    r.add_argument("--peer-epochs", type=int, default=30)
    r.add_argument("--quick", action="store_true", help="smoke-sized models (checks the benchmark, not quality)")
    r.add_argument("--root", help="artifact root (default: a temp dir)")
    r.add_argument("--output")
    r.add_argument("--resume", action="store_true",
                   help="keep the seeds already in <output>.per-user.npz and run only the missing ones")
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("peer", help="only the RecTools peer, for seeds already in <output>.per-user.npz")
    q.add_argument("--dataset", required=True)
    q.add_argument("--seeds", default="0")
    q.add_argument("--peer-epochs", type=int, default=30)
    q.add_argument("--root", help="artifact root for the ETL (default: a temp dir)")
    q.add_argument("--output")
    q.set_defaults(fn=cmd_peer)
    g = sub.add_parser("merge", help="join runs of the same line-up on disjoint seeds into one leaderboard")
    g.add_argument("files", nargs="+", help="leaderboard JSONs (each with its .per-user.npz beside it)")
    g.add_argument("--peer-from", help="a leaderboard JSON of the same data set whose RecTools peer runs to copy")
    g.add_argument("--output")
    g.set_defaults(fn=cmd_merge)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    t.add_argument("--output", default=str(RESULTS / "leaderboard.md"))
    t.set_defaults(fn=cmd_table)
    m = sub.add_parser("readme")
    m.add_argument("files", nargs="+")
    m.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    m.set_defaults(fn=cmd_readme)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
