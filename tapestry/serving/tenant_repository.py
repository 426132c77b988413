"""The multi-tenant server's combined model repository, built from each tenant's export: names, configs, files.

A separate module because it is pure file work (no server, no Triton call): `multi_tenant` builds the whole
repository at start, `model_control` writes one export's models into it before loading them, and tests check it
without a server. The repository, <root>/_server/model_repository ("_server" is no tenant id: those start with a
letter or digit), is the server's own:

    <t>__recommend/config.pbtxt            the tenant's exported ensemble, renamed (a stable name: what clients
    <t>__recommend/1/                      call), its steps naming the stage models of the export it serves
    <t>__<stage>__vNNNN/config.pbtxt       export vNNNN's stage config, renamed, ARTIFACT_DIR = that export's
    <t>__<stage>__vNNNN/1/model.py         artifacts/ (absolute); model.py is a symlink to the exported one

Measured on this Triton build (2.51, the nvidia-pytriton 0.7.0 binary), and why the names and files are these:
- Triton model versions 1, 2, ... under one name: adding a version folder modifies the model, and Triton then
  reloads EVERY version of it, the serving one too; so each export gets its own stage names instead.
- The python backend writes __pycache__/ into a model's folder after Triton read its timestamps, so an ensemble
  load saw new stages as modified and started them all again: model.py's bytecode is written beforehand
  (_precompile), and each stage process starts once per swap.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tapestry.artifacts import atomic_write_text, latest_version, stage_dir
from tapestry.config import artifacts_root, validate_tenant

SERVER_DIR = "_server"
SEPARATOR = "__"          # <tenant>__<model>: no exported model name contains "__", so names never collide
ENSEMBLE = "recommend"    # the exported ensemble's name (tapestry.serving.client.ensemble_name mirrors this)


class SwapError(RuntimeError):
    """A swap, rollback or tenant change that could not be made; the server serves what it served before."""


def model_name(tenant: str, model: str) -> str:
    return f"{validate_tenant(tenant)}{SEPARATOR}{model}"


def stage_name(tenant: str, stage: str, export: Path) -> str:
    """The combined repository's name for one export's stage: <tenant>__<stage>__vNNNN."""
    return f"{model_name(tenant, stage)}{SEPARATOR}{Path(export).name}"


def server_dir(root: Path | None = None) -> Path:
    return Path(root or artifacts_root()) / SERVER_DIR


def export_path(tenant: str, root: Path | None = None, version: str | None = None) -> Path:
    """A tenant's export (version "vNNNN" or "NNNN"), or its latest one."""
    if version is None:
        return latest_version(tenant, "export", root)
    name = version if version.startswith("v") else f"v{version.zfill(4)}"
    path = stage_dir(tenant, "export", root) / name
    if not name[1:].isdigit() or not (path / "model_repository").is_dir():
        raise SwapError(f"tenant {tenant} has no export {version!r} under {path.parent}")
    return path


def read_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _write_config(path: Path, config, header: str) -> None:
    from google.protobuf import text_format

    atomic_write_text(path, f"# {header} (written by tapestry.serving.tenant_repository)\n"
                      + text_format.MessageToString(config))


def exported_models(export: Path) -> tuple[object, list[str]]:
    """(the export's ensemble config, its step models in order); every step must be a model of the export."""
    repo = Path(export) / "model_repository"
    if not (repo / ENSEMBLE / "config.pbtxt").is_file():
        raise SwapError(f"{export} has no {ENSEMBLE} ensemble: not a tapestry export")
    ensemble = read_config(repo / ENSEMBLE / "config.pbtxt")
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    bad = [m for m in steps if SEPARATOR in m or not (repo / m / "config.pbtxt").is_file()]
    if not steps or bad:
        raise SwapError(f"{export}: ensemble steps {steps} are not all models of the export ({bad})")
    return ensemble, steps


def write_stages(repo: Path, tenant: str, export: Path) -> list[str]:
    """Every stage model of one export under its own names; returns the names in step order."""
    names = []
    for stage in exported_models(export)[1]:
        source = Path(export) / "model_repository" / stage
        config = read_config(source / "config.pbtxt")
        config.name = stage_name(tenant, stage, export)
        config.parameters["ARTIFACT_DIR"].string_value = str((Path(export) / "artifacts").resolve())
        folder = repo / config.name
        shutil.rmtree(folder, ignore_errors=True)   # left by a failed attempt
        for version in (p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
            (folder / version.name).mkdir(parents=True)
            for file in (f for f in version.iterdir() if f.name != "__pycache__"):   # the exported code, linked
                (folder / version.name / file.name).symlink_to(file.resolve())
                if file.suffix == ".py":
                    _precompile(folder / version.name / file.name)
        _write_config(folder / "config.pbtxt", config, f"tenant {tenant}: {stage} of {export}")
        names.append(config.name)
    return names


def _precompile(model_py: Path) -> None:
    """Write model.py's bytecode cache now. The python backend's stub imports model.py and writes __pycache__/ into
    the model's folder AFTER Triton noted the folder's timestamps (it ignores PYTHONDONTWRITEBYTECODE), so Triton's
    next poll of that model, which every ensemble load makes of its composing models, saw it modified and started
    its processes again (measured: every stage of a swap loaded twice). A valid cache is not rewritten."""
    import importlib.util
    import py_compile

    py_compile.compile(str(model_py), cfile=importlib.util.cache_from_source(str(model_py)), doraise=True)


def write_ensemble(repo: Path, tenant: str, export: Path, name: str | None = None, role: str = "serves") -> str:
    """The tenant's ensemble (stable name <tenant>__recommend, or ``name``: an A/B arm's), its steps naming
    ``export``'s stage models."""
    ensemble, _ = exported_models(export)
    ensemble.name = name or model_name(tenant, ENSEMBLE)
    for step in ensemble.ensemble_scheduling.step:
        step.model_name = stage_name(tenant, step.model_name, export)
    (repo / ensemble.name / "1").mkdir(parents=True, exist_ok=True)
    _write_config(repo / ensemble.name / "config.pbtxt", ensemble, f"tenant {tenant}: {role} {export}")
    return ensemble.name


def remove_models(repo: Path, names: list[str]) -> None:
    for name in names:
        shutil.rmtree(repo / name, ignore_errors=True)
