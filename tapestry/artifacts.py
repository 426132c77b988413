"""Versioned, atomic, tenant-scoped artifact directories.

Layout: <root>/<tenant>/<stage>/v0001/...  plus <root>/<tenant>/<stage>/LATEST naming the newest complete version.
A version is written into a hidden temp directory and renamed into place only when complete, so a crash never
leaves a half-written version that a later stage could read.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tapestry.config import artifacts_root, validate_tenant


# The command that produces each stage's artifacts, for error messages.
STAGE_COMMANDS = {"etl": "etl", "models": "train", "export": "export"}


def tenant_dir(tenant: str, root: Path | None = None) -> Path:
    return Path(root or artifacts_root()) / validate_tenant(tenant)


def stage_dir(tenant: str, stage: str, root: Path | None = None) -> Path:
    return tenant_dir(tenant, root) / stage


def _versions(stage_path: Path) -> list[int]:
    if not stage_path.exists():
        return []
    out = []
    for p in stage_path.iterdir():
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit():
            out.append(int(p.name[1:]))
    return sorted(out)


def latest_version(tenant: str, stage: str, root: Path | None = None) -> Path:
    """The newest complete version of a stage, or a clear error naming the command that makes it."""
    sd = stage_dir(tenant, stage, root)
    pointer = sd / "LATEST"
    if pointer.exists():
        path = sd / pointer.read_text().strip()
        if path.is_dir():
            return path
    versions = _versions(sd)
    if not versions:
        raise FileNotFoundError(
            f"no '{stage}' artifacts for tenant '{tenant}' under {sd}; run `tapestry {STAGE_COMMANDS.get(stage, stage)} "
            f"--tenant {tenant}` first"
        )
    return sd / f"v{versions[-1]:04d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save of `obj` (plain tensors and Python values) written atomically: the rankers' file format."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class new_version:
    """Context manager: fill `.tmp`; on success it becomes <stage>/vNNNN (`.path`) and LATEST points at it.

    with new_version("acme", "etl") as v:
        write_files(v.tmp)
    print(v.path)
    """

    def __init__(self, tenant: str, stage: str, root: Path | None = None):
        self.stage_path = stage_dir(tenant, stage, root)
        self.tmp: Path | None = None
        self.path: Path | None = None

    def __enter__(self) -> "new_version":
        self.stage_path.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.stage_path, prefix=".tmp-"))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        # Pick the number only now (first free one) and retry if a concurrent writer took it.
        while True:
            versions = _versions(self.stage_path)
            final = self.stage_path / f"v{(versions[-1] + 1 if versions else 1):04d}"
            try:
                os.rename(self.tmp, final)
                break
            except OSError:
                if not final.exists():
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    raise
        atomic_write_text(self.stage_path / "LATEST", final.name + "\n")
        self.path = final


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
