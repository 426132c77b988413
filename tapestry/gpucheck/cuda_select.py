"""pytest plugin (`-p tapestry.gpucheck.cuda_select`): keep only the CUDA tests.

A CUDA test is one the suite skips without CUDA: a `skipif` mark (on the test, its class or module) whose reason
names CUDA, the way every GPU test here is written (`needs_cuda = pytest.mark.skipif(not
torch.cuda.is_available(), reason="CUDA not available")`). Selecting by that reason finds new GPU tests without a
list to keep up to date; on a CPU machine the same selection is what the suite skips.
"""
from __future__ import annotations


def is_cuda_test(item) -> bool:
    return any("cuda" in str(mark.kwargs.get("reason", "")).lower() for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if is_cuda_test(item)]
    dropped = [item for item in items if not is_cuda_test(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
