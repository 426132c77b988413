"""A foreign client: KServe-v2 inference requests built by hand, without tritonclient's request builders.

HTTP goes through http.client with JSON bodies (and the binary-tensor extension, which is how non-UTF-8 bytes
reach a BYTES input); gRPC sends the protobuf messages of the KServe-v2 service directly, so any datatype, shape
or payload can be sent, valid or not.

Batch dimension: every exported model has `max_batch_size > 0`, so every tensor on the wire carries a leading batch
dimension. One request = a batch of one user, as RecommendClient sends: the helpers take ONE user's shape (what the
stages see, e.g. [1] for TENANT, [n] for EXCLUDE_ITEM_IDS, [K, D] for USER_EMB) and send [1, *shape]. A request
of several users passes `batch=b` (shape [b, *shape], the data of all rows flattened row-major), and a case that
must send a shape exactly as written (a wrong batch dimension, a rank the server must refuse) passes `batch=None`
or, in `replace`, `wire_shape=`.
"""
from __future__ import annotations

import http.client
import json
import struct
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def wire_shape(shape, batch: int | None = 1) -> list[int]:
    """The shape sent for one user's `shape` in a request of `batch` users: [batch, *shape] (batch=None: as is)."""
    return list(shape) if batch is None else [batch, *shape]


def tensor(name: str, datatype: str, data, shape=None, batch: int | None = 1) -> dict:
    """One JSON input of a request of `batch` users (default: one); `shape` is one user's, [len(data) // batch]
    by default, and goes on the wire as [batch, *shape] (batch=None: `shape` is sent as it is)."""
    if shape is None:
        shape = [len(data) // (batch or 1)]
    return {"name": name, "datatype": datatype, "shape": wire_shape(shape, batch), "data": data}


def recommend_inputs(tenant="ml100k", user="1", k=5, exclude=("",)) -> list[dict]:
    """A valid request of one user (shapes [1, 1] and [1, len(exclude)])."""
    return [tensor("TENANT", "BYTES", [tenant]), tensor("USER_ID", "BYTES", [user]), tensor("K", "INT32", [k]),
            tensor("EXCLUDE_ITEM_IDS", "BYTES", list(exclude))]


def batch_inputs(users, tenant="ml100k", k=5, excludes=None) -> list[dict]:
    """A valid request of len(users) users: TENANT [b, 1], USER_ID [b, 1], K [b, 1] (`k`: one for all or one per
    user), EXCLUDE_ITEM_IDS [b, n] (`excludes`: each user's list, padded with "" to the longest: "" excludes
    nothing, so a row's answer is that of its user alone)."""
    b = len(users)
    ks = [k] * b if isinstance(k, int) else list(k)
    excludes = [[""]] * b if excludes is None else [list(e) or [""] for e in excludes]
    n = max(len(e) for e in excludes)
    rows = [e + [""] * (n - len(e)) for e in excludes]
    return [tensor("TENANT", "BYTES", [tenant] * b, [1], batch=b),
            tensor("USER_ID", "BYTES", list(users), [1], batch=b), tensor("K", "INT32", ks, [1], batch=b),
            tensor("EXCLUDE_ITEM_IDS", "BYTES", [x for row in rows for x in row], [n], batch=b)]


def replace(inputs: list[dict], name: str, **changes) -> list[dict]:
    """`inputs` with input `name` changed (no changes: dropped). `shape=` is one user's shape: the input keeps its
    batch dimension in front of it; `wire_shape=` is the shape sent, as it is."""
    out = []
    for item in inputs:
        if item["name"] != name:
            out.append(item)
        elif changes:
            changes = dict(changes)
            if "shape" in changes:
                changes["shape"] = [item["shape"][0], *changes["shape"]]
            if "wire_shape" in changes:
                changes["shape"] = list(changes.pop("wire_shape"))
            out.append({**item, **changes})
    return out


def outputs_json(answer: dict) -> dict[str, tuple[list[int], list]]:
    """name -> (shape, data flattened row-major) of a JSON answer's outputs."""
    return {o["name"]: (o["shape"], o["data"]) for o in answer["outputs"]}


def rows(shape: list[int], data: list) -> list[list]:
    """A [b, n] output's data as b rows of n."""
    b, n = shape
    return [list(data[i * n:(i + 1) * n]) for i in range(b)]


def post(http_url: str, path: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """POST `body`; (status, JSON answer). Every answer of Triton's KServe endpoints is a JSON object."""
    host, port = http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if not any(k.lower() == "content-type" for k, _ in pairs):
        pairs.insert(0, ("Content-Type", "application/json"))
    try:
        conn.putrequest("POST", path)
        for name, value in [*pairs, ("Content-Length", str(len(body)))]:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(raw.decode("utf-8", "replace"))


def infer_json(http_url: str, model: str, inputs: list[dict], headers=None, **extra) -> tuple[int, dict]:
    """`headers`: a dict, or a list of (name, value) pairs (a header may then be sent twice)."""
    return post(http_url, f"/v2/models/{model}/infer", json.dumps({"inputs": inputs, **extra}).encode(), headers)


def bytes_elements(*items: bytes) -> bytes:
    """BYTES tensor in the binary extension: each element is a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def infer_binary(http_url: str, model: str, fields: list[tuple[str, str, list[int], bytes]],
                 batch: int | None = 1) -> tuple[int, dict]:
    """Every input as raw bytes after the JSON header (KServe binary-tensor extension); each field's shape is one
    user's (sent as [batch, *shape]; batch=None: as it is)."""
    header = {"inputs": [{"name": n, "datatype": dt, "shape": wire_shape(shape, batch),
                          "parameters": {"binary_data_size": len(raw)}} for n, dt, shape, raw in fields]}
    head = json.dumps(header).encode()
    body = head + b"".join(raw for *_, raw in fields)
    return post(http_url, f"/v2/models/{model}/infer", body,
                {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})


def grpc_input(name: str, datatype: str, shape: list[int], batch: int | None = 1, **contents):
    """`shape`: one user's, sent as [batch, *shape] (batch=None: as it is). contents: bytes_contents=[...],
    int_contents=[...], fp32_contents=[...], int64_contents=[...] (all rows, flattened); none when the data goes
    in the request's raw_input_contents."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                            shape=wire_shape(shape, batch))
    if contents:
        tensor.contents.CopyFrom(service_pb2.InferTensorContents(**contents))
    return tensor


def grpc_recommend_inputs(tenant=b"ml100k", user=b"1", k=5, exclude=(b"",)) -> list:
    return [grpc_input("TENANT", "BYTES", [1], bytes_contents=[tenant]),
            grpc_input("USER_ID", "BYTES", [1], bytes_contents=[user]),
            grpc_input("K", "INT32", [1], int_contents=[k]),
            grpc_input("EXCLUDE_ITEM_IDS", "BYTES", [len(exclude)], bytes_contents=list(exclude))]


def grpc_batch_inputs(users, tenant=b"ml100k", k=5, excludes=None) -> list:
    """gRPC twin of `batch_inputs` (bytes): a valid request of len(users) users."""
    b = len(users)
    ks = [k] * b if isinstance(k, int) else list(k)
    excludes = [[b""]] * b if excludes is None else [list(e) or [b""] for e in excludes]
    n = max(len(e) for e in excludes)
    flat = [x for e in excludes for x in e + [b""] * (n - len(e))]
    return [grpc_input("TENANT", "BYTES", [1], batch=b, bytes_contents=[tenant] * b),
            grpc_input("USER_ID", "BYTES", [1], batch=b, bytes_contents=list(users)),
            grpc_input("K", "INT32", [1], batch=b, int_contents=ks),
            grpc_input("EXCLUDE_ITEM_IDS", "BYTES", [n], batch=b, bytes_contents=flat)]


def grpc_outputs(response) -> dict[str, tuple[list[int], list]]:
    """name -> (shape, data flattened) of a ModelInferResponse (raw_output_contents: what Triton sends)."""
    import numpy as np

    out = {}
    for o, raw in zip(response.outputs, response.raw_output_contents):
        if o.datatype == "BYTES":
            data, i = [], 0
            while i < len(raw):
                (size,) = struct.unpack_from("<I", raw, i)
                data.append(raw[i + 4:i + 4 + size])
                i += 4 + size
        else:
            data = np.frombuffer(raw, {"FP32": "<f4", "INT32": "<i4", "INT64": "<i8"}[o.datatype]).tolist()
        out[o.name] = (list(o.shape), data)
    return out


class RawGrpc:
    """ModelInfer over a plain channel: `call(model, inputs, raw=[])` -> (grpc.StatusCode, details or response)."""

    def __init__(self, grpc_url: str):
        self.channel = grpc.insecure_channel(grpc_url, options=[("grpc.max_send_message_length", 64 << 20)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def call(self, model: str, inputs: list, raw: list[bytes] = (), timeout: float = 60, metadata=(),
             parameters: dict | None = None):
        """`metadata`: (name, value) pairs (a name may repeat); `parameters`: string request parameters."""
        request = service_pb2.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=list(raw))
        for name, value in (parameters or {}).items():
            request.parameters[name].string_param = value
        try:
            return grpc.StatusCode.OK, self.stub.ModelInfer(request, timeout=timeout, metadata=list(metadata))
        except grpc.RpcError as e:
            return e.code(), e.details()

    def close(self) -> None:
        self.channel.close()


# Tenant strings no repository serves, with the message the stages answer. '\u0430' is Cyrillic a, 'ｍ' fullwidth.
BAD_TENANTS = {
    "of another tenant": ("intruder", "tenant 'intruder' is not served by this model repository"),
    "upper case": ("ML100K", "tenant 'ML100K' is not served"),
    "path traversal": ("../ml100k", "TENANT '../ml100k' is not a valid tenant id"),
    "with a slash": ("ml100k/../other", "is not a valid tenant id"),
    "with a backslash": ("ml100k\\x", "is not a valid tenant id"),
    "Cyrillic look-alike": ("ml100\u043a", "TENANT 'ml100\\u043a' is not a valid tenant id"),
    "fullwidth look-alike": ("\uff4dl100k", "TENANT '\\uff4dl100k' is not a valid tenant id"),
    "zero-width space": ("ml100k\u200b", "TENANT 'ml100k\\u200b' is not a valid tenant id"),
    "trailing space": ("ml100k ", "TENANT 'ml100k ' is not a valid tenant id"),
    "trailing newline": ("ml100k\n", "TENANT 'ml100k\\n' is not a valid tenant id"),
    "empty": ("", "TENANT '' is not a valid tenant id"),
    "100k characters": ("t" * 100_000, "... (100000 characters) is not a valid tenant id"),
}


def stub_processes(server_pid: int) -> dict[int, str]:
    """pid -> model of every python-backend stub the server runs (a crashed stub is not restarted: it is gone)."""
    stubs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if ppid == server_pid and cmdline and cmdline[0].endswith(b"triton_python_backend_stub"):
            # argv[1] is <repository>/<model>/<version>/model.py
            stubs[int(stat.parent.name)] = Path(cmdline[1].decode(errors="replace")).parts[-3]
    return stubs
