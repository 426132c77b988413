"""`tapestry train` / `tapestry evaluate`: latest ETL version -> graph -> models -> versioned models directory.

Which models train, in which order and with which hyper-parameters comes from TrainConfig (`models`, `params`)
and tapestry.training.registry; nothing here names a model class. A model may read models trained before it
(`Recommender.bind`), e.g. SASRec fused with LightGCN's or HGT's item vectors. The reranker is then fitted on
the validation split over the candidates of `cfg.serve` (the retriever the export serves; "auto", the default:
the line-up's retriever with the best validation NDCG@k, recorded in config.json's "serve_choice").

Output `<root>/<tenant>/models/vNNNN/` (written atomically via new_version):
    <name>.pt           Recommender.save files, one per trained model (load any with Recommender.load)
    rerank.npz          FeatureReranker.save (weights + feature tables)
    config.json         dataclasses.asdict(TrainConfig) + "resolved": every model's full hyper-parameters
    metrics.json        {model: {"valid", "test", "slices": {cold_items, cold_users}, "fit_seconds", "loss_history",
                        "graph" (graph models: {"edge_types", "relations"} they trained over),
                        "processes" (data-parallel fits, `distributed` > 1),
                        "best_epoch", "valid_history" (models that stop early on validation)}}
    etl_version.txt     the ETL version directory trained on
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
from tapestry.graph.typed import relations_record
from tapestry.training import data_parallel, registry
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate, evaluate_slices, is_multi_target
from tapestry.training.rerank_fit import evaluate_reranked, fit_reranker
from tapestry.inference.feature_reranker import FeatureReranker
from tapestry.timing import Stage

RERANK_FILE = "rerank.npz"


@dataclass
class TrainResult:
    path: Path          # the models/vNNNN directory
    metrics: dict       # as in metrics.json


def _fmt(m: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items() if k not in ("num_users", "num_candidates"))


def metric_k(data: InteractionData) -> int:
    """The cut-off of the data set's standard protocol: @20 for multi-target splits (Gowalla), else @10."""
    return 20 if is_multi_target(data, "test") else 10


def _evaluate_model(model: Recommender, data: InteractionData, k: int) -> dict:
    slices = evaluate_slices(model, data, "test", k=k)
    return {"valid": evaluate(model, data, "valid", k=k), "test": slices.pop("overall"), "slices": slices}


def _check_config(cfg: TrainConfig) -> None:
    """Fail before minutes of training, not after: unknown names, wrong order, a served model that is absent."""
    for name in cfg.models:
        registry.get(name)
    for name in cfg.params:
        if name not in cfg.models:
            raise ValueError(f"params given for {name!r}, which is not in models {list(cfg.models)}")
    if cfg.distributed > 1:
        kinds = {m: registry.get(m).recommender_class().parallelism for m in cfg.models}
        # Closed-form models (popularity, graph_filter) fit once in this process, said in the log.
        if not any(k in ("data", "model") for k in kinds.values()):
            raise ValueError(f"distributed={cfg.distributed}: nothing in models {list(cfg.models)} trains across "
                             "processes (e.g. lightgcn, sasrec, two_tower data-parallel; the dlrm ranker sharded)")
    if cfg.serve == "auto":
        if not _auto_candidates(cfg):
            raise ValueError(f"serve='auto' chooses among the line-up's retrievers, and models {list(cfg.models)} "
                             "has none: add one (e.g. sasrec_lightgcn, two_tower) or pass serve=''")
    elif cfg.serve and cfg.serve not in cfg.models:
        raise ValueError(f"serve={cfg.serve!r} is not among the trained models {list(cfg.models)}")
    if cfg.session not in ("", "auto") and cfg.session not in cfg.models:
        raise ValueError(f"session={cfg.session!r} is not among the trained models {list(cfg.models)}")
    if cfg.serve != "auto":
        _check_session(cfg)
    for i, name in enumerate(cfg.models):
        model = registry.build(name, cfg.params.get(name), quick=cfg.quick, device="cpu")
        c = model.cfg
        for source in registry.upstream_names(name, c):
            if source not in cfg.models[:i]:
                raise ValueError(f"{name} reads {source!r}, which must come before it in models {list(cfg.models)}")
        if getattr(c, "item_init_from", None):
            width = registry.build(c.item_init_from, cfg.params.get(c.item_init_from), quick=cfg.quick,
                                   device="cpu").cfg.embedding_dim
            if width != c.hidden_dim:
                raise ValueError(f"{name}: item_init_from={c.item_init_from!r} needs its embedding_dim ({width}) "
                                 f"== hidden_dim ({c.hidden_dim})")


def _check_session(cfg: TrainConfig) -> None:
    if cfg.session not in ("", "auto") and _table_source(cfg, cfg.session) != cfg.serve:
        raise ValueError(f"session={cfg.session!r} must score against the served model's item table "
                         f"(item_table_from={cfg.serve!r}), it has "
                         f"item_table_from={_table_source(cfg, cfg.session)!r}")


def _auto_candidates(cfg: TrainConfig) -> list[str]:
    """The retrievers serve="auto" chooses among: the export serves a retriever's user encoder, which reads
    histories only (a two-tower with user attributes would answer differently than evaluated: never chosen)."""
    return [m for m in cfg.models if registry.get(m).role == "retriever" and not getattr(
        registry.build(m, cfg.params.get(m), quick=cfg.quick, device="cpu").cfg, "use_user_attrs", False)]


def choose_served(cfg: TrainConfig, metrics: dict, k: int) -> tuple[str, dict]:
    """serve="auto": the candidate retriever with the best validation NDCG@k (ties: the earlier in the line-up);
    without a validation split (a fixed train/test split) the line-up's last retriever, since choosing on test
    would report a tuned number. Returns (name, the record of the choice for config.json)."""
    candidates = _auto_candidates(cfg)
    key = f"ndcg@{k}"
    scores = {m: metrics[m]["valid"].get(key) for m in candidates}
    if all(v is not None and v == v for v in scores.values()) and metrics[candidates[0]]["valid"].get("num_users"):
        chosen = max(candidates, key=lambda m: (scores[m], -candidates.index(m)))
        return chosen, {"chosen_on": f"validation {key}", "scores": {m: round(v, 6) for m, v in scores.items()}}
    return candidates[-1], {"chosen_on": "line-up order (no validation split)", "scores": {}}


def _table_source(cfg: TrainConfig, name: str) -> str | None:
    return getattr(registry.build(name, cfg.params.get(name), quick=cfg.quick, device="cpu").cfg, "item_table_from", None)


def resolve_session(cfg: TrainConfig) -> TrainConfig:
    """session="auto" -> the line-up's model over the served item table (srgnn_shared by default), or ""."""
    if cfg.session != "auto" or cfg.serve == "auto":   # auto: resolved once the served model is chosen
        return cfg
    found = [m for m in cfg.models if cfg.serve and _table_source(cfg, m) == cfg.serve]
    return dataclasses.replace(cfg, session=found[-1] if found else "")


def run_train(tenant: str, root: Path | None = None, cfg: TrainConfig | None = None, log=print) -> TrainResult:
    validate_tenant(tenant)
    cfg = resolve_session(cfg or TrainConfig())
    _check_config(cfg)
    t_all = time.perf_counter()
    etl_dir = latest_version(tenant, "etl", root)

    with Stage(log, "load") as s:
        data = InteractionData.load(etl_dir)
        s.detail = (f"{etl_dir} ({data.num_users - 1:,} users, {data.num_items - 1:,} items, "
                    f"{data.train.height:,} train events)")
    with Stage(log, "graph") as s:
        graph = build_hetero_graph(data)
        s.detail = f"{sum(graph[nt].num_nodes for nt in graph.node_types):,} nodes, {graph.num_edges:,} edges"
    k = metric_k(data)

    models: dict[str, Recommender] = {}
    metrics: dict[str, dict] = {}
    for name in cfg.models:
        model = registry.build(name, cfg.params.get(name), quick=cfg.quick, device=cfg.device)
        if hasattr(model, "processes"):
            model.processes = cfg.distributed     # models with shardable tables train under torchrun
        model.bind(models)
        with Stage(log, f"fit {name}") as s:
            if cfg.distributed > 1 and model.parallelism == "data":
                data_parallel.fit(model, data, graph, cfg.distributed)   # DDP under torchrun; state comes back
            else:
                if cfg.distributed > 1 and model.parallelism == "single":
                    log(f"[train] {name}: no multi-process path, fits in one process")
                model.fit(data, graph)
            s.detail = f"final loss {model.loss_history_[-1]:.4f}" if model.loss_history_ else ""
            if getattr(model, "valid_history_", None):
                s.detail += f", kept epoch {model.best_epoch_} of {len(model.loss_history_)} (validation)"
        with Stage(log, f"evaluate {name}") as e:
            metrics[name] = _evaluate_model(model, data, k)
            e.detail = f"valid {_fmt(metrics[name]['valid'])} | test {_fmt(metrics[name]['test'])}"
        metrics[name]["fit_seconds"] = round(s.seconds, 2)
        if getattr(model, "relations_", None):   # graph models: the relations they trained over
            metrics[name]["graph"] = relations_record(model.relations_)
        if getattr(model, "processes_", 1) > 1:
            metrics[name]["processes"] = model.processes_       # trained data-parallel on this many processes
        metrics[name]["loss_history"] = [round(float(x), 6) for x in model.loss_history_]   # the report's curves
        if hasattr(model, "best_epoch_"):      # early stopping: the epoch kept and the validation curve
            metrics[name]["best_epoch"] = int(model.best_epoch_)
            metrics[name]["valid_history"] = list(model.valid_history_)
        models[name] = model

    serve_choice = None
    if cfg.serve == "auto":
        chosen, serve_choice = choose_served(cfg, metrics, k)
        cfg = resolve_session(dataclasses.replace(cfg, serve=chosen))
        _check_session(cfg)
        scores = ", ".join(f"{m} {v:.4f}" for m, v in serve_choice["scores"].items())
        log(f"[train] serve {chosen} (chosen on {serve_choice['chosen_on']}{': ' + scores if scores else ''}); "
            f"session encoder {cfg.session or 'none (the served model encodes sessions)'}")

    reranker = None
    if cfg.serve and data.valid.height == 0:
        log("[train] rerank: skipped (no validation split to fit it on, e.g. a fixed train/test split)")
    elif cfg.serve:
        # The reranker learns on the validation split, over the served model's candidates (what serving retrieves).
        rc, served = cfg.rerank, models[cfg.serve]
        with Stage(log, "fit rerank") as s:
            reranker = fit_reranker(served, data, rc.num_candidates, rc.epochs, rc.lr, rc.seed, log=log)
        name = f"{cfg.serve}+rerank"
        with Stage(log, "evaluate rerank") as e:
            metrics[name] = {split: evaluate_reranked(served, reranker, data, k=k, num_candidates=rc.num_candidates,
                                                      split=split) for split in ("valid", "test")}
            metrics[name]["fit_seconds"] = round(s.seconds, 2)
            e.detail = f"valid {_fmt(metrics[name]['valid'])} | test {_fmt(metrics[name]['test'])}"

    with Stage(log, "write") as s:
        with new_version(tenant, "models", root) as v:
            for name, model in models.items():
                model.save(v.tmp / registry.get(name).filename)
            if reranker is not None:
                reranker.save(v.tmp / RERANK_FILE)
            resolved = {name: model._init_kwargs() for name, model in models.items()}
            atomic_write_json(v.tmp / "config.json", {**dataclasses.asdict(cfg), "resolved": resolved,
                                                      **({"serve_choice": serve_choice} if serve_choice else {})})
            atomic_write_json(v.tmp / "metrics.json", metrics)
            atomic_write_text(v.tmp / "etl_version.txt", f"{etl_dir}\n")
        s.detail = str(v.path)
    log(f"[train] tenant={tenant} done in {time.perf_counter() - t_all:.1f}s -> {v.path}")
    return TrainResult(v.path, metrics)


def item_vector_graphs(served: str, train_cfg: dict, metrics: dict) -> dict:
    """The graphs behind the served model's item vectors: {upstream model: {"via": config field, "edge_types",
    "relations"}} for each graph model it reads (graph_from, item_init_from) that recorded its relations in
    metrics.json; {} when it reads none. The export manifest's "item_vector_graphs"."""
    resolved = train_cfg.get("resolved", {}).get(served, {})
    out = {}
    for field in ("graph_from", "item_init_from"):
        source = resolved.get(field)
        if source and "graph" in metrics.get(source, {}):
            out[source] = {"via": field, **metrics[source]["graph"]}
    return out


def trained_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def evaluate_models(tenant: str, root: Path | None = None, log=print) -> dict:
    """Re-evaluate the latest saved models on the ETL version they were trained on (same shape as metrics.json,
    without fit times)."""
    model_dir = latest_version(tenant, "models", root)
    etl_dir = Path((model_dir / "etl_version.txt").read_text().strip())
    if not etl_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} was trained on {etl_dir}, which no longer exists")
    data = InteractionData.load(etl_dir)
    cfg = trained_config(model_dir)
    k = metric_k(data)
    out: dict[str, dict] = {}
    loaded: dict[str, Recommender] = {}
    for name in cfg["models"]:
        path = model_dir / registry.get(name).filename
        with Stage(log, f"evaluate {name}") as s:
            model = Recommender.load(path)      # "auto": wherever this machine can run it
            model.bind(loaded)                  # a ranker scores its retriever's candidates
            loaded[name] = model
            out[name] = _evaluate_model(model, data, k)
            s.detail = f"valid {_fmt(out[name]['valid'])} | test {_fmt(out[name]['test'])}"
    served = cfg.get("serve")
    if served and (model_dir / RERANK_FILE).exists():
        n = cfg.get("rerank", {}).get("num_candidates", 100)
        with Stage(log, f"evaluate {served}+rerank") as s:
            model, reranker = Recommender.load(model_dir / registry.get(served).filename), FeatureReranker.load(
                model_dir / RERANK_FILE)
            # The valid split is in-sample for the reranker (it was fitted there); test is the honest number.
            out[f"{served}+rerank"] = {split: evaluate_reranked(model, reranker, data, k=k, num_candidates=n,
                                                                split=split) for split in ("valid", "test")}
            s.detail = f"test {_fmt(out[f'{served}+rerank']['test'])}"
    return out
