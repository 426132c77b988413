"""`make gpu-check` on a machine without a GPU: a clear "no GPU" result; and the parts that must hold before it ever
reaches a GPU (step time limits, the summary after each step, CUDA test selection, install constraints)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tapestry.gpucheck import runner
from tapestry.gpucheck.install import constraints_text, project_requirements, unmet

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU result; this machine has CUDA")


def _check(*args, cwd=runner.REPO):
    return subprocess.run([sys.executable, "-m", "tapestry.gpucheck", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@cpu_only
def test_without_a_gpu_it_says_so_and_writes_the_reason(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = _check("--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "NO GPU" in done.stdout and str(out) in done.stdout
    summary = json.loads(out.read_text())
    assert summary["gpu"] is False and summary["status"] == "no_gpu" and summary["steps"] == {}
    assert "CUDA" in summary["reason"] or "nvidia-smi" in summary["reason"]
    assert _check("--out", str(out), "--require-gpu").returncode == runner.EXIT_NO_GPU


def test_an_unknown_step_is_a_usage_error(tmp_path):
    done = _check("--out", str(tmp_path / "x.json"), "--only", "environment,warp_drive")
    assert done.returncode == runner.EXIT_USAGE and "warp_drive" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_step_over_its_limit_is_killed_and_recorded_as_timeout():
    blocks_forever = [sys.executable, "-c", "import threading; print('started', flush=True); threading.Event().wait()"]
    result = runner.run_step(blocks_forever, limit_s=1.0)
    assert result["status"] == "timeout" and "1 s limit" in result["error"]
    assert "started" in result["output_tail"] and result["exit_code"] is not None   # it was reaped


def test_the_summary_holds_every_finished_step(tmp_path):
    """--run-without-gpu runs the driver on the CPU: each step in its own process, the JSON rewritten after it;
    the install step refuses to touch a machine without CUDA."""
    out = tmp_path / "s.json"
    assert runner.main(["--out", str(out), "--run-without-gpu", "--only", "environment,install"]) == runner.EXIT_OK
    summary = json.loads(out.read_text())
    assert list(summary["steps"]) == ["environment", "install"] and summary["device"] == "cpu"
    env = summary["steps"]["environment"]
    assert env["status"] == "ok" and env["torch"] == torch.__version__ and "faiss" in env["modules"]
    assert summary["steps"]["install"]["status"] == "not_available"
    assert "only on a CUDA machine" in summary["steps"]["install"]["reason"]
    assert summary["status"] == "incomplete" and summary["counts"] == {"not_available": 1, "ok": 1}


def test_cuda_tests_are_selected_by_their_skip_reason(tmp_path):
    (tmp_path / "test_mixed.py").write_text(textwrap.dedent("""
        import pytest
        needs_cuda = pytest.mark.skipif(True, reason="CUDA not available")

        @needs_cuda
        def test_on_gpu():
            pass

        def test_on_cpu():
            pass

        @pytest.mark.skipif(True, reason="no redis-server")
        def test_other_skip():
            pass
    """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tapestry.gpucheck.cuda_select", "-q", "-rs",
                           "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_mixed.py")], capture_output=True, text=True, cwd=runner.REPO,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(runner.REPO)})
    assert "1 skipped, 2 deselected" in done.stdout, done.stdout + done.stderr


def test_installs_keep_the_project_pins_and_never_touch_torch():
    wanted = project_requirements()
    names = {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in wanted}
    assert "torch" not in names and {"numpy", "faiss-gpu-cu12", "cudf-polars-cu13"} <= names
    constraints = constraints_text(wanted)
    assert "numpy<2,>=1.26" in constraints or "numpy>=1.26,<2" in constraints
    assert f"torch=={__import__('importlib.metadata').metadata.version('torch')}" in constraints
    assert "[" not in constraints                                   # pip constraints take no extras
    assert unmet(["numpy>=1.26,<2"]) == [] and unmet(["numpy>=99"]) == ["numpy>=99"]
    assert unmet(["no-such-distribution-here==1.0"]) == ["no-such-distribution-here==1.0"]


def test_sampling_compare_without_cugraph_reports_pyg_stats(monkeypatch):
    from tapestry.gpucheck import steps

    monkeypatch.setattr(steps, "DEVICE", "cpu")
    monkeypatch.setattr(steps, "SAMPLING_GRAPH", dict(num_users=500, num_items=300, num_edges=5000, seed=0))
    monkeypatch.setattr(steps, "SAMPLING_LOADER", dict(num_neighbors=[4, 2], batch_size=128, num_negatives=2,
                                                       max_batches=3))
    result = steps.sampling_compare()
    assert result["status"] == "not_available" and "cuGraph-PyG" in result["reason"]
    assert result["pyg_stats"]["batches"] == 3 and result["pyg_stats"]["seeds"] == 3 * 128
    assert result["pyg_vs_stored_reference"] is None      # the stored reference is for another graph


def test_the_stored_sampling_reference_matches_the_check_setup():
    from tapestry.gpucheck import steps

    stored = json.loads(steps.SAMPLING_REFERENCE.read_text())
    assert steps._same_setup(stored) and stored["fanout_max"] == max(steps.SAMPLING_LOADER["num_neighbors"])
