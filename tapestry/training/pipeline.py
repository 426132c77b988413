"""`tapestry train` / `tapestry evaluate`: latest ETL version -> graph -> models -> versioned models directory.

Stages (one log line each, with wall time): load data, build graph, popularity, LightGCN, SASRec (started from
LightGCN's item vectors when `init_sasrec_from_graph`), the feature reranker (fitted on the
validation split over SASRec's candidates), evaluation, write.

Output `<root>/<tenant>/models/vNNNN/` (written atomically via new_version):
    popularity.pt, lightgcn.pt, sasrec.pt   Recommender.save files (load any with Recommender.load)
    rerank.npz                              FeatureReranker.save (weights + feature tables)
    config.json                             dataclasses.asdict(TrainConfig)
    metrics.json                            {model: {"valid": {...}, "test": {...}, "fit_seconds": s}}
    etl_version.txt                         the ETL version directory trained on
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tapestry.artifacts import atomic_write_json, atomic_write_text, latest_version, new_version
from tapestry.config import TrainConfig, validate_tenant
from tapestry.graph.hetero import build_hetero_graph
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate
from tapestry.training.lightgcn import LightGCNRecommender
from tapestry.training.popularity import PopularityRecommender
from tapestry.training.rerank_fit import evaluate_reranked, fit_reranker
from tapestry.training.reranker import FeatureReranker
from tapestry.training.sasrec_recommender import SASRecRecommender

# Saved model files, in training order. The reranker is saved separately (its own format).
MODEL_FILES = {"popularity": "popularity.pt", "lightgcn": "lightgcn.pt", "sasrec": "sasrec.pt"}
RERANK_FILE = "rerank.npz"


@dataclass
class TrainResult:
    path: Path          # the models/vNNNN directory
    metrics: dict       # as in metrics.json


class _Stage:
    """`with _Stage(log, "name") as s:` logs one line with the wall time when the block ends."""

    def __init__(self, log, name: str):
        self.log, self.name, self.detail = log, name, ""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.seconds = time.perf_counter() - self.t0
        if exc_type is None:
            self.log(f"[train] {self.name}: {self.detail}{' ' if self.detail else ''}({self.seconds:.1f}s)")


def _fmt(m: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items() if k not in ("num_users", "num_candidates"))


def _evaluate_both(model: Recommender, data: InteractionData) -> dict:
    return {"valid": evaluate(model, data, "valid"), "test": evaluate(model, data, "test")}


def run_train(tenant: str, root: Path | None = None, cfg: TrainConfig | None = None, log=print) -> TrainResult:
    validate_tenant(tenant)
    cfg = cfg or TrainConfig()
    lg, sr = cfg.lightgcn, cfg.sasrec
    # Fail before minutes of training, not after: the hybrid needs matching embedding widths.
    if cfg.init_sasrec_from_graph and lg.embedding_dim != sr.hidden_dim:
        raise ValueError(f"init_sasrec_from_graph needs lightgcn.embedding_dim ({lg.embedding_dim}) == "
                         f"sasrec.hidden_dim ({sr.hidden_dim})")
    t_all = time.perf_counter()
    etl_dir = latest_version(tenant, "etl", root)

    with _Stage(log, "load") as s:
        data = InteractionData.load(etl_dir)
        s.detail = (f"{etl_dir} ({data.num_users - 1:,} users, {data.num_items - 1:,} items, "
                    f"{data.train.height:,} train events)")
    with _Stage(log, "graph") as s:
        graph = build_hetero_graph(data)
        s.detail = f"{sum(graph[nt].num_nodes for nt in graph.node_types):,} nodes, {graph.num_edges:,} edges"

    models: dict[str, Recommender] = {}
    metrics: dict[str, dict] = {}

    def fit_and_evaluate(name: str, model: Recommender) -> None:
        with _Stage(log, f"fit {name}") as s:
            model.fit(data, graph)
            s.detail = f"final loss {model.loss_history_[-1]:.4f}" if model.loss_history_ else ""
        with _Stage(log, f"evaluate {name}") as e:
            metrics[name] = _evaluate_both(model, data)
            e.detail = f"valid {_fmt(metrics[name]['valid'])} | test {_fmt(metrics[name]['test'])}"
        metrics[name]["fit_seconds"] = round(s.seconds, 2)
        models[name] = model

    fit_and_evaluate("popularity", PopularityRecommender(device=cfg.device))
    fit_and_evaluate("lightgcn", LightGCNRecommender(**dataclasses.asdict(lg), device=cfg.device))
    item_init = models["lightgcn"].item_embeddings() if cfg.init_sasrec_from_graph else None
    fit_and_evaluate("sasrec", SASRecRecommender(**dataclasses.asdict(sr), item_init=item_init, device=cfg.device))

    # The reranker learns on the validation split, over SASRec's candidates (exactly what serving retrieves).
    rc = cfg.rerank
    with _Stage(log, "fit rerank") as s:
        reranker = fit_reranker(models["sasrec"], data, rc.num_candidates, rc.epochs, rc.lr, rc.seed, log=log)
    with _Stage(log, "evaluate rerank") as e:
        metrics["sasrec+rerank"] = {
            split: evaluate_reranked(models["sasrec"], reranker, data, num_candidates=rc.num_candidates, split=split)
            for split in ("valid", "test")}
        metrics["sasrec+rerank"]["fit_seconds"] = round(s.seconds, 2)
        e.detail = (f"valid {_fmt(metrics['sasrec+rerank']['valid'])} | "
                    f"test {_fmt(metrics['sasrec+rerank']['test'])}")

    with _Stage(log, "write") as s:
        with new_version(tenant, "models", root) as v:
            for name, model in models.items():
                model.save(v.tmp / MODEL_FILES[name])
            reranker.save(v.tmp / RERANK_FILE)
            atomic_write_json(v.tmp / "config.json", dataclasses.asdict(cfg))
            atomic_write_json(v.tmp / "metrics.json", metrics)
            atomic_write_text(v.tmp / "etl_version.txt", f"{etl_dir}\n")
        s.detail = str(v.path)
    log(f"[train] tenant={tenant} done in {time.perf_counter() - t_all:.1f}s -> {v.path}")
    return TrainResult(v.path, metrics)


def evaluate_models(tenant: str, root: Path | None = None, k: int = 10, log=print) -> dict:
    """Re-evaluate the latest saved models on the ETL version they were trained on: {model: {valid, test}}."""
    model_dir = latest_version(tenant, "models", root)
    etl_dir = Path((model_dir / "etl_version.txt").read_text().strip())
    if not etl_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} was trained on {etl_dir}, which no longer exists")
    data = InteractionData.load(etl_dir)
    out: dict[str, dict] = {}
    for name, filename in MODEL_FILES.items():
        path = model_dir / filename
        if not path.exists():
            continue
        with _Stage(log, f"evaluate {name}") as s:
            model = Recommender.load(path)      # "auto": wherever this machine can run it
            out[name] = {split: evaluate(model, data, split, k=k) for split in ("valid", "test")}
            s.detail = f"valid {_fmt(out[name]['valid'])} | test {_fmt(out[name]['test'])}"
    if (model_dir / RERANK_FILE).exists() and (model_dir / MODEL_FILES["sasrec"]).exists():
        cfg = json.loads((model_dir / "config.json").read_text())
        n = cfg.get("rerank", {}).get("num_candidates", 100)
        with _Stage(log, "evaluate sasrec+rerank") as s:
            sasrec, reranker = Recommender.load(model_dir / MODEL_FILES["sasrec"]), FeatureReranker.load(
                model_dir / RERANK_FILE)
            # The valid split is in-sample for the reranker (it was fitted there); test is the honest number.
            out["sasrec+rerank"] = {split: evaluate_reranked(sasrec, reranker, data, k=k, num_candidates=n,
                                                             split=split) for split in ("valid", "test")}
            s.detail = f"test {_fmt(out['sasrec+rerank']['test'])}"
    return out
