"""gpu-check's install step: the project's requirements (pyproject.toml: the core dependencies and the `gpu` extra)
that this Python lacks, installed with pip, never touching the machine's torch (its CUDA build is the point of a
GPU host; pip must not swap it for another).

Runs only where the check found CUDA (never on a development machine's venv). Every project pin is passed to pip
as a constraint, so an install may add packages but never moves numpy to 2.x (the Triton python backend needs
numpy<2) or replaces torch. Sources: `--wheels DIR` (TAPESTRY_GPUCHECK_WHEELS) installs from that folder alone
(`--no-index`: a machine without network, wheels carried to it); otherwise the package index, downloaded first
into a temporary folder and then installed from it, so a download cut off at its limit changes nothing. A
requirement pip cannot satisfy is reported, not fatal: the steps that need it say "not_available".
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from tapestry.gpucheck.runner import REPO

MACHINE_OWN = {"torch"}                # never installed or changed by the check
DOWNLOAD_TIMEOUT_S = 45            # the install step's limit is 100 s: the local install keeps the rest
INSTALL_TIMEOUT_S = 40


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:                # Python 3.10 (the NGC container): tomli, pip's own copy else
        try:
            import tomli as tomllib
        except ImportError:
            from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text())


def project_requirements(pyproject: Path = REPO / "pyproject.toml", extras: tuple[str, ...] = ("gpu",)) -> list[str]:
    """The core dependencies plus `extras`, minus what the machine owns (torch)."""
    from packaging.requirements import Requirement

    project = _load_toml(pyproject)["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return [r for r in reqs if Requirement(r).name.lower() not in MACHINE_OWN]


def unmet(requirements: list[str]) -> list[str]:
    """The requirements whose distribution is absent here or at a version outside the specifier (markers that do
    not apply to this machine are met)."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def constraints_text(requirements: list[str]) -> str:
    """Every project requirement as a pip constraint (extras dropped: constraints take none), plus the machine's
    own packages pinned to their installed versions: pip may add packages, never break a project pin (numpy<2 for
    the Triton python backend) or replace the CUDA torch."""
    from packaging.requirements import Requirement

    lines = []
    for text in requirements:
        req = Requirement(text)
        lines.append(f"{req.name}{req.specifier}" + (f"; {req.marker}" if req.marker else ""))
    lines += [f"{name}=={metadata.version(name)}" for name in sorted(MACHINE_OWN) if _installed(name)]
    return "\n".join(lines) + "\n"


def _pip(args: list[str], timeout: float) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check", "--no-input"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"pip did not finish in {timeout:.0f} s"
    return done.returncode == 0, (done.stderr or done.stdout).strip()[-600:]


def install_step() -> dict:
    if not _on_cuda():
        return {"status": "not_available", "reason": "installs run only on a CUDA machine (this one has none)"}
    wheels = os.environ.get("TAPESTRY_GPUCHECK_WHEELS")
    wanted = project_requirements()
    missing = unmet(wanted)
    if not missing:
        return {"status": "ok", "installed": [], "already_met": len(wanted)}
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(constraints_text(wanted))
        if wheels:
            source = wheels
        else:
            # Download first, then install from the local folder: a download cut off at its limit leaves the
            # environment as it was, an install cut off half-way would not.
            source = str(Path(tmp) / "wheels")
            ok, why = _pip(["download", "-d", source, "-c", str(constraints), "--retries", "0", "--timeout", "15",
                            *missing], DOWNLOAD_TIMEOUT_S)
            if not ok:
                errors["download"] = why
        ok, why = _pip(["install", "--no-index", "--find-links", source, "-c", str(constraints), *missing],
                       INSTALL_TIMEOUT_S)
        if not ok:                     # one at a time: whatever can be installed is
            errors["install"] = why
            for req in missing:
                ok_one, why_one = _pip(["install", "--no-index", "--find-links", source, "-c", str(constraints),
                                        req], INSTALL_TIMEOUT_S / 2)
                if not ok_one:
                    errors[req] = why_one
    still = unmet(wanted)
    origin = f"wheels in {wheels}" if wheels else "the package index"
    result = {"source": origin, "installed": sorted(set(missing) - set(still)), "unmet": still, "pip_errors": errors}
    if still:
        return {"status": "not_available", "reason": f"{len(still)} requirement(s) could not be installed from "
                f"{origin}; the steps that need them report not_available", **result}
    return {"status": "ok", **result}


def _on_cuda() -> bool:
    """The driver's finding (TAPESTRY_GPUCHECK_DEVICE); run by hand, torch's. Never True on a CPU machine."""
    chosen = os.environ.get("TAPESTRY_GPUCHECK_DEVICE")
    if chosen:
        return chosen == "cuda"
    import torch

    return torch.cuda.is_available()


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
