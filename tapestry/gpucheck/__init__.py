"""`make gpu-check`: one bounded command for a machine with an NVIDIA GPU (issue 21 item 4).

    python -m tapestry.gpucheck [--out PATH] [--budget 480] [--only a,b] [--require-gpu] [--wheels DIR]

Finds a GPU and a Python whose torch sees it, then runs these steps, each in its own process under its own time
limit (a step over its limit is killed and recorded as "timeout"; the check goes on), inside one overall budget
(default 480 s = 8 min; a step that no longer fits is recorded as "skipped"):

  environment       nvidia-smi, torch/CUDA versions, which optional GPU packages import
  install           the project's requirements that are missing, from pyproject.toml (core deps except torch and
                    numpy, which stay the machine's own, plus the `gpu` extra): from --wheels DIR when given
                    (no network needed), else from the package index
  sampling_compare  cuGraph-PyG vs PyG (CPU) sampling statistics on one skewed graph
                    (tapestry.training.sampling_stats); without a usable PyG CPU sampler, against the stored CPU
                    reference benchmarks/results/sampling-stats-cpu.json
  faiss_compare     FAISS GPU vs CPU exact top-100 on random vectors (overlap)
  etl_compare       the ETL of one synthetic tenant with the Polars GPU engine vs the CPU engine
                    (tapestry.etl.compare.compare_artifacts)
  benchmark         one training epoch CPU vs CUDA; FAISS search p50/p99 at 1M items CPU vs GPU
  cuda_tests        every test that skips without CUDA (selected by its skip reason), run with pytest
  serving_cuda      the Triton integration tests with the serving stages on CUDA (TAPESTRY_SERVING_DEVICE=cuda)

The summary JSON (default $OUT/gpu-check.json when OUT is set, else benchmarks/results/gpu-check.json) is
rewritten atomically after every step, so a run cut short still leaves every finished step's result.

Exit codes: 0 the check ran and no step failed (also: no GPU, reported as {"gpu": false, "reason": ...});
1 a step failed or timed out; 2 bad arguments; 3 no GPU and --require-gpu was given.
"""
