"""The SERVED path, behaviour-aware vs behaviour-blind SASRec (issue 19 target: "ML-1M with like/view relations: the
behaviour-aware served path is not below the behaviour-blind one").

    /tmp/cpurun .venv/bin/python benchmarks/behaviour_served.py [--dataset ml-1m] [--seeds 0,1,2] [--epochs 12]

Per seed and arm (`blind` = SASRec, `aware` = SASRec with behaviour=True; same config and seed otherwise): the
real `tapestry train` (popularity + sasrec, the feature reranker fitted on sasrec's candidates) and `tapestry
export`, then the exported serving stages themselves (user_encoder with HISTORY_TYPES -> retrieval (FAISS) ->
filter -> rerank, the in-process pipeline Triton runs) answer K = 10 for every evaluated user. feature_lookup is
the one stage left out: the export's store holds every event, test ones included, so the history (and its event
types) is given as the stage would build it from the protocol's split: train for validation, train + valid for
test. Leave-one-out: NDCG@10 / Recall@10 of the held-out item in the served top 10 (the seen items are filtered,
as full ranking masks them). metrics.json's offline numbers (`sasrec`, `sasrec+rerank`: full ranking) are kept
beside them. The ratings become `like` (>= 4) / `view` events. Result: benchmarks/results/behaviour_served-<dataset>
.json with aware / blind ratios from the same run and the load average at start.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
ARMS = {"blind": {}, "aware": {"behaviour": True}}
CHUNK = 256   # users per stage.batch call


def served_metrics(artifact_dir: Path, data, split: str, tenant: str, k: int = 10) -> dict:
    """NDCG@k / Recall@k of `split`'s held-out items in the served top k (the stages after feature_lookup)."""
    import polars as pl

    from tapestry.inference.padding import left_pad_one
    from tapestry.serving.feature_lookup import FeatureLookup
    from tapestry.serving.pipeline import RecommendPipeline
    from tapestry.serving.stage import USER_KNOWN, as_str, bytes_array, export_manifest
    from tapestry.training.behaviour import event_vocabulary, type_sequences

    manifest = export_manifest(artifact_dir)
    pipeline = RecommendPipeline.from_artifacts(artifact_dir)
    stages = [s for s in pipeline.stages if not isinstance(s, FeatureLookup)]
    history_splits = ("train",) if split == "valid" else ("train", "valid")
    vocab = manifest.get("event_types") or event_vocabulary(data)      # the blind encoder ignores the types
    items, types = type_sequences(data, history_splits, vocab)
    max_len = int(manifest["max_len"])
    users = pl.read_parquet(artifact_dir / "users.parquet")
    attrs = dict(zip(users["user_idx"].to_list(), users["attrs"].to_list()))
    item_ids = dict(zip(data.items["item_idx"].to_list(), data.items["item_id"].to_list()))
    held = getattr(data, split).select("user_idx", "item_idx").rows()
    ndcg = recall = 0.0
    for s in range(0, len(held), CHUNK):
        envs = []
        for u, _ in held[s:s + CHUNK]:
            user_attrs = np.zeros(int(manifest["num_user_attrs"]), np.float32)
            user_attrs[attrs.get(u, [])] = 1.0
            envs.append({"TENANT": bytes_array([tenant]), "HISTORY": left_pad_one(items[u], max_len),
                         "HISTORY_TYPES": left_pad_one(types[u], max_len),
                         "SEEN": np.concatenate([[0], np.unique(items[u])]).astype(np.int64),
                         "EXCLUDE": np.zeros(1, np.int64), "USER_ATTRS": user_attrs,
                         "USER_KIND": np.array([USER_KNOWN], np.int32), "K": np.array([k], np.int32)})
        for stage in stages:
            results = stage.batch([{n: env[n] for n in stage.inputs if n in env} for env in envs])
            for env, r in zip(envs, results):
                if isinstance(r, Exception):
                    raise r
                env.update(r)
        for env, (_, target) in zip(envs, held[s:s + CHUNK]):
            top = [as_str(x) for x in env["ITEM_IDS"]]
            if item_ids[target] in top:
                rank = top.index(item_ids[target])
                ndcg += 1.0 / np.log2(rank + 2.0)
                recall += 1.0
    return {f"ndcg@{k}": round(ndcg / len(held), 5), f"recall@{k}": round(recall / len(held), 5),
            "users": len(held)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    from behaviour_sasrec import load
    from tapestry.config import TrainConfig
    from tapestry.ensembles import run_export
    from tapestry.training.data import InteractionData
    from tapestry.training.pipeline import run_train

    load_at_start = os.getloadavg()
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = {"log": lambda *a, **k: None}
    t0 = time.perf_counter()
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, _, type_counts = load(args.dataset, root)      # the like/view ETL, as tenant `args.dataset`
        print(f"[served] {args.dataset}: train types {type_counts} ({time.perf_counter() - t0:.0f}s), "
              f"load {load_at_start}", flush=True)
        for seed in seeds:
            for arm, extra in ARMS.items():
                t = time.perf_counter()
                params = {"sasrec": dict(epochs=args.epochs, patience=3, seed=seed, **extra)}
                cfg = TrainConfig(models=("popularity", "sasrec"), params=params, serve="sasrec", session="")
                trained = run_train(args.dataset, root, cfg, **quiet)
                export = run_export(args.dataset, root, **quiet)
                fit_s = time.perf_counter() - t
                data = InteractionData.load(Path((trained.path / "etl_version.txt").read_text().strip()))
                offline = json.loads((trained.path / "metrics.json").read_text())
                r = {"served": {split: served_metrics(export.artifact_dir, data, split, args.dataset)
                                for split in ("valid", "test")},
                     "offline": {name: {split: {m: round(float(v), 5) for m, v in offline[name][split].items()
                                                if m in METRICS} for split in ("valid", "test")}
                                 for name in ("sasrec", "sasrec+rerank") if name in offline},
                     "train_export_seconds": round(fit_s, 1),
                     "eval_seconds": round(time.perf_counter() - t - fit_s, 1)}
                runs.setdefault(arm, {})[str(seed)] = r
                print(f"[served] seed {seed} {arm}: served {r['served']} offline {r['offline']} "
                      f"({fit_s:.0f}s + {r['eval_seconds']:.0f}s)", flush=True)
                out = write_report(args, load_at_start, seeds, type_counts, runs, t0)
    print(f"[served] {out}")


METRICS = ("ndcg@10", "recall@10")


def _numbers(run: dict, kind: str, split: str, m: str) -> float:
    """served / sasrec / sasrec+rerank (offline, full ranking) `split` metric `m` of one run."""
    if kind == "served":
        return run["served"][split][m]
    return run["offline"].get(kind, {}).get(split, {}).get(m, float("nan"))


def write_report(args, load_at_start, seeds, type_counts, runs, t0) -> Path:
    """The result JSON, rewritten after every run (a cut-short job still leaves its finished seeds)."""
    import torch

    done = [s for s in seeds if all(str(s) in runs.get(arm, {}) for arm in ARMS)]
    summary: dict = {}
    if done:
        for arm in ARMS:
            summary[arm] = {f"{kind}_{split}_{m}": round(float(np.mean([_numbers(runs[arm][str(s)], kind, split, m)
                                                                        for s in done])), 5)
                            for kind in ("served", "sasrec", "sasrec+rerank") for split in ("valid", "test")
                            for m in METRICS}
        summary["aware_vs_blind"] = {key: round(summary["aware"][key] / summary["blind"][key], 4)
                                     for key in summary["aware"] if summary["blind"][key]}
        summary["served_test_ndcg@10_aware_minus_blind_per_seed"] = [
            round(runs["aware"][str(s)]["served"]["test"]["ndcg@10"]
                  - runs["blind"][str(s)]["served"]["test"]["ndcg@10"], 5) for s in done]
    report = {"dataset": args.dataset, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv), "labelling": "rating >= 4 -> like, else view",
              "load_average_at_start": [round(x, 2) for x in load_at_start],
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "train_event_types": type_counts, "seeds": seeds, "seeds_done": done, "epochs": args.epochs,
              "arms": ARMS, "summary": summary, "runs": runs, "total_seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.output_dir) / f"behaviour_served-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp_out, out)
    return out


if __name__ == "__main__":
    main()
