"""The A/B router: a python-backend model (`<tenant>__router__<experiment>`) that the tenant's `<tenant>__recommend`
ensemble calls as its one step while an experiment runs (tapestry.serving.experiment writes both).

Per row of a request it picks the user's arm (tapestry.serving.ab.Split: a stable hash of the user id), forwards
that row whole to the arm's own ensemble `<tenant>__recommend__<arm>` with a BLS request (the request's
parameters, hence the client's `tapestry-api-key`, passed on: every stage of the arm checks it as usual), and
answers the arm's outputs plus ARM. Each answered row is appended to the experiment's exposure log and named in the
server's log (INFO: tenant, user, arm, number of items). A failed arm request is answered with its error and code,
and is not logged as an exposure.

Its configuration is one JSON parameter, EXPERIMENT: {experiment, tenant, arms, percents, ensembles (arm -> model),
exposure_log}.
"""
from __future__ import annotations

import json

import numpy as np

from tapestry.serving.ab import ExposureLog, Split
from tapestry.serving.batching import pad_stack
from tapestry.serving.metrics import registry_for_triton

ARM = "ARM"


def _text(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)


def _parameters(raw) -> dict:
    """The request's parameters as BLS takes them (str / int / bool values)."""
    if not raw:
        return {}
    try:
        params = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in params.items() if isinstance(k, str) and isinstance(v, (str, int, bool))}


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb

        self.pb = pb
        cfg = json.loads(args["model_config"])
        exp = json.loads(cfg["parameters"]["EXPERIMENT"]["string_value"])
        self.split = Split.from_dict(exp)
        self.tenant, self.ensembles = exp["tenant"], dict(exp["ensembles"])
        self.exposures = ExposureLog(exp["exposure_log"])
        self.batched = int(cfg.get("max_batch_size", 0)) > 0
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"] if o["name"] != ARM]
        self.metrics = registry_for_triton(pb)   # arm counts on the metrics port (tapestry.serving.metrics)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except _ArmError as e:
                responses.append(self.pb.InferenceResponse(error=e.error))
            except Exception as e:  # noqa: BLE001 - answered, never crashes the stub
                responses.append(self.pb.InferenceResponse(error=self.pb.TritonError(
                    f"router failed: {type(e).__name__}: {e}", self.pb.TritonError.INTERNAL)))
        return responses

    def _answer(self, request):
        pb = self.pb
        tensors = {}
        for name in self.inputs:
            t = pb.get_input_tensor_by_name(request, name)
            if t is not None:
                tensors[name] = t.as_numpy()
        if "USER_ID" not in tensors:
            return pb.InferenceResponse(error=pb.TritonError("missing input tensor USER_ID",
                                                             pb.TritonError.INVALID_ARG))
        params = _parameters(request.parameters())
        rows = tensors["USER_ID"].shape[0] if self.batched else 1
        per_row: dict[str, list] = {name: [] for name in self.outputs + [ARM]}
        for i in range(rows):
            row = {n: (a[i:i + 1] if self.batched else a) for n, a in tensors.items()}
            user = _text(np.asarray(row["USER_ID"]).reshape(-1)[0])
            arm = self.split.arm(user)
            inputs = [pb.Tensor(n, a) for n, a in row.items()]
            kwargs = {"parameters": params} if params else {}
            reply = pb.InferenceRequest(model_name=self.ensembles[arm], inputs=inputs,
                                        requested_output_names=self.outputs, **kwargs).exec()
            if reply.has_error():
                raise _ArmError(self._error(reply.error(), arm))
            out = {n: pb.get_output_tensor_by_name(reply, n).as_numpy() for n in self.outputs}
            for n in self.outputs:
                per_row[n].append(out[n][0] if self.batched else out[n])
            per_row[ARM].append(np.array([arm.encode("utf-8")], dtype=np.object_))
            items = [_text(x) for x in np.asarray(out["ITEM_IDS"]).reshape(-1) if _text(x)]
            self.exposures.write(self.split.experiment, arm, user, items)
            self.metrics.add("tapestry_arm_requests_total", (self.tenant, self.split.experiment, arm), 1)
            pb.Logger.log_info(f"[experiment {self.split.experiment}] tenant={self.tenant} user={user} arm={arm} "
                               f"items={len(items)}")
        result = {n: (pad_stack(v) if self.batched else v[0]) for n, v in per_row.items()}
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, np.asarray(a)) for n, a in result.items()])

    def _error(self, error, arm: str):
        pb = self.pb
        code = error.code() if callable(getattr(error, "code", None)) else pb.TritonError.INTERNAL
        return pb.TritonError(f"arm {arm}: {error.message()}", code)

    def finalize(self):
        self.exposures.close()
        getattr(self.metrics, "close", lambda: None)()   # send the arm counts still pending


class _ArmError(Exception):
    def __init__(self, error):
        super().__init__(str(error))
        self.error = error
