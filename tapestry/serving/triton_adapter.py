"""Turns a Stage into a Triton python-backend model class; the model.py files in triton_models/ are one line.

Artifacts are found through the model config parameter ARTIFACT_DIR, resolved relative to the model repository's
root (the exported layout is <export>/model_repository + <export>/artifacts, so the default is "../artifacts"),
or through the TAPESTRY_ARTIFACT_DIR environment variable.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tapestry.serving.auth import KeyGuard, KeyRefused
from tapestry.serving.batching import request_error, split_rows, stack_rows
from tapestry.serving.metrics import StageMetrics, registry_for_triton
from tapestry.serving.stage import RequestError, Stage, Unavailable, export_manifest

STAGE_ERROR = "{stage} failed: {kind}: {msg}"


def resolve_artifact_dir(model_dir: str, params: dict) -> Path:
    env = os.environ.get("TAPESTRY_ARTIFACT_DIR")
    if env:
        return Path(env)
    raw = params.get("ARTIFACT_DIR", {}).get("string_value", "../artifacts")
    path = Path(raw)
    return path if path.is_absolute() else (Path(model_dir).parent / path).resolve()


def check_config(stage_cls: type[Stage], model_config: dict) -> None:
    """The model's config.pbtxt must declare every input the stage reads. Triton passes a model only its declared
    inputs, so a repository exported by an older tapestry (before every stage took TENANT) would load and then
    refuse every request: fail at load instead, saying what to do. An optional input may be undeclared: the stage
    then never receives it and answers as for a request without it (an export older than EVENT_TYPES)."""
    declared = {i["name"] for i in model_config.get("input", [])}
    missing = [name for name in stage_cls.inputs if name not in declared and name not in stage_cls.optional_inputs]
    if missing:
        raise RuntimeError(f"model '{stage_cls.name}': config.pbtxt does not declare input(s) {missing}; the model "
                           "repository was exported by an older tapestry: run `tapestry export` again")


def triton_model(stage_cls: type[Stage]):
    class TritonPythonModel:
        def initialize(self, args):
            import triton_python_backend_utils as pb_utils

            self.pb = pb_utils
            # Each model instance is its own stub process and one request is a few small matmuls: more threads
            # per process only add contention between the five models on the same cores.
            import faiss
            import torch

            torch.set_num_threads(1)
            faiss.omp_set_num_threads(1)
            cfg = json.loads(args["model_config"])
            check_config(stage_cls, cfg)
            artifact_dir = resolve_artifact_dir(args["model_repository"], cfg.get("parameters", {}))
            self.stage = stage_cls.from_artifacts(artifact_dir)
            # Every stage checks the request's API key (tapestry.serving.auth): Triton cannot hide a stage.
            self.guard = KeyGuard.for_stage(export_manifest(artifact_dir)["tenant"], artifact_dir)
            self.batched = int(cfg.get("max_batch_size", 0)) > 0   # tensors carry a leading batch dimension
            self.out_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in cfg["output"]}
            # Per-tenant Prometheus series on Triton's metrics port (tapestry.serving.metrics).
            self.metrics = StageMetrics(self.stage.name, self.stage.tenant, registry_for_triton(pb_utils))

        def execute(self, requests):
            # Every queued request's rows go to the stage in one call (tapestry.serving.batching); a request whose
            # tensors are missing or mis-shaped, or one of whose rows fails, gets its own error.
            pb, batched = self.pb, self.batched
            rows, spans, errors = [], [], {}
            for r, request in enumerate(requests):
                try:
                    try:   # before any tensor is read: a refused request learns nothing of the tenant
                        self.guard.check(request.parameters())
                    except KeyRefused as e:
                        raise RequestError(str(e)) from None
                    tensors = {}
                    for name in self.stage.inputs:
                        tensor = pb.get_input_tensor_by_name(request, name)
                        if tensor is None:
                            if name in self.stage.optional_inputs:
                                continue
                            raise RequestError(f"missing input tensor {name}")
                        tensors[name] = tensor.as_numpy()
                    request_rows = split_rows(tensors, batched)
                except RequestError as e:
                    errors[r] = e
                    request_rows = []
                spans.append((len(rows), len(request_rows)))
                rows.extend(request_rows)
            started = time.perf_counter()
            try:
                results = self.stage.batch(rows) if rows else []
            except Exception as e:  # noqa: BLE001 - a bug in a vectorised batch: every request of it reports it
                results = [e] * len(rows)
            self.metrics.record(results, time.perf_counter() - started, refused=len(errors))
            responses = []
            for r, (first, count) in enumerate(spans):
                err = errors.get(r) or request_error(results, first, count)
                if err is None:
                    out = stack_rows(results[first:first + count], self.stage.outputs, batched)
                    responses.append(pb.InferenceResponse(output_tensors=[
                        pb.Tensor(name, out[name].astype(self.out_dtypes[name])) for name in self.stage.outputs
                        if name in self.out_dtypes]))   # an older export's config may lack a newer output (REASONS)
                elif isinstance(err, RequestError):
                    responses.append(pb.InferenceResponse(error=pb.TritonError(str(err), pb.TritonError.INVALID_ARG)))
                elif isinstance(err, Unavailable):   # the online store is down: HTTP 503 / gRPC UNAVAILABLE
                    responses.append(pb.InferenceResponse(error=pb.TritonError(str(err), pb.TritonError.UNAVAILABLE)))
                else:  # report, never crash the stub
                    msg = STAGE_ERROR.format(stage=self.stage.name, kind=type(err).__name__, msg=err)
                    responses.append(pb.InferenceResponse(error=pb.TritonError(msg, pb.TritonError.INTERNAL)))
            return responses

        def finalize(self):
            # Called on unload, just before the stub's interpreter shuts down. Py_Finalize then runs full garbage
            # collections over every object torch, faiss and polars created: seconds per stub on 2 busy cores,
            # which made Triton hit its exit timeout (10 s) on every stop. Frozen objects are skipped by those
            # collections; the process exits right after, so nothing is leaked.
            import gc

            self.metrics.close()   # send the metric updates still pending
            gc.freeze()

    TritonPythonModel.__name__ = f"TritonPythonModel[{stage_cls.__name__}]"
    return TritonPythonModel
