"""`tapestry export`: the latest trained models -> <root>/<tenant>/export/vNNNN/{model_repository, artifacts}.

model_repository/ is a copy of the templates in triton_models/ (their ARTIFACT_DIR parameter points at
../artifacts); artifacts/ holds what the stages read: users.parquet (online features: full time-ordered history
and attribute indices), items.parquet, user_encoder.pt (the served sequential encoder: one or K interest vectors
per user), session_encoder.pt (SR-GNN for anonymous sessions, when the run trained one), items.faiss, popularity.npy, rerank.npz, manifest.json, and
dlrm_ranker.pt when the run trained a DLRM ranker on the served model's candidates: then the rerank stage uses it
instead of the feature reranker (manifest "reranker": "dlrm" or "feature"), and fusion_ranker.pt when the run trained
a fusion reranker on them AND it beats the feature reranker and the DLRM (if any) on validation NDCG (metrics.json;
`choose_ranker`; the manifest's "reranker_choice" records the numbers and the rule).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch

from tapestry.artifacts import atomic_write_json, latest_version, new_version
from tapestry.config import PROJECT_ROOT, validate_tenant
from tapestry.serving.batching import DEFAULT_MAX_BATCH_SIZE, set_max_batch_size
from tapestry.training.data import InteractionData
from tapestry.inference.feature_reranker import FeatureReranker

TEMPLATES = PROJECT_ROOT / "triton_models"
DEFAULT_MAX_K = 100


@dataclass
class ExportResult:
    path: Path

    @property
    def model_repository(self) -> Path:
        return self.path / "model_repository"

    @property
    def artifact_dir(self) -> Path:
        return self.path / "artifacts"


def _online_users(etl_dir: Path, user_attrs: np.ndarray, event_types: list[str] | None = None) -> pl.DataFrame:
    """Per known user: the full time-ordered item history (all splits: serving sees everything) and attrs; with
    `event_types` (a behaviour-aware served model's vocabulary) also `history_types`, each event's type index
    (name i is i + 1; 0: a type the model never saw), aligned with `history`."""
    events = pl.read_parquet(etl_dir / "events.parquet").with_row_index("_order")
    columns = [pl.col("item_idx").sort_by("timestamp", "_order").alias("history")]
    if event_types:
        index = {name: i + 1 for i, name in enumerate(event_types)}
        events = events.with_columns(pl.col("event_type").cast(pl.String)
                                     .replace_strict(index, default=0, return_dtype=pl.Int64).alias("_type"))
        columns.append(pl.col("_type").sort_by("timestamp", "_order").alias("history_types"))
    hist = events.group_by("user_idx").agg(columns)
    users = pl.read_parquet(etl_dir / "user_map.parquet").join(hist, on="user_idx", how="left")
    attrs = [np.flatnonzero(user_attrs[u]).tolist() if u < len(user_attrs) else []
             for u in users["user_idx"].to_list()]
    return users.with_columns(
        *(pl.col(c).fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
          for c in ("history", "history_types") if c in hist.columns),
        pl.Series("attrs", attrs, dtype=pl.List(pl.Int64)),
    )


def build_faiss_index(item_embeddings: np.ndarray) -> faiss.Index:
    """Exact inner-product index over items 1..n, with FAISS ids equal to item indices (row 0 is padding)."""
    from tapestry.serving.ann import IndexConfig, build_index

    return build_index(item_embeddings, IndexConfig(factory="Flat"))


def _tuned_index(encoder, item_emb: np.ndarray, data: InteractionData, index_cfg, k: int, log) -> tuple:
    """The configured FAISS index; an approximate one is tuned (nprobe / efSearch) to its target recall@k on the
    interest vectors of up to 500 real users. Returns (index, manifest entry)."""
    from tapestry.inference.padding import left_pad
    from tapestry.serving.ann import IndexConfig, build_index, get_params, resolve_factory, tune_index
    from tapestry.inference.encoders import interest_vectors

    cfg = index_cfg if isinstance(index_cfg, IndexConfig) else IndexConfig(factory=index_cfg)
    factory = resolve_factory(cfg.factory, item_emb.shape[0] - 1)
    index = build_index(item_emb, cfg)
    entry = {"factory": factory}
    if factory != "Flat":
        sample = [h for h in data.sequences(("train",)) if len(h)][:500]   # histories only when tuning
        with torch.no_grad():
            queries = interest_vectors(encoder, torch.from_numpy(left_pad(sample, encoder.max_len))).reshape(
                -1, item_emb.shape[1]).float().numpy()
        tuned = tune_index(index, item_emb, queries, target_recall=cfg.target_recall, k=k)
        entry.update(params=get_params(index), recall_at_k=round(tuned.recall, 4), k=k, reached=tuned.reached)
        log(f"[export] {factory}: {tuned.param}={tuned.value} gives recall@{k} {tuned.recall:.3f} vs exact"
            + ("" if tuned.reached else f" (target {cfg.target_recall} NOT reached)"))
    return index, entry


def _served_encoders(models_dir: Path, train_cfg: dict, served: str, session: str | None):
    """(user encoder module, session encoder module or None) of a trained run, checked against the contract."""
    from tapestry.inference.encoders import check_servable
    from tapestry.training import registry
    from tapestry.training.base import Recommender

    def module(name: str):
        if not registry.servable(name):
            choices = [m for m in train_cfg["models"] if registry.get(m).role == "retriever"]
            raise ValueError(f"{name} (role {registry.get(name).role}) cannot be served: the export serves a "
                             f"retriever's user encoder; this run trained {choices or 'none'}; choose one with "
                             "`--serve`")
        model = Recommender.load(models_dir / registry.get(name).filename, device="cpu")
        if getattr(model.cfg, "use_user_attrs", False):
            # The user encoder stage receives only the history: serving it would silently drop the attributes and
            # answer with vectors the model never produced offline.
            raise ValueError(f"{name} was trained with use_user_attrs=True; the served user encoder reads histories "
                             "only, so its answers would differ from the evaluated model. Train it with "
                             f"use_user_attrs=False to serve it, or serve another retriever (`--serve`)")
        m = model.serving_module()
        check_servable(m, name)
        return m

    encoder = module(served)
    if not session:
        return encoder, None
    if session not in train_cfg["models"]:
        raise ValueError(f"session encoder {session!r} was not trained in {models_dir}")
    session_encoder = module(session)
    # Anonymous sessions search the same FAISS index, so the session model must score against the served table.
    # (allclose: a table copied on a GPU and the same table recomputed on the CPU may differ in the last bits)
    if not torch.allclose(session_encoder.item_embeddings().detach().cpu(),
                          encoder.item_embeddings().detach().cpu(), rtol=1e-5, atol=1e-6):
        raise ValueError(f"session encoder {session!r} does not share {served!r}'s item table: train it with "
                         f"item_table_from={served!r} (registry entry srgnn_shared does so for sasrec_lightgcn)")
    return encoder, session_encoder


def _shared_event_types(encoder_types: list[str] | None, ranker_types: list[str] | None, served: str,
                        ranker: str) -> list[str] | None:
    """The one event-type vocabulary HISTORY_TYPES is written in: the user encoder's and/or the behaviour-aware
    ranker's (both are the training split's sorted types, so they agree unless trained on other data)."""
    if encoder_types and ranker_types and list(encoder_types) != list(ranker_types):
        raise ValueError(f"{served} reads event types {list(encoder_types)} but {ranker} reads "
                         f"{list(ranker_types)}: one request cannot carry both; retrain them on the same data")
    return list(encoder_types or ranker_types) if (encoder_types or ranker_types) else None


def choose_ranker(served: str, train_cfg: dict, metrics: dict, requested: str | None = None,
                  log=print) -> tuple[str | None, dict]:
    """(registry name of the ranker to serve, or None for the feature reranker; the manifest's record of why).

    A ranker class with `served_if_better` (the fusion reranker) is served only when its validation NDCG beats
    every other candidate's: the feature reranker on the served model and the other rankers over its candidates.
    Rankers without it (the DLRM) replace the feature reranker whenever the run trained them, as before. The
    numbers come from the run's metrics.json (the feature reranker's and the DLRM's "valid" rows are in-sample:
    both were fitted on those lists, so a fusion win is conservative). `requested` ("feature" or a ranker's
    registry name) overrides the rule."""
    from tapestry.training import registry

    rankers = registry.rankers_of(served, train_cfg["models"], train_cfg.get("resolved", {}))

    def valid(name: str):
        row = metrics.get(name, {}).get("valid", {})
        key = next((k for k in row if k.startswith("ndcg@")), None)
        return (key, float(row[key])) if key else (None, None)

    scores = {"feature": valid(f"{served}+rerank")[1], **{r: valid(r)[1] for r in rankers}}
    metric = next((valid(n)[0] for n in (f"{served}+rerank", *rankers) if valid(n)[0]), "ndcg@10")
    competing = [r for r in rankers if getattr(registry.get(r).recommender_class(), "served_if_better", False)]
    fixed = [r for r in rankers if r not in competing]
    if requested not in (None, "", "auto"):
        if requested != "feature" and requested not in rankers:
            raise ValueError(f"reranker {requested!r}: this run trained no such ranker over {served!r}'s candidates "
                             f"(trained: {rankers or 'none'}; 'feature' is always available)")
        chosen, rule = (None if requested == "feature" else requested), "requested"
    else:
        chosen, rule = (fixed[-1] if fixed else None), "default"
        for r in competing:
            others = [v for n, v in scores.items() if n != r]
            if scores[r] is not None and all(v is None or scores[r] > v for v in others):
                chosen, rule = r, f"best validation {metric}"
    record = {"metric": f"valid {metric}", "scores": scores, "chosen": chosen or "feature", "rule": rule}
    if rankers or rule == "requested":
        shown = ", ".join(f"{n} {v:.4f}" if v is not None else f"{n} n/a" for n, v in scores.items())
        log(f"[export] reranker: {chosen or 'feature'} ({rule}; valid {metric}: {shown})")
    return chosen, record


def cold_items_entry(items: pl.DataFrame, served: str, log=print) -> dict | None:
    """The manifest's note on catalogue items without events (ETLConfig.cold_items), None when there are none.
    They are in the FAISS index whatever the served retriever; only one whose registry entry says
    `retrieves_cold_items` (content_history) gives them vectors from their content. For any other their rows are
    untrained: served, they are noise in the candidates, so the export says so loudly (not refused: the items stay
    valid ids for rules, filters and a later content-aware export)."""
    from tapestry.etl.catalogue import HAS_EVENTS
    from tapestry.training import registry

    if HAS_EVENTS not in items.columns:
        return None
    count = int((~items[HAS_EVENTS]).sum())
    if count == 0:
        return None
    retrievable = served in registry.MODELS and registry.get(served).retrieves_cold_items
    if not retrievable:
        content = [n for n, s in registry.MODELS.items() if s.retrieves_cold_items]
        log(f"[export] WARNING: {count:,} catalogue items have no events and {served} has no content vectors for "
            f"them: they are in the FAISS index with untrained rows and cannot be retrieved on merit. Serve a "
            f"content-aware retriever ({', '.join(content)}) to retrieve them, or run the ETL without --cold-items.")
    return {"count": count, "retrievable": bool(retrievable)}


def run_export(tenant: str, root: Path | None = None, max_k: int = DEFAULT_MAX_K, num_candidates: int | None = None,
               serve: str | None = None, index="auto", max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
               log=print, use_ranker: str | None = None, tier: str | None = None,
               rules=None, sources=None) -> ExportResult:
    """Export the latest trained run. `serve` overrides the run's served model (any trained sequential encoder);
    the feature reranker stays the one fitted on the run's own served model. `index`: a FAISS factory string or
    tapestry.serving.ann.IndexConfig ("auto": exact below 50k items, else IVF + SQ8 with an exact re-score).
    `max_batch_size`: Triton's dynamic batching (users per request and per batch; 0: off, one user per request,
    tensors without a batch dimension). `use_ranker`: "feature" or a trained ranker's registry name; default: the
    rule of `choose_ranker`. `tier`: the serving tier (tapestry.serving.tiers; default: the richest this export
    can serve). `rules`: the tenant's business rules (a rules.json path or a tapestry.serving.rules.Rules),
    checked against the items and written as artifacts/rules.json (tapestry.serving.rules). `sources`: extra
    candidate sources ("two_tower,graph_filter": trained models of the run) merged into retrieval
    (tapestry.ensembles.sources, tapestry.serving.multi_source); default none: single-source retrieval."""
    from tapestry.inference.encoders import save_encoder, interest_vectors
    from tapestry.serving.tiers import TIERS, apply_tier, check_tier

    if tier is not None and tier not in TIERS:   # before any work
        check_tier(tier, "feature")

    validate_tenant(tenant)
    if not (TEMPLATES / "recommend" / "config.pbtxt").exists():
        # The templates live in the source tree (triton_models/); a non-editable install does not carry them.
        raise FileNotFoundError(f"Triton model templates not found under {TEMPLATES}: install tapestry from its "
                                "source checkout (`pip install -e .`, as `make install` does)")
    t0 = time.perf_counter()
    models_dir = latest_version(tenant, "models", root)
    etl_dir = Path((models_dir / "etl_version.txt").read_text().strip())
    data = InteractionData.load(etl_dir)
    train_cfg = json.loads((models_dir / "config.json").read_text())
    run_served = train_cfg.get("serve")
    if not run_served or not (models_dir / "rerank.npz").exists():
        raise ValueError(f"{models_dir} has no served model and reranker (trained with serve={run_served!r} on a "
                         "split without validation?): nothing to export")
    served = serve or run_served
    if served not in train_cfg["models"]:
        raise ValueError(f"serve={served!r} was not trained in {models_dir} (trained: {train_cfg['models']})")
    # The session encoder belongs to the run's served model (it shares that model's item table).
    session = train_cfg.get("session") if served == run_served else None
    encoder, session_encoder = _served_encoders(models_dir, train_cfg, served, session)
    from tapestry.ensembles.sources import check_sources, export_sources, parse_sources

    source_names = parse_sources(sources)
    check_sources(source_names, served, train_cfg)   # before any work is written
    from tapestry.inference.encoders import event_vocabulary

    event_types = event_vocabulary(encoder)   # a behaviour-aware encoder's vocabulary, else None
    reranker = FeatureReranker.load(models_dir / "rerank.npz")
    item_emb = encoder.item_embeddings().detach().cpu().float().numpy()
    with torch.no_grad():
        num_interests = int(interest_vectors(encoder, torch.ones(1, 1, dtype=torch.long)).shape[1])

    all_events = pl.read_parquet(etl_dir / "events.parquet")
    popularity = np.zeros(data.num_items, dtype=np.float32)
    vc = all_events.group_by("item_idx").len()
    popularity[vc["item_idx"].to_numpy()] = vc["len"].to_numpy()

    # A ranker trained on the served model's candidates (the registry's role and upstream say which) replaces the
    # feature reranker by `choose_ranker`'s rule; its file is the inference state, however it was trained.
    from tapestry.training import registry
    from tapestry.training.base import Recommender
    from tapestry.training.pipeline import item_vector_graphs

    metrics_file = models_dir / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    ranker_name, choice = choose_ranker(served, train_cfg, run_metrics, use_ranker, log)
    ranker, ranker_kind = None, "feature"
    if ranker_name:
        trained = Recommender.load(models_dir / registry.get(ranker_name).filename, device="cpu")
        ranker, ranker_kind = trained.ranker, getattr(type(trained), "reranker_kind", "dlrm")
        num_candidates = num_candidates or trained.cfg.num_candidates   # the list length it was trained on
        event_types = _shared_event_types(event_types, getattr(ranker, "event_types", None), served, ranker_name)

    num_candidates = num_candidates or train_cfg.get("rerank", {}).get("num_candidates", 100)
    # What explanations and rules read (tapestry.serving.item_facts); rules are checked against it before writing.
    from tapestry.serving.item_facts import ITEM_FACTS_FILE, ItemFacts
    from tapestry.serving.rules import RULES_FILE, RuleRanker, Rules

    entities_file = etl_dir / "item_entities.parquet"
    facts = ItemFacts.build(item_emb, pl.read_parquet(entities_file) if entities_file.exists() else None,
                            all_events, data.num_items)
    if rules is not None and not isinstance(rules, Rules):
        rules = Rules.load(rules)
    if rules is not None:
        RuleRanker(rules, facts, [""] * data.num_items)
    tier = check_tier(tier, ranker_kind)   # `full` without a DLRM / fusion reranker: refused before writing
    cold = cold_items_entry(data.items, served, log)

    with new_version(tenant, "export", root) as v:
        art = v.tmp / "artifacts"
        art.mkdir()
        _online_users(etl_dir, reranker.tables.user_attrs, event_types).write_parquet(art / "users.parquet")
        data.items.write_parquet(art / "items.parquet")
        save_encoder(encoder, art / "user_encoder.pt")
        if session_encoder is not None:
            save_encoder(session_encoder, art / "session_encoder.pt")
        from tapestry.serving.ann import save_index

        faiss_index, index_entry = _tuned_index(encoder, item_emb, data, index, num_candidates, log)
        save_index(faiss_index, art / "items.faiss")
        np.save(art / "popularity.npy", popularity)
        source_entries = export_sources(
            source_names, served, item_emb, models_dir, art,
            lambda module, emb: _tuned_index(module, emb, data, index, num_candidates, log)[0],
            log=log) if source_names else None
        facts.save(art / ITEM_FACTS_FILE)
        if rules is not None and rules.active:
            rules.save(art / RULES_FILE)
        shutil.copy2(models_dir / "rerank.npz", art / "rerank.npz")
        if ranker is not None:
            from tapestry.inference.rerankers import reranker_kind

            ranker.save(art / reranker_kind(ranker_kind).filename)
        atomic_write_json(art / "manifest.json", {
            "tenant": tenant,
            "models_version": str(models_dir),
            "served_model": served,
            "user_encoder": "user_encoder.pt",
            "num_interests": num_interests,
            # A behaviour-aware encoder / fusion ranker: its event types (name i is HISTORY_TYPES index i + 1).
            "event_types": event_types,
            "session_model": session or None,
            "session_encoder": "session_encoder.pt" if session_encoder is not None else None,
            "etl_version": str(etl_dir),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "max_len": int(encoder.max_len),
            "embedding_dim": int(item_emb.shape[1]),
            "num_items": int(data.num_items),
            "num_users": int(data.num_users),
            "num_user_attrs": int(reranker.tables.user_attrs.shape[1]),
            "num_candidates": int(num_candidates),
            "index": index_entry,
            "max_k": int(max_k),
            "max_batch_size": int(max_batch_size),
            "reranker": ranker_kind,
            "ranker_model": ranker_name,
            "reranker_choice": choice,
            "tier": tier,
            **({"sources": source_entries} if source_entries else {}),
            # The typed relations (or default graph) behind the served item vectors (e.g. rsage's, typed graph).
            "item_vector_graphs": item_vector_graphs(served, train_cfg, run_metrics),
            **({"cold_items": cold} if cold else {}),
        })
        shutil.copytree(TEMPLATES, v.tmp / "model_repository",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if max_batch_size != DEFAULT_MAX_BATCH_SIZE:   # the templates are written for the default
            set_max_batch_size(v.tmp / "model_repository", max_batch_size)
        apply_tier(v.tmp / "model_repository", tier, ranker_kind)
        if source_entries:
            from tapestry.serving.multi_source import apply_sources

            apply_sources(v.tmp / "model_repository")
    log(f"[export] tenant={tenant} {v.path.name}: {data.num_items - 1:,} items in FAISS (dim {item_emb.shape[1]}), "
        f"{data.num_users - 1:,} users in the feature store ({time.perf_counter() - t0:.1f}s) -> {v.path}")
    return ExportResult(v.path)
