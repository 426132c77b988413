"""Malformed KServe-v2 requests over gRPC, sent as raw protobuf messages (any datatype, shape or bytes).

Every one must get INVALID_ARGUMENT with a clear message, on the ensemble and on a stage called directly; after
the suite every stub is alive and answering.
"""
import json
import struct

import grpc
import numpy as np
import pytest

from .conftest import MAX_K, TENANT
from .kserve_raw import (BAD_TENANTS, RawGrpc, bytes_elements, grpc_batch_inputs, grpc_input, grpc_outputs,
                         grpc_recommend_inputs, rows, stub_processes)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rpc(server):
    client = RawGrpc(server.grpc_url)
    yield client
    client.close()


def _with(inputs, new):
    """`inputs` with the input of the same name as `new` replaced (new=str: dropped)."""
    name = new if isinstance(new, str) else new.name
    return [new if i.name == name else i for i in inputs if i.name != name or not isinstance(new, str)]


OK = grpc_recommend_inputs()   # one user: every shape is [1, *the user's shape] (kserve_raw: the batch dimension)
CASES = {
    "K as FP32": (_with(OK, grpc_input("K", "FP32", [1], fp32_contents=[5.0])), "data-type is 'FP32'"),
    "K declared INT32, sent as fp32_contents": (_with(OK, grpc_input("K", "INT32", [1], fp32_contents=[5.0])),
                                                "unexpected explicit tensor data for input tensor 'K'"),
    "K of an unknown datatype": (_with(OK, grpc_input("K", "INT31", [1], int_contents=[5])), "expected datatype"),
    "K of shape [1, 2]": (_with(OK, grpc_input("K", "INT32", [2], int_contents=[5, 5])), "unexpected shape"),
    "K shape [1, 1] with two values": (_with(OK, grpc_input("K", "INT32", [1], int_contents=[5, 5])),
                                       "input byte size mismatch for input 'K'"),
    "K with no data": (_with(OK, grpc_input("K", "INT32", [1])), "unable to find data for input tensor 'K'"),
    "K of shape [1, -1]": (_with(OK, grpc_input("K", "INT32", [-1], int_contents=[5])), "should be specified"),
    # A batch size of -1 is not refused as a wildcard: it just disagrees with the other inputs' 1.
    "K of shape [-1, 1]": (_with(OK, grpc_input("K", "INT32", [-1, 1], batch=None, int_contents=[5])),
                           "input 'K' batch size does not match other inputs"),
    # The batch dimension (max_batch_size 64): it must be there, agree between the inputs, and stay <= 64.
    "K without the batch dimension": (_with(OK, grpc_input("K", "INT32", [1], batch=None, int_contents=[5])),
                                      "unexpected shape for input 'K'"),
    "TENANT of rank 3": (_with(OK, grpc_input("TENANT", "BYTES", [1, 1], bytes_contents=[b"ml100k"])),
                         "Expected [-1,1], got [1,1,1]"),
    "inputs disagree on the batch size": (
        _with(OK, grpc_input("TENANT", "BYTES", [1], batch=2, bytes_contents=[b"ml100k"] * 2)),
        "input 'TENANT' batch size does not match other inputs"),
    "a batch of 65 users": (grpc_batch_inputs([str(u).encode() for u in range(1, 66)]), "batch-size must be <= 64"),
    # A request of several users fails whole when one row is malformed, naming the row (tapestry.serving.batching).
    "batch of 2, row 1 with an empty USER_ID": (grpc_batch_inputs([b"1", b""]), "row 1: USER_ID is empty"),
    "batch of 2, row 1 with non-UTF-8 USER_ID": (grpc_batch_inputs([b"1", b"\xff"]), "row 1: USER_ID is not valid"),
    "batch of 2, row 0 with K = 0": (grpc_batch_inputs([b"1", b"2"], k=[0, 5]), "row 0: K must be between 1 and"),
    "TENANT missing": (_with(OK, "TENANT"), "missing required input(s) ['TENANT']"),
    "empty USER_ID": (grpc_recommend_inputs(user=b""), "USER_ID is empty"),
    "non-UTF-8 USER_ID": (grpc_recommend_inputs(user=b"\xff\xfe"), "USER_ID is not valid UTF-8: b'\\xff\\xfe'"),
    "non-UTF-8 TENANT": (grpc_recommend_inputs(tenant=b"\xe2\x82"), "TENANT is not valid UTF-8"),
    "non-UTF-8 exclude id": (grpc_recommend_inputs(exclude=(b"1", b"\xc0\xaf")), "EXCLUDE_ITEM_IDS is not valid"),
    "USER_ID with a NUL": (grpc_recommend_inputs(user=b"1\x00"), "USER_ID contains control or invisible characters"),
    "K = 0": (grpc_recommend_inputs(k=0), f"K must be between 1 and {MAX_K}, got 0"),
    "K = -7": (grpc_recommend_inputs(k=-7), "got -7"),
    "K = 10^9": (grpc_recommend_inputs(k=10**9), "got 1000000000"),
    "5000 exclude ids": (grpc_recommend_inputs(exclude=[b"1"] * 5000), "EXCLUDE_ITEM_IDS has 5000 elements"),
    **{f"tenant {label}": (grpc_recommend_inputs(tenant=value.encode("utf-8", "surrogatepass")), message)
       for label, (value, message) in BAD_TENANTS.items()},
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_ensemble_request_is_invalid_argument(rpc, case):
    inputs, message = CASES[case]
    code, details = rpc.call("recommend", inputs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert message in details and len(details) < 600


def _raw_inputs():
    return [grpc_input(i.name, i.datatype, list(i.shape), batch=None) for i in OK]   # OK's shapes: batch dim included


RAW_OK = [bytes_elements(TENANT.encode()), bytes_elements(b"1"), struct.pack("<i", 5), bytes_elements(b"")]
RAW_CASES = {
    "K of 2 bytes": ({2: b"\x05\x00"}, "input byte size mismatch for input 'K'"),
    "length prefix past the data": ({1: struct.pack("<I", 99) + b"1"}, "incomplete string data"),
    "non-UTF-8 USER_ID": ({1: bytes_elements(b"\x80abc")}, "USER_ID is not valid UTF-8"),
}


@pytest.mark.parametrize("case", RAW_CASES)
def test_malformed_raw_input_contents_are_invalid_argument(rpc, case):
    changes, message = RAW_CASES[case]
    code, details = rpc.call("recommend", _raw_inputs(), [changes.get(i, raw) for i, raw in enumerate(RAW_OK)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (code, details)


def test_raw_contents_mixed_with_typed_contents_or_missing_are_invalid_argument(rpc):
    code, details = rpc.call("recommend", OK, [b"x"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "contents field must not be specified" in details
    code, details = rpc.call("recommend", _raw_inputs(), RAW_OK[:1])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unable to find data for input tensor" in details
    assert rpc.call("recommend", _raw_inputs(), RAW_OK)[0] == grpc.StatusCode.OK


def _retrieval_inputs(exported, tenant=TENANT.encode(), dim=None):
    manifest = json.loads((exported[0].artifact_dir / "manifest.json").read_text())
    dim = manifest["embedding_dim"] if dim is None else dim
    return [grpc_input("TENANT", "BYTES", [1], bytes_contents=[tenant]),
            grpc_input("USER_EMB", "FP32", [1, dim], fp32_contents=[0.1] * dim),
            grpc_input("SEEN", "INT64", [1], int64_contents=[0]),
            grpc_input("EXCLUDE", "INT64", [1], int64_contents=[0])]


def test_direct_stage_calls_check_tenant_and_inputs(rpc, exported):
    assert rpc.call("retrieval", _retrieval_inputs(exported))[0] == grpc.StatusCode.OK
    code, details = rpc.call("retrieval", _retrieval_inputs(exported, tenant=b"intruder"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tenant 'intruder' is not served" in details
    code, details = rpc.call("retrieval", _retrieval_inputs(exported)[1:])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "missing required input(s) ['TENANT']" in details
    # Was a 500 "retrieval failed: AssertionError": a vector of the wrong dimension reached FAISS.
    code, details = rpc.call("retrieval", _retrieval_inputs(exported, dim=3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "USER_EMB must have shape [1..64, " in details
    kind = grpc_input("USER_KIND", "INT32", [1], int_contents=[1])
    code, details = rpc.call("user_encoder", [grpc_input("TENANT", "BYTES", [1], bytes_contents=[b"../ml100k"]),
                                              grpc_input("HISTORY", "INT64", [1], int64_contents=[1]), kind])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid tenant id" in details
    code, details = rpc.call("user_encoder", [grpc_input("TENANT", "BYTES", [1], bytes_contents=[b"ml100k"]),
                                              grpc_input("HISTORY", "INT64", [1], int64_contents=[10**12]), kind])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "HISTORY holds 1 item index(es) outside" in details


def test_a_malformed_row_fails_the_request_and_names_the_row(rpc, exported):
    """The ensemble prefixes its step's error ("in ensemble 'recommend', "): after it, the message starts with the
    first failed row. A stage called directly answers the row's message as it is."""
    code, details = rpc.call("recommend", grpc_batch_inputs([b"1", b"", b"\x00"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.removeprefix("in ensemble 'recommend', ").startswith("row 1: USER_ID is empty"), details
    # Two users' K = 4 interest vectors to retrieval: USER_EMB [2, 4, D]; row 1 is another tenant's.
    dim = json.loads((exported[0].artifact_dir / "manifest.json").read_text())["embedding_dim"]
    two = [grpc_input("TENANT", "BYTES", [1], batch=2, bytes_contents=[TENANT.encode(), b"intruder"]),
           grpc_input("USER_EMB", "FP32", [4, dim], batch=2, fp32_contents=[0.1] * (2 * 4 * dim)),
           grpc_input("SEEN", "INT64", [1], batch=2, int64_contents=[0, 0]),
           grpc_input("EXCLUDE", "INT64", [1], batch=2, int64_contents=[0, 0])]
    code, details = rpc.call("retrieval", two)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("row 1: tenant 'intruder'"), details
    two[0] = grpc_input("TENANT", "BYTES", [1], batch=2, bytes_contents=[TENANT.encode()] * 2)
    code, response = rpc.call("retrieval", two)
    assert code == grpc.StatusCode.OK, response
    candidates = grpc_outputs(response)["CANDIDATES"]
    assert candidates[0][0] == 2 and rows(*candidates)[0] == rows(*candidates)[1]


def _recommend_ok(rpc, inputs) -> dict:
    code, response = rpc.call("recommend", inputs)
    assert code == grpc.StatusCode.OK, response
    return grpc_outputs(response)


def test_a_request_of_two_users_answers_each_as_alone(rpc, exported):
    """Two users in one request (EXCLUDE_ITEM_IDS [2, n], row 1 padded with b""): ITEM_IDS [2, K], row i exactly
    the answer of a one-user request for user i."""
    users = [exported[1][2].encode(), exported[1][3].encode()]
    excludes = [[b"1", b"50", b"181"], [b""]]
    alone = [_recommend_ok(rpc, grpc_recommend_inputs(user=u, k=6, exclude=e)) for u, e in zip(users, excludes)]
    both = _recommend_ok(rpc, grpc_batch_inputs(users, k=6, excludes=excludes))
    assert both["ITEM_IDS"][0] == [2, 6] and both["STRATEGY"][0] == [2, 1]
    for name in ("ITEM_IDS", "TITLES", "STRATEGY", "IGNORED_ITEMS"):
        assert rows(*both[name]) == [a[name][1] for a in alone], name
    np.testing.assert_allclose(rows(*both["SCORES"]), [a["SCORES"][1] for a in alone], rtol=1e-5, atol=1e-6)
    assert not {b"1", b"50", b"181"} & set(rows(*both["ITEM_IDS"])[0])


def test_unknown_model_is_not_found(rpc):
    code, details = rpc.call("no_such_model", OK)
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)


def test_the_server_still_answers_after_the_suite(rpc, server, exported):
    """Last in this module: all five stubs alive, and real inferences through all of them succeed."""
    for _ in range(3):
        code, response = rpc.call("recommend", grpc_recommend_inputs(user=exported[1][0].encode()))
        assert code == grpc.StatusCode.OK, response
        assert {o.name: list(o.shape) for o in response.outputs}["ITEM_IDS"] == [1, 5]
    assert sorted(stub_processes(server.pid).values()) == [
        "feature_lookup", "filter", "rerank", "retrieval", "user_encoder"]
