"""A/B experiments on the running multi-tenant server: `tapestry experiment start|status|stop|report --tenant T`.

While an experiment runs, the tenant still has ONE ensemble clients call, `<t>__recommend`, now with one step, the
router (`<t>__router__<experiment>`, tapestry.serving.router), and one more output, ARM. The router sends each user
(a stable hash of the id: tapestry.serving.ab) to their arm's ensemble `<t>__recommend__<arm>`, whose steps are
that arm's export's stage models `<t>__<stage>__vNNNN` (the names swaps already use, so several exports' stages
load side by side; two arms on one export share them: an A/A test).

Built on the swap machinery (tapestry.serving.model_control), under the same lock, in the same order, so no request
fails when arms change:
- start: load the stage models of the arms' exports not served yet, then the arm ensembles and the router, then
  point `<t>__recommend` at the router and load it (requests switch once it is ready; one in flight finishes on
  what it started on); then unload stage models no arm uses. A load that fails undoes everything before it and the
  tenant serves what it served before.
- stop (`--keep ARM`, default the control arm, the first): point `<t>__recommend` at the kept arm's stages again,
  then unload the router and wait until it is gone (a request inside it still calls an arm ensemble), then the arm
  ensembles, then the stages of the other exports.
State: the tenant's entry in server.json gets `experiment` (id, arms, split, exposure log), `arm_ensembles`, and
`stage_models` = every arm's stage models plus the router (the supervisor heals all of them), and
`<root>/<t>/experiments/<id>/experiment.json` keeps the experiment's record (for `report` after it stopped).
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from tapestry.artifacts import atomic_write_json, atomic_write_text, tenant_dir
from tapestry.serving.ab import EXPOSURES, Split, experiments_dir
from tapestry.serving.model_control import (ModelControl, _require, error_text, locked, save_state, tenant_info)
from tapestry.serving.tenant_repository import (ENSEMBLE, SEPARATOR, SwapError, _precompile, _write_config,
                                                export_path, exported_models, model_name, remove_models,
                                                write_ensemble, write_stages)

ROUTER = "router"
ROUTER_INSTANCES = 2
UNLOAD_WAIT_S = 120.0
ROUTER_PY = ('"""A/B router (written by tapestry.serving.experiment); the logic is tapestry.serving.router."""\n'
             "from tapestry.serving.router import TritonPythonModel  # noqa: F401\n")


def arm_ensemble(tenant: str, arm: str) -> str:
    return f"{model_name(tenant, ENSEMBLE)}{SEPARATOR}{arm}"


def router_name(tenant: str, experiment: str) -> str:
    return f"{model_name(tenant, ROUTER)}{SEPARATOR}{experiment}"


def experiment_dir(tenant: str, experiment: str, root: Path | None = None) -> Path:
    return experiments_dir(tenant_dir(tenant, root)) / experiment


def new_experiment_id() -> str:
    return time.strftime("exp%Y%m%d%H%M%S", time.gmtime())


# --- the repository files -----------------------------------------------------------------------------------------

def write_arm_ensemble(repo: Path, tenant: str, arm: str, export: Path) -> str:
    """The export's ensemble as `<t>__recommend__<arm>`, its steps naming the export's stage models."""
    return write_ensemble(repo, tenant, export, name=arm_ensemble(tenant, arm), role=f"arm {arm} serves")


def _arm_output(config) -> None:
    out = config.output.add()
    out.name, out.data_type = "ARM", config.input[0].data_type   # TYPE_STRING, as TENANT
    out.dims.append(1)


def write_router(repo: Path, tenant: str, export: Path, spec: dict) -> str:
    """The router model: the export's ensemble's inputs and outputs (+ ARM), python backend, EXPERIMENT = spec."""
    import json

    from tritonclient.grpc import model_config_pb2 as pb

    ensemble, _ = exported_models(export)
    config = pb.ModelConfig(name=router_name(tenant, spec["experiment"]), backend="python",
                            max_batch_size=ensemble.max_batch_size)
    config.input.extend(ensemble.input)
    config.output.extend(ensemble.output)
    _arm_output(config)
    if config.max_batch_size:
        config.dynamic_batching.SetInParent()
        for inp in config.input:
            inp.allow_ragged_batch = True
    group = config.instance_group.add()
    group.kind, group.count = pb.ModelInstanceGroup.KIND_CPU, ROUTER_INSTANCES
    config.parameters["EXPERIMENT"].string_value = json.dumps(spec, sort_keys=True)
    folder = repo / config.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "1" / "model.py", ROUTER_PY)
    _precompile(folder / "1" / "model.py")
    _write_config(folder / "config.pbtxt", config, f"tenant {tenant}: A/B router of experiment {spec['experiment']}")
    return config.name


def write_routed_ensemble(repo: Path, tenant: str, export: Path, router: str) -> str:
    """`<t>__recommend` with one step, the router: same inputs, same outputs plus ARM."""
    ensemble, _ = exported_models(export)
    ensemble.name = model_name(tenant, ENSEMBLE)
    _arm_output(ensemble)
    del ensemble.ensemble_scheduling.step[:]
    step = ensemble.ensemble_scheduling.step.add()
    step.model_name, step.model_version = router, -1
    for inp in ensemble.input:
        step.input_map[inp.name] = inp.name
    for out in ensemble.output:
        step.output_map[out.name] = out.name
    (repo / ensemble.name / "1").mkdir(parents=True, exist_ok=True)
    _write_config(repo / ensemble.name / "config.pbtxt", ensemble, f"tenant {tenant}: A/B experiment over {router}")
    return ensemble.name


# --- start / stop / status ----------------------------------------------------------------------------------------

def parse_arm(text: str) -> tuple[str, str | None, float]:
    """`NAME=VERSION:PERCENT` (VERSION: vNNNN, NNNN, `served` or `latest`) -> (name, version or None, percent)."""
    try:
        name, rest = text.split("=", 1)
        version, percent = rest.rsplit(":", 1)
        return name.strip(), version.strip(), float(percent)
    except ValueError:
        raise ValueError(f"arm {text!r}: NAME=VERSION:PERCENT, e.g. control=v0001:50") from None


def _export_of(tenant: str, root: Path | None, version: str | None, served: Path) -> Path:
    if version in (None, "", "served"):
        return served
    return export_path(tenant, root, None if version == "latest" else version)


def _wait_gone(control: ModelControl, name: str, timeout: float = UNLOAD_WAIT_S) -> None:
    """Until Triton no longer lists ``name`` as READY or UNLOADING (its last request finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = control._client()
        try:
            index = (control._call(client, "get_model_repository_index", as_json=True).get("models", [])
                     if control.grpc_url else control._call(client, "get_model_repository_index"))
        finally:
            client.close()
        if not any(m.get("name") == name and m.get("state") in ("READY", "UNLOADING") for m in index):
            return
        time.sleep(0.1)   # polling Triton's model state, not timing anything


def start(tenant: str, arms: list[tuple[str, str | None, float]], root: Path | None = None,
          experiment: str | None = None, log=print) -> dict:
    """Serve ``arms`` ([(name, export version or None: the served one, percent)], the first is the control) of
    ``tenant`` as an experiment; returns the tenant's new info."""
    experiment = experiment or new_experiment_id()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}", experiment):
        raise SwapError(f"experiment id {experiment!r}: letters, digits, - and _ only")
    split = Split(experiment, tuple(a[0] for a in arms), tuple(a[2] for a in arms))   # ValueError when invalid
    with locked(root):
        server, info = _require(root, tenant)
        if info.get("experiment"):
            raise SwapError(f"tenant {tenant} already runs experiment {info['experiment']['id']}: `tapestry "
                            f"experiment stop --tenant {tenant}` first")
        folder = experiment_dir(tenant, experiment, root)
        if folder.exists():
            raise SwapError(f"tenant {tenant} already had an experiment {experiment} ({folder})")
        served = Path(info["export"])
        exports = {name: _export_of(tenant, root, version, served) for name, version, _ in arms}
        repo, control = Path(server["model_repository"]), ModelControl.of(server)
        t0 = time.perf_counter()
        stages: dict[str, list[str]] = {}   # export version -> its stage models
        new: list[str] = []
        try:
            for export in dict.fromkeys(exports.values()):
                if export.name == served.name:
                    stages[export.name] = list(info["stage_models"])
                else:
                    stages[export.name] = write_stages(repo, tenant, export)
                    new += stages[export.name]
            control.load(new)
            ensembles = {arm: write_arm_ensemble(repo, tenant, arm, export) for arm, export in exports.items()}
            new += list(ensembles.values())
            spec = {**split.as_dict(), "tenant": tenant, "ensembles": ensembles,
                    "exposure_log": str((folder / EXPOSURES).resolve())}
            folder.mkdir(parents=True)
            router = write_router(repo, tenant, served, spec)
            new.append(router)
            control.load(list(ensembles.values()) + [router])
        except Exception as e:
            control.quietly("unload_model", new)
            remove_models(repo, new)
            shutil.rmtree(folder, ignore_errors=True)   # nothing was served: the id can be used again
            raise SwapError(f"tenant {tenant}: experiment {experiment} failed to load, {info['export_version']} still "
                            f"served: {error_text(e)}") from e
        t1 = time.perf_counter()
        ensemble = write_routed_ensemble(repo, tenant, served, router)
        try:
            control.load([ensemble])
        except Exception as e:
            write_ensemble(repo, tenant, served)
            control.quietly("load_model", [ensemble])
            control.quietly("unload_model", new)
            remove_models(repo, new)
            shutil.rmtree(folder, ignore_errors=True)
            raise SwapError(f"tenant {tenant}: the experiment's ensemble failed to load, {info['export_version']} "
                            f"still served: {error_text(e)}") from e
        used = {m for names in stages.values() for m in names}
        unused = [m for m in info["stage_models"] if m not in used]
        if unused:
            control.unload(unused)
            remove_models(repo, unused)
        record = {"id": experiment, "tenant": tenant, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "split": split.as_dict(), "control": split.arms[0], "router": router,
                  "exposure_log": spec["exposure_log"],
                  "arms": {arm: {"export": str(exports[arm]), "export_version": exports[arm].name,
                                 "percent": split.percents[i], "ensemble": ensembles[arm],
                                 "stage_models": stages[exports[arm].name]} for i, arm in enumerate(split.arms)}}
        atomic_write_json(folder / "experiment.json", record)
        info = {**info, "experiment": record, "arm_ensembles": list(ensembles.values()),
                "stage_models": sorted(used) + [router]}
        server["tenants"][tenant] = info
        save_state(root, server)
        log(f"[experiment] tenant={tenant} {experiment} started: "
            + ", ".join(f"{a}={exports[a].name} {p:g}%" for a, p in zip(split.arms, split.percents))
            + f"; models loaded in {t1 - t0:.1f}s, ensemble switched in {time.perf_counter() - t1:.1f}s")
        return info


def stop(tenant: str, root: Path | None = None, keep: str | None = None, log=print) -> dict:
    """End the running experiment: the tenant serves the ``keep`` arm's export (default the control arm's)."""
    with locked(root):
        server, info = _require(root, tenant)
        record = info.get("experiment")
        if not record:
            raise SwapError(f"tenant {tenant} runs no experiment")
        keep = keep or record["control"]
        if keep not in record["arms"]:
            raise SwapError(f"experiment {record['id']} has no arm {keep!r} (arms: {', '.join(record['arms'])})")
        kept = record["arms"][keep]
        export = Path(kept["export"])
        repo, control = Path(server["model_repository"]), ModelControl.of(server)
        t0 = time.perf_counter()
        ensemble = write_ensemble(repo, tenant, export)
        try:
            control.load([ensemble])
        except Exception as e:
            write_routed_ensemble(repo, tenant, Path(info["export"]), record["router"])
            control.quietly("load_model", [ensemble])
            raise SwapError(f"tenant {tenant}: serving arm {keep} alone failed, the experiment goes on: "
                            f"{error_text(e)}") from e
        t1 = time.perf_counter()
        control.unload([record["router"]])
        _wait_gone(control, record["router"])   # a request inside the router still calls an arm ensemble
        control.unload(info.get("arm_ensembles", []))
        for name in info.get("arm_ensembles", []):
            _wait_gone(control, name)
        others = [m for m in info["stage_models"] if m not in kept["stage_models"] and m != record["router"]]
        control.unload(others)
        remove_models(repo, [record["router"], *info.get("arm_ensembles", []), *others])
        path = experiment_dir(tenant, record["id"], root) / "experiment.json"
        atomic_write_json(path, {**record, "stopped_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kept": keep})
        history = list(info["history"]) + ([info["export_version"]] if export.name != info["export_version"] else [])
        server["tenants"][tenant] = tenant_info(tenant, export, history, list(kept["stage_models"]))
        save_state(root, server)
        log(f"[experiment] tenant={tenant} {record['id']} stopped: serves arm {keep} ({export.name}) alone; "
            f"switched in {t1 - t0:.1f}s, the other arms unloaded in {time.perf_counter() - t1:.1f}s")
        return server["tenants"][tenant]


def running(tenant: str, root: Path | None = None) -> dict | None:
    """The tenant's running experiment (its record), or None."""
    from tapestry.serving.model_control import live_server

    server = live_server(root)
    return ((server or {}).get("tenants", {}).get(tenant) or {}).get("experiment")


def find(tenant: str, root: Path | None = None, experiment: str | None = None) -> dict:
    """An experiment's record: ``experiment`` by id, else the running one, else the latest started."""
    base = experiments_dir(tenant_dir(tenant, root))
    if experiment is None:
        current = running(tenant, root)
        if current:
            return current
        found = sorted(base.glob("*/experiment.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SwapError(f"tenant {tenant} has had no experiment (under {base})")
        path = found[-1]
    else:
        path = base / experiment / "experiment.json"
        if not path.is_file():
            raise SwapError(f"tenant {tenant} has no experiment {experiment!r} under {base}")
    import json

    return json.loads(path.read_text())
