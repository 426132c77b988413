"""The gpu-check driver: find a GPU and a Python that sees it, run each step in its own process under a time limit,
rewrite the JSON summary after every step. Standard library only: it must start on a bare GPU machine, before
anything is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUDGET_S = 480.0               # the whole check: 8 minutes
MIN_STEP_S = 10.0                      # a step is not started with less time than this left
KILL_GRACE_S = 5.0
# (step, its own limit in seconds), in the order they run: cheap and decisive first, so a short lease still
# answers the sampler / FAISS / ETL questions before the long test runs.
STEPS: tuple[tuple[str, float], ...] = (
    ("environment", 30), ("install", 100), ("sampling_compare", 60), ("faiss_compare", 30), ("etl_compare", 45),
    ("benchmark", 90), ("cuda_tests", 120), ("serving_cuda", 90),
)
STEP_NAMES = tuple(name for name, _ in STEPS)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3
# Interpreters worth probing when the one running this has no CUDA torch (e.g. `make install`'s CPU venv on a GPU
# host, beside the image's own CUDA PyTorch).
OTHER_PYTHONS = ("python3", "/opt/torch/.venv/bin/python3", "/usr/bin/python3", "/usr/local/bin/python3")
TORCH_PROBE = ("import json, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
               "'cuda_available': c, 'cuda_version': torch.version.cuda, "
               "'device': torch.cuda.get_device_name(0) if c else None}))")


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu-check.json" if out else REPO / "benchmarks" / "results" / "gpu-check.json"


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def nvidia_smi_gpus() -> tuple[list[str], str]:
    """(GPU lines of `nvidia-smi -L`, why none when empty)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi is not on PATH (no NVIDIA driver here)"
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (subprocess.TimeoutExpired, OSError) as e:
        return [], f"nvidia-smi -L failed: {e}"
    gpus = [line.strip() for line in done.stdout.splitlines() if line.startswith("GPU ")]
    return gpus, "" if gpus else f"nvidia-smi lists no GPU (exit {done.returncode}: {done.stderr.strip()[:200]})"


def probe_torch(python: str) -> dict:
    """torch's version and whether it sees CUDA, in `python` (a subprocess: a broken CUDA stack can hang)."""
    try:
        done = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=90)
    except (subprocess.TimeoutExpired, OSError) as e:
        return {"python": python, "error": f"{type(e).__name__}: {e}"}
    if done.returncode != 0:
        return {"python": python, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {"python": python, **json.loads(done.stdout.strip().splitlines()[-1])}


def find_gpu_python() -> tuple[dict | None, dict]:
    """(probe of the first interpreter whose torch sees CUDA or None, facts for the summary)."""
    gpus, smi_reason = nvidia_smi_gpus()
    probes = [probe_torch(sys.executable)]
    if gpus and not probes[0].get("cuda_available"):
        seen = {os.path.realpath(sys.executable)}
        for name in OTHER_PYTHONS:
            exe = shutil.which(name)
            if exe and os.path.realpath(exe) not in seen:
                seen.add(os.path.realpath(exe))
                probes.append(probe_torch(exe))
    chosen = next((p for p in probes if p.get("cuda_available")), None)
    facts = {"nvidia_smi": gpus, "torch_probes": probes}
    if chosen is None:
        here = probes[0]
        torch_says = (f"this Python's torch {here['torch']} sees no CUDA device" if "torch" in here
                      else f"torch does not import here ({here.get('error')})")
        if not gpus:
            facts["reason"] = f"{smi_reason}; {torch_says}"
        else:
            tried = ", ".join(p["python"] for p in probes)
            facts["reason"] = (f"nvidia-smi lists {gpus[0]} but no Python here has a CUDA build of torch (tried: "
                               f"{tried}); run with GPU_PYTHON=<a python with CUDA torch>")
    return chosen, facts


def run_step(command: list[str], limit_s: float, env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run one step's process; its own session so a timeout kills it and everything it started (a Triton server,
    pytest's children). Returns {"exit_code", "seconds", "output_tail"} plus status "timeout" when killed."""
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
        try:
            code = proc.wait(timeout=limit_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=KILL_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
            code = proc.returncode
        log.seek(0)
        tail = log.read()[-3000:]
    result = {"exit_code": code, "seconds": round(time.monotonic() - started, 2), "output_tail": tail}
    if timed_out:
        result.update(status="timeout", error=f"killed after its {limit_s:g} s limit")
    return result


def _step_result(name: str, python: str, limit_s: float, workdir: Path, env: dict) -> dict:
    result_path = workdir / f"{name}.json"
    run = run_step([python, "-m", "tapestry.gpucheck.steps", name, str(result_path)], limit_s, env)
    if run.get("status") == "timeout":
        return {**run, "limit_s": limit_s}
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {"status": "failed", "error": f"the step wrote no result (exit code {run['exit_code']})"}
    result.update(seconds=run["seconds"], limit_s=limit_s)
    if result.get("status") not in ("ok", "not_available", "skipped"):
        result["output_tail"] = run["output_tail"]
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tapestry.gpucheck", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="summary JSON (default $OUT/gpu-check.json, else "
                   "benchmarks/results/gpu-check.json)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole check")
    p.add_argument("--only", default="", help=f"comma-separated steps, from {','.join(STEP_NAMES)}")
    p.add_argument("--wheels", type=Path, default=None, help="install missing packages from this folder only")
    p.add_argument("--require-gpu", action="store_true", help="exit 3 when there is no GPU")
    p.add_argument("--run-without-gpu", action="store_true",
                   help="run the steps on the CPU anyway (to test the check itself; GPU parts report not_available)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(STEP_NAMES))
    if unknown or args.budget <= 0:
        print(f"gpu-check: unknown step(s) {unknown}; known: {', '.join(STEP_NAMES)}" if unknown
              else "gpu-check: --budget must be > 0", file=sys.stderr)
        return EXIT_USAGE
    out = args.out or default_out()
    deadline = time.monotonic() + args.budget
    summary = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget,
               "status": "running", "steps": {}}
    chosen, facts = find_gpu_python()
    summary.update(gpu=chosen is not None, environment=facts)
    if chosen is None and not args.run_without_gpu:
        summary.update(status="no_gpu", reason=facts["reason"])
        write_json_atomic(out, summary)
        print(f"gpu-check: NO GPU, nothing was checked: {facts['reason']}.\ngpu-check: wrote {out} "
              f"(status no_gpu)")
        return EXIT_NO_GPU if args.require_gpu else EXIT_OK
    python = chosen["python"] if chosen else sys.executable
    summary.update(python=python, device="cuda" if chosen else "cpu")
    env = dict(os.environ, TAPESTRY_GPUCHECK_DEVICE=summary["device"], PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.wheels:
        env["TAPESTRY_GPUCHECK_WHEELS"] = str(args.wheels.resolve())
    write_json_atomic(out, summary)
    print(f"gpu-check: {chosen['device'] if chosen else 'CPU (--run-without-gpu)'} via {python}; "
          f"budget {args.budget:g} s; summary -> {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as work:
        for name, limit in STEPS:
            if only and name not in only:
                continue
            left = deadline - time.monotonic()
            if left < MIN_STEP_S:
                result = {"status": "skipped", "reason": f"the {args.budget:g} s budget is spent"}
            else:
                print(f"gpu-check: {name} (limit {min(limit, left):.0f} s) ...", flush=True)
                result = _step_result(name, python, min(limit, left), Path(work), env)
            summary["steps"][name] = result
            write_json_atomic(out, summary)
            print(f"gpu-check: {name}: {result['status']}"
                  + (f" - {result.get('reason') or result.get('error')}"
                     if result["status"] != "ok" else ""), flush=True)
    statuses = [r["status"] for r in summary["steps"].values()]
    bad = [n for n, r in summary["steps"].items() if r["status"] in ("failed", "timeout")]
    # "incomplete": nothing failed, but some step could not compare (a package, the GPU or a data set missing).
    summary.update(status="failed" if bad else "passed" if all(s == "ok" for s in statuses) else "incomplete",
                   counts={s: statuses.count(s) for s in sorted(set(statuses))},
                   finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json_atomic(out, summary)
    print(f"gpu-check: {summary['status']} {summary['counts']}" + (f" (failed: {', '.join(bad)})" if bad else "")
          + f"; wrote {out}")
    return EXIT_FAILED if bad else EXIT_OK
