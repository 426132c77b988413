"""Settings as dataclasses. Paths are overridable by environment variables and CLI flags."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Tenant ids become directory names and Triton request fields, so keep them to a safe alphabet.
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def validate_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):   # fullmatch: `$` admits a trailing newline
        raise ValueError(
            f"invalid tenant id {tenant!r}: use 1-64 characters from [A-Za-z0-9_-], starting with a letter or digit"
        )
    return tenant


def datasets_dir() -> Path:
    """The first place real public data sets are looked for: $TAPESTRY_DATASETS, else ../shared/datasets beside the
    project. Readers of a named data set search every root of dataset_roots() (tapestry.etl.datasets.locate)."""
    env = os.environ.get("TAPESTRY_DATASETS")
    return Path(env) if env else shared_datasets_dir()


def shared_datasets_dir() -> Path:
    return PROJECT_ROOT.parent / "shared" / "datasets"


def datasets_cache_dir() -> Path:
    """Where `tapestry datasets fetch` puts downloads: $TAPESTRY_DATASETS_CACHE, else
    $XDG_DATA_HOME/tapestry/datasets (default ~/.local/share/tapestry/datasets)."""
    env = os.environ.get("TAPESTRY_DATASETS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "tapestry" / "datasets"


def dataset_roots() -> list[Path]:
    """Where a named data set is looked for, in order: $TAPESTRY_DATASETS, ../shared/datasets, the fetch cache.
    (An explicit path, e.g. `tapestry etl --data-dir`, comes before all of them.)"""
    env = os.environ.get("TAPESTRY_DATASETS")
    roots = [Path(env)] if env else []
    for root in (shared_datasets_dir(), datasets_cache_dir()):
        if root not in roots:
            roots.append(root)
    return roots


def artifacts_root() -> Path:
    """Root of all per-tenant artifacts: $TAPESTRY_HOME, else ./artifacts under the project."""
    env = os.environ.get("TAPESTRY_HOME")
    return Path(env) if env else (PROJECT_ROOT / "artifacts")


# Default event vocabulary. Anything else is quarantined as `unknown_event_type` unless the tenant extends it.
DEFAULT_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "like", "play", "search")


@dataclass
class ETLConfig:
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    # Timestamps (unix seconds) outside this window are quarantined: catches ms-vs-s mixups and zeros.
    min_timestamp: int = 631152000      # 1990-01-01
    max_timestamp: int = 4102444800     # 2100-01-01
    # Users with fewer events cannot give a leave-one-out split (train needs >= 1 after taking valid + test).
    min_user_events: int = 3
    # Declared context columns of the event table (device, location, campaign, ...): kept through the ETL, each a
    # node type of the typed graph (tapestry.graph.typed). Values follow the id policy; a column missing from the
    # input is a SchemaError. Undeclared extra columns are ignored, as before.
    context_columns: tuple[str, ...] = ()
    # Optional closed vocabularies per context column: any other value is quarantined (`unknown_context_value`).
    context_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Polars engine of the ETL's queries: "auto" (the GPU engine, cudf-polars, when CUDA and the package are present;
    # else the CPU), "cpu" or "gpu" (an error without them). See tapestry/etl/engines.py.
    polars_engine: str = "auto"
    # Catalogue items WITHOUT events (rows of the item table only) get item ids after the items with events
    # (items.parquet: has_events False), so every model's item table, the export's FAISS index and the served item
    # list hold them: a brand-new item can be retrieved from its content (tapestry.etl.catalogue). Off: unchanged.
    cold_items: bool = False


@dataclass
class RerankConfig:
    num_candidates: int = 100
    epochs: int = 30
    lr: float = 0.05
    seed: int = 0


# The default `tapestry train` line-up, in training order (a model may read one trained before it). Names are
# tapestry.training.registry entries. The two retrievers compete: `serve="auto"` exports the one with the best
# VALIDATION NDCG@k (on ML-1M the two-tower, 0.1887 vs sasrec_lightgcn's 0.1705: benchmarks/results/
# leaderboard-ml-1m.json), so the default serves the best path it trained, never a cheaper demo model.
# sasrec_lightgcn is the best SASRec variant on ML-1M's validation split (0.1746 vs SASRec-random 0.1686 and
# LightGCN-init 0.1687; benchmarks/results/ablation-ml-1m.json). srgnn_shared encodes anonymous sessions over
# sasrec_lightgcn's item table (the same FAISS index) when sasrec_lightgcn is served.
DEFAULT_MODELS = ("popularity", "lightgcn", "sasrec_lightgcn", "two_tower", "srgnn_shared")
SMOKE_SERVE = "sasrec_lightgcn"   # smoke runs (tests, --quick) serve a fixed model: tiny fits choose at random


@dataclass
class TrainConfig:
    models: tuple[str, ...] = DEFAULT_MODELS
    params: dict[str, dict] = field(default_factory=dict)   # per-model hyper-parameter overrides, by name
    # The retriever whose user encoder and item table are exported: a registry name, or "auto": the line-up's
    # servable retriever with the best validation NDCG@k (tapestry.training.pipeline.choose_served).
    serve: str = "auto"
    # The anonymous-session encoder exported beside it (SR-GNN over the served item table). "auto": the line-up's
    # model whose item_table_from is `serve`, if any; "": none (sessions are encoded by the served model).
    session: str = "auto"
    rerank: RerankConfig = field(default_factory=RerankConfig)
    quick: bool = False           # smoke-sized: every stage runs for real in seconds (tests, `--quick`)
    device: str = "auto"          # "auto" picks CUDA when present, else CPU: the same code path either way
    # Processes per model fit: >1 runs each gradient-trained model under torchrun, data-parallel (DDP; the same global
    # batch split over the processes: tapestry.training.data_parallel), the dlrm with TorchRec-sharded tables.
    distributed: int = 1

    @classmethod
    def smoke(cls, **kwargs) -> "TrainConfig":
        """Smoke-sized (`tapestry train --quick`): quality is not the point."""
        kwargs.setdefault("serve", SMOKE_SERVE if SMOKE_SERVE in kwargs.get("models", DEFAULT_MODELS) else "auto")
        return cls(quick=True, rerank=RerankConfig(num_candidates=30, epochs=2), **kwargs)


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
