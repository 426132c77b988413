"""The global ("foundation") model: pre-trained on the opted-in tenants only, then fine-tuned per new tenant.

Layout: <root>/_global/foundation/vNNNN/{model.pt, manifest.json} (+ LATEST). `_global` is not a valid tenant id
(ids start with a letter or digit), so it can never collide with a tenant or be listed as one.

Opt-in is enforced where the data is read: `train_global` builds its input list from tapestry.tenant_settings.
opted_in_tenants and loads nothing else; the manifest records exactly which tenants (and ETL versions) went in.
Several tenants are merged into one training set with their user and item indices offset (tenant A's item 5 and
tenant B's item 5 stay different items); only content tokens (attribute names, hashed title words) are shared.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import polars as pl

from tapestry.artifacts import atomic_write_json, latest_version, new_version, read_json
from tapestry.config import artifacts_root
from tapestry.tenant_settings import opted_in_tenants
from tapestry.training.data import InteractionData
from tapestry.training.foundation import FoundationConfig, FoundationRecommender

GLOBAL_DIR = "_global"
GLOBAL_STAGE = "foundation"
COLD_START_STAGE = "cold_start"     # a tenant's fine-tuned models: <root>/<tenant>/cold_start/vNNNN


class _global_version(new_version):
    """new_version for the global model's directory (not a tenant's)."""

    def __init__(self, root: Path):
        self.stage_path = Path(root) / GLOBAL_DIR / GLOBAL_STAGE
        self.tmp = self.path = None


def global_dir(root: Path | None = None) -> Path:
    return Path(root or artifacts_root()) / GLOBAL_DIR / GLOBAL_STAGE


def merge_tenants(datas: list[InteractionData]) -> InteractionData:
    """One InteractionData over several tenants: user and item indices offset per tenant (index 0 stays the
    shared padding row), items and their attribute rows carried along."""
    if not datas:
        raise ValueError("no tenant data to merge")
    if len(datas) == 1:
        return datas[0]
    u_off = i_off = 0
    parts: dict[str, list[pl.DataFrame]] = {k: [] for k in ("train", "valid", "test", "items", "item_entities")}
    shift = lambda df, col, off: df.with_columns(pl.col(col) + off)  # noqa: E731
    for d in datas:
        for split in ("train", "valid", "test"):
            frame = getattr(d, split).select("user_idx", "item_idx", "event_type", "timestamp", "weight", "session_id")
            parts[split].append(shift(shift(frame, "user_idx", u_off), "item_idx", i_off))
        parts["items"].append(shift(d.items.select("item_idx", "item_id", "title"), "item_idx", i_off))
        parts["item_entities"].append(shift(d.item_entities.select("item_idx", "entity_type", "entity_value"),
                                            "item_idx", i_off))
        u_off, i_off = u_off + d.num_users - 1, i_off + d.num_items - 1
    cat = {k: pl.concat(v, how="vertical_relaxed") for k, v in parts.items()}
    empty_users = pl.DataFrame(schema={"user_idx": pl.Int64, "entity_type": pl.String, "entity_value": pl.String})
    return InteractionData(datas[0].path, u_off + 1, i_off + 1, cat["train"], cat["valid"], cat["test"],
                           cat["items"], cat["item_entities"], empty_users)


def train_global(root: Path | None = None, config: FoundationConfig | None = None, log=print,
                 device: str = "auto") -> Path:
    """Pre-train on every opted-in tenant's latest ETL artifacts under `root`; returns the new version's path."""
    root = Path(root or artifacts_root())
    tenants = opted_in_tenants(root)
    if not tenants:
        raise ValueError(f"no tenant under {root} has opted in to the global model "
                         "(`tapestry settings --tenant T --share-for-global on`)")
    etl_dirs = {t: latest_version(t, "etl", root) for t in tenants}
    data = merge_tenants([InteractionData.load(etl_dirs[t]) for t in tenants])
    cfg = dataclasses.replace(config or FoundationConfig(), pretrain=True)
    t0 = time.perf_counter()
    model = FoundationRecommender(cfg, device=device).fit(data)
    seconds = round(time.perf_counter() - t0, 1)
    with _global_version(root) as v:
        model.save(v.tmp / "model.pt")
        atomic_write_json(v.tmp / "manifest.json", {
            "tenants": tenants, "etl_versions": {t: p.name for t, p in etl_dirs.items()},
            "num_items": data.num_items, "train_events": data.train.height,
            "attribute_names": len(model.vocab.names), "best_epoch": model.best_epoch_,
            "valid_history": model.valid_history_, "fit_seconds": seconds,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": dataclasses.asdict(cfg)})
    log(f"[global] pre-trained on {len(tenants)} opted-in tenant(s) {tenants}: {data.train.height:,} training "
        f"events, {len(model.vocab.names)} attribute names, best epoch {model.best_epoch_} ({seconds}s) -> {v.path}")
    return v.path


def load_global(root: Path | None = None, device: str = "auto") -> tuple[FoundationRecommender, dict]:
    """The latest global model and its manifest, or a clear error naming the command that makes it."""
    stage = global_dir(root)
    pointer = stage / "LATEST"
    if not pointer.exists():
        raise FileNotFoundError(f"no global model under {stage}; run `tapestry global train` first")
    path = stage / pointer.read_text().strip()
    return FoundationRecommender.load(path / "model.pt", device=device), read_json(path / "manifest.json")


def finetune_tenant(tenant: str, root: Path | None = None, log=print, device: str = "auto",
                    **overrides) -> Path:
    """Fine-tune the latest global model on `tenant`'s latest ETL artifacts; saves the model and its test metrics
    under <root>/<tenant>/cold_start/vNNNN. The tenant need not have opted in (receiving is not contributing)."""
    from tapestry.training.evaluate import evaluate

    glob, manifest = load_global(root, device)
    data = InteractionData.load(latest_version(tenant, "etl", root))
    model = FoundationRecommender.from_global(glob, **overrides).fit(data)
    metrics = evaluate(model, data, "test") if data.test.height else {}
    with new_version(tenant, COLD_START_STAGE, root) as v:
        model.save(v.tmp / "model.pt")
        atomic_write_json(v.tmp / "metrics.json", {"test": metrics, "best_epoch": model.best_epoch_,
                                                   "global_tenants": manifest["tenants"],
                                                   "global_created_at": manifest["created_at"]})
    log(f"[global] fine-tuned for tenant {tenant} from the global model of {manifest['tenants']}: test {metrics} "
        f"-> {v.path}")
    return v.path
