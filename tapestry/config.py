"""Settings as dataclasses. Paths are overridable by environment variables and CLI flags."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Tenant ids become directory names and Triton request fields, so keep them to a safe alphabet.
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def validate_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ValueError(
            f"invalid tenant id {tenant!r}: use 1-64 characters from [A-Za-z0-9_-], starting with a letter or digit"
        )
    return tenant


def datasets_dir() -> Path:
    """Where the real public data sets live: $TAPESTRY_DATASETS, else ../shared/datasets beside the project."""
    env = os.environ.get("TAPESTRY_DATASETS")
    return Path(env) if env else (PROJECT_ROOT.parent / "shared" / "datasets")


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


@dataclass
class LightGCNConfig:
    # Defaults tuned for the demo budget (ML-1M users 1-2999, 2 CPU cores): ~45 s. One full-graph propagation
    # per batch, so fewer, larger batches with a higher lr beat the paper's 2048 / 1e-3 within minutes.
    embedding_dim: int = 64
    num_layers: int = 2
    epochs: int = 20
    batch_size: int = 8192
    lr: float = 2e-2
    weight_decay: float = 1e-4        # BPR L2 on the batch's layer-0 embeddings
    seed: int = 0


@dataclass
class SASRecConfig:
    hidden_dim: int = 64          # must equal LightGCN's embedding_dim to initialise from it
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 100            # 200 costs 1.7x per epoch on ML-1M for no gain per minute of training
    dropout: float = 0.2
    epochs: int = 26              # ~8 s/epoch on ML-1M (2 CPU cores) with the full softmax
    batch_size: int = 128
    lr: float = 4e-3              # full-softmax CE tolerates a higher lr than the paper's 1e-3 (BCE)
    seed: int = 0


@dataclass
class RerankConfig:
    num_candidates: int = 100
    epochs: int = 30
    lr: float = 0.05
    seed: int = 0


@dataclass
class TrainConfig:
    lightgcn: LightGCNConfig = field(default_factory=LightGCNConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    init_sasrec_from_graph: bool = True
    device: str = "auto"          # "auto" picks CUDA when present, else CPU: the same code path either way

    @classmethod
    def quick(cls) -> "TrainConfig":
        """Smoke-sized: every stage runs for real in seconds; quality is not the point (tests, `--quick`)."""
        return cls(
            lightgcn=LightGCNConfig(embedding_dim=16, num_layers=1, epochs=1, batch_size=8192),
            sasrec=SASRecConfig(hidden_dim=16, num_blocks=1, num_heads=1, max_len=20, epochs=1, batch_size=256),
            rerank=RerankConfig(num_candidates=30, epochs=2),
        )


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
