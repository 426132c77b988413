"""Per-tenant settings kept beside the tenant's artifacts: <root>/<tenant>/settings.json.

Today one flag: `share_for_global` (default False). Only a tenant that set it contributes its ETL artifacts to the
global ("foundation") model (`tapestry global train`, tapestry.training.global_model); a tenant that did not is
never read. Absent file = the defaults, so every existing tenant starts opted out. Written atomically.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from tapestry.artifacts import atomic_write_json, tenant_dir
from tapestry.config import artifacts_root, validate_tenant

SETTINGS_FILE = "settings.json"


@dataclass
class TenantSettings:
    share_for_global: bool = False   # opt-in: the tenant's training events may pre-train the global model


def settings_path(tenant: str, root: Path | None = None) -> Path:
    return tenant_dir(tenant, root) / SETTINGS_FILE


def load_settings(tenant: str, root: Path | None = None) -> TenantSettings:
    path = settings_path(tenant, root)
    if not path.exists():
        return TenantSettings()
    raw = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(TenantSettings)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(names)}")
    if not isinstance(raw.get("share_for_global", False), bool):
        raise ValueError(f"{path}: share_for_global must be true or false, got {raw['share_for_global']!r}")
    return TenantSettings(**raw)


def save_settings(tenant: str, settings: TenantSettings, root: Path | None = None) -> Path:
    path = settings_path(tenant, root)
    atomic_write_json(path, dataclasses.asdict(settings))
    return path


def opted_in_tenants(root: Path | None = None) -> list[str]:
    """Tenants under `root` whose settings say share_for_global, sorted (the global model's input list). Directories
    that are not tenant ids (e.g. `_global`, hidden temp dirs) are skipped."""
    root = Path(root or artifacts_root())
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            validate_tenant(d.name)
        except ValueError:
            continue
        if d.is_dir() and load_settings(d.name, root).share_for_global:
            out.append(d.name)
    return out
