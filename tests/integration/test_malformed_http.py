"""Malformed KServe-v2 requests over raw HTTP/JSON, as a foreign client (no tritonclient) sends them.

Every one must get a 4xx with a clear message, whichever model it calls: the `recommend` ensemble, or one of its
stages called directly (Triton serves them too). After the suite the server must still answer (no dead stub).
"""
import json

import numpy as np
import pytest

from .conftest import MAX_K, TENANT
from .kserve_raw import (BAD_TENANTS, bytes_elements, infer_binary, infer_json, post, recommend_inputs, replace,
                         stub_processes, tensor)

pytestmark = pytest.mark.integration

OK = recommend_inputs()

ENSEMBLE_CASES = {
    # Triton checks these against config.pbtxt before any model runs.
    "K as FP32": (replace(OK, "K", datatype="FP32", data=[5.0]), "data-type is 'FP32', but model 'recommend' expects"),
    "TENANT as INT32": (replace(OK, "TENANT", datatype="INT32", data=[1]), "data-type is 'INT32'"),
    "K of shape [2]": (replace(OK, "K", shape=[2], data=[5, 5]), "unexpected shape for input 'K'"),
    "TENANT of rank 2": (replace(OK, "TENANT", shape=[1, 1]), "unexpected shape for input 'TENANT'"),
    "K missing": (replace(OK, "K"), "missing required input(s) ['K']"),
    "TENANT missing": (replace(OK, "TENANT"), "missing required input(s) ['TENANT']"),
    "no inputs": ([], "expected number of inputs between 4 and 5 but got 0"),   # RECENT_ITEM_IDS is optional
    "unknown extra input": (OK + [tensor("X", "INT32", [1])], "'X'"),
    "two unknown extra inputs": (OK + [tensor("X", "INT32", [1]), tensor("Y", "INT32", [1])],
                                 "expected number of inputs between 4 and 5 but got 6"),
    # The stages' own checks (tapestry/serving/validate.py).
    "empty USER_ID": (recommend_inputs(user=""), "USER_ID is empty"),
    "blank USER_ID": (recommend_inputs(user="  \t "), "USER_ID is empty"),
    "USER_ID with NUL": (recommend_inputs(user="1\x00"), "USER_ID contains control or invisible characters"),
    "RECENT_ITEM_IDS with NUL": (OK + [tensor("RECENT_ITEM_IDS", "BYTES", ["1\x00"])],
                                 "RECENT_ITEM_IDS contains control or invisible characters"),
    "RECENT_ITEM_IDS of 1,001 ids": (OK + [tensor("RECENT_ITEM_IDS", "BYTES", ["1"] * 1001)],
                                     "RECENT_ITEM_IDS has 1001 elements, at most 1000 are allowed"),
    "RECENT_ITEM_IDS as integers": (OK + [tensor("RECENT_ITEM_IDS", "INT32", [1])], "RECENT_ITEM_IDS"),
    "USER_ID with escape sequence": (recommend_inputs(user="\x1b[2J1"), "USER_ID contains control or invisible characters"),
    "USER_ID with a zero-width space": (recommend_inputs(user="1\u200b"), "USER_ID contains control or invisible"),
    "USER_ID of 100k characters": (recommend_inputs(user="1" * 100_000), "USER_ID is 100000 characters long"),
    "USER_ID lone surrogate": (recommend_inputs(user="\udcff"), "USER_ID is not valid UTF-8"),
    "K = 0": (recommend_inputs(k=0), f"K must be between 1 and {MAX_K}, got 0"),
    "K = -1": (recommend_inputs(k=-1), "got -1"),
    "K = max_k + 1": (recommend_inputs(k=MAX_K + 1), f"got {MAX_K + 1}"),
    "K = 10^9": (recommend_inputs(k=10**9), "got 1000000000"),
    "K = 2^31 (wraps in INT32)": (recommend_inputs(k=2**31), "K must be between 1 and"),
    "1001 exclude ids": (recommend_inputs(exclude=["x"] * 1001), "EXCLUDE_ITEM_IDS has 1001 elements, at most 1000"),
    "200k exclude ids": (recommend_inputs(exclude=[str(i) for i in range(200_000)]), "has 200000 elements"),
    "exclude id of 10k characters": (recommend_inputs(exclude=["7" * 10_000]), "EXCLUDE_ITEM_IDS is 10000 characters"),
    "exclude id lone surrogate": (recommend_inputs(exclude=["1", "\udc80"]), "EXCLUDE_ITEM_IDS is not valid UTF-8"),
    **{f"tenant {label}": (recommend_inputs(tenant=value), message) for label, (value, message) in BAD_TENANTS.items()},
}


def _recommend(server, inputs, **extra):
    return infer_json(server.http_url, "recommend", inputs, **extra)


@pytest.mark.parametrize("case", ENSEMBLE_CASES)
def test_malformed_ensemble_request_is_a_400_with_a_clear_message(server, case):
    inputs, message = ENSEMBLE_CASES[case]
    status, answer = _recommend(server, inputs)
    assert status == 400, (status, answer)
    assert message in answer["error"]
    assert len(answer["error"]) < 600  # a huge or hostile value is never echoed whole


def test_invalid_utf8_inside_a_json_string_is_a_400(server):
    body = json.dumps({"inputs": recommend_inputs(user="@@")}).encode().replace(b"@@", b"\xff\xfe")
    status, answer = post(server.http_url, "/v2/models/recommend/infer", body)
    assert status == 400 and "USER_ID is not valid UTF-8: b'\\xff\\xfe'" in answer["error"]


BINARY_OK = {"TENANT": bytes_elements(TENANT.encode()), "USER_ID": bytes_elements(b"1"),
             "K": np.array([5], "<i4").tobytes(), "EXCLUDE_ITEM_IDS": bytes_elements(b"")}
BINARY_CASES = {
    "non-UTF-8 USER_ID": ({"USER_ID": bytes_elements(b"\xc3\x28")}, "USER_ID is not valid UTF-8: b'\\xc3('"),
    "non-UTF-8 TENANT": ({"TENANT": bytes_elements(b"ml\xff100k")}, "TENANT is not valid UTF-8"),
    "non-UTF-8 exclude id": ({"EXCLUDE_ITEM_IDS": bytes_elements(b"1", b"\x80")}, "EXCLUDE_ITEM_IDS is not valid"),
    "string length prefix past the data": ({"USER_ID": b"\xe8\x03\x00\x001"}, "incomplete string data"),
    "K of 2 bytes": ({"K": b"\x05\x00"}, "input byte size mismatch for input 'K'"),
}


@pytest.mark.parametrize("case", BINARY_CASES)
def test_malformed_binary_tensor_is_a_400(server, case):
    """The binary-tensor extension: how arbitrary bytes reach a BYTES input over HTTP."""
    changes, message = BINARY_CASES[case]
    raw = {**BINARY_OK, **changes}
    exclude_count = 2 if "EXCLUDE_ITEM_IDS" in changes else 1
    fields = [("TENANT", "BYTES", [1], raw["TENANT"]), ("USER_ID", "BYTES", [1], raw["USER_ID"]),
              ("K", "INT32", [1], raw["K"]), ("EXCLUDE_ITEM_IDS", "BYTES", [exclude_count], raw["EXCLUDE_ITEM_IDS"])]
    status, answer = infer_binary(server.http_url, "recommend", fields)
    assert status == 400 and message in answer["error"], (status, answer)


def test_other_protocol_errors_are_4xx(server):
    status, answer = _recommend(server, OK, outputs=[{"name": "NOPE"}])
    assert status == 400 and "unexpected inference output 'NOPE'" in answer["error"]
    status, answer = infer_json(server.http_url, "no_such_model", OK)
    assert status == 404 and "unknown model" in answer["error"]
    status, answer = post(server.http_url, "/v2/models/recommend/infer", b"{}",
                          {"Inference-Header-Content-Length": "99999"})
    assert status == 400 and "inference header size" in answer["error"]


def test_well_formed_but_unusual_requests_are_answered(server):
    """Not errors, by design: an unknown user is a cold user (popularity), unknown exclude ids are ignored (the
    client's catalogue may be newer than the export), and an empty exclude list means "exclude nothing"."""
    status, answer = _recommend(server, recommend_inputs(user="never-seen-user"))
    assert status == 200 and _outputs(answer)["STRATEGY"] == ["popularity"]
    status, answer = _recommend(server, recommend_inputs(exclude=["no-such-item", ""]))
    assert status == 200 and len(_outputs(answer)["ITEM_IDS"]) == 5
    status, answer = _recommend(server, recommend_inputs(exclude=[]))
    assert status == 200 and len(_outputs(answer)["ITEM_IDS"]) == 5
    status, answer = _recommend(server, recommend_inputs(user="Zoë-δ-ユーザー"))
    assert status == 200 and _outputs(answer)["STRATEGY"] == ["popularity"]


# Triton 2.51's HTTP frontend answers its own JSON parse errors with 500 before any model runs (the error is
# created as INTERNAL; upstream: triton-inference-server/server#8762, fix proposed in #8773). Not fixable from a
# model. Strict xfail: when a Triton upgrade answers 400, these pass and the marker must go. The server keeps
# answering after them (checked by the last test).
UPSTREAM_500 = pytest.mark.xfail(strict=True, raises=AssertionError,
                                 reason="Triton 2.51 HTTP frontend: JSON parse errors are 500")
PARSE_CASES = {
    "body is not JSON": b"{not json",
    "K given as a JSON string": json.dumps({"inputs": replace(OK, "K", data=["5"])}).encode(),
    "K given as a JSON float": json.dumps({"inputs": replace(OK, "K", data=[1.5])}).encode(),
    "shape [2] with one value": json.dumps({"inputs": replace(OK, "K", shape=[2])}).encode(),
    "TENANT given as a JSON number": json.dumps({"inputs": replace(OK, "TENANT", data=[7])}).encode(),
    "unpaired high surrogate": json.dumps({"inputs": recommend_inputs(user="\ud800")}).encode(),
}


@UPSTREAM_500
@pytest.mark.parametrize("case", PARSE_CASES)
def test_unparsable_json_is_a_400(server, case):
    status, answer = post(server.http_url, "/v2/models/recommend/infer", PARSE_CASES[case])
    assert answer["error"]  # a message in every case
    assert status == 400, (status, answer)


# --- the stages, called directly: each checks the tenant and its inputs itself -------------------------------

@pytest.fixture(scope="module")
def stage_calls(exported):
    """A valid direct call of each stage, built from the export's own sizes."""
    manifest = json.loads((exported[0].artifact_dir / "manifest.json").read_text())
    dim, n, attrs, max_len = (manifest[k] for k in ("embedding_dim", "num_items", "num_user_attrs", "max_len"))
    t = tensor("TENANT", "BYTES", [TENANT])
    return {
        "feature_lookup": [t, tensor("USER_ID", "BYTES", ["1"]), tensor("EXCLUDE_ITEM_IDS", "BYTES", [""])],
        "user_encoder": [t, tensor("HISTORY", "INT64", [0] * (max_len - 2) + [1, 2]), tensor("USER_KIND", "INT32", [1])],
        "retrieval": [t, tensor("USER_EMB", "FP32", [0.1] * dim, shape=[1, dim]), tensor("SEEN", "INT64", [0]),
                      tensor("EXCLUDE", "INT64", [0])],
        "filter": [t, tensor("CANDIDATES", "INT64", [3, 2, 1]), tensor("CANDIDATE_SCORES", "FP32", [3.0, 2.0, 1.0]),
                   tensor("SEEN", "INT64", [0, 2]), tensor("EXCLUDE", "INT64", [0])],
        "rerank": [t, tensor("FILTERED", "INT64", [3, 1]), tensor("FILTERED_SCORES", "FP32", [2.0, 1.0]),
                   tensor("HISTORY", "INT64", [0] * (max_len - 1) + [2]), tensor("SEEN", "INT64", [0, 2]),
                   tensor("USER_ATTRS", "FP32", [0.0] * attrs), tensor("USER_KIND", "INT32", [1]),
                   tensor("K", "INT32", [2])],
        "_sizes": (dim, n, attrs, max_len),
    }


STAGES = ["feature_lookup", "user_encoder", "retrieval", "filter", "rerank"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_valid_direct_stage_call_is_answered(server, stage_calls, stage):
    status, answer = infer_json(server.http_url, stage, stage_calls[stage])
    assert status == 200, answer


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("tenant", ["intruder", "../ml100k", "", "ml100k\u200b"])
def test_a_direct_stage_call_for_another_tenant_is_a_400(server, stage_calls, stage, tenant):
    status, answer = infer_json(server.http_url, stage, replace(stage_calls[stage], "TENANT", data=[tenant]))
    assert status == 400 and "tenant" in answer["error"].lower(), answer
    status, answer = infer_json(server.http_url, stage, replace(stage_calls[stage], "TENANT"))
    assert status == 400 and "missing required input(s) ['TENANT']" in answer["error"], answer


def _stage_cases(sizes):
    dim, n, attrs, max_len = sizes
    return [
        # Was a 500 "retrieval failed: AssertionError" (the vector reached FAISS with the wrong dimension).
        ("retrieval", "USER_EMB", {"data": [1.0, 2.0], "shape": [1, 2]}, f"USER_EMB must have shape [1..64, {dim}]"),
        ("retrieval", "USER_EMB", {"data": [], "shape": [0, dim]}, f"got [0, {dim}]"),
        ("retrieval", "USER_EMB", {"data": [0.5] * (65 * dim), "shape": [65, dim]}, f"got [65, {dim}]"),
        ("rerank", "USER_KIND", {"data": [9], "shape": [1]}, "USER_KIND must be one of [0, 1, 2], got 9"),
        ("retrieval", "SEEN", {"data": [n + 5], "shape": [1]}, f"SEEN holds 1 item index(es) outside 0..{n - 1}"),
        ("retrieval", "SEEN", {"data": [0] * (n + 1), "shape": [n + 1]}, f"at most {n} are allowed"),
        ("user_encoder", "HISTORY", {"data": [999_999], "shape": [1]}, "HISTORY holds 1 item index(es) outside"),
        ("user_encoder", "HISTORY", {"data": [-3], "shape": [1]}, "outside"),
        ("user_encoder", "HISTORY", {"data": [1] * (max_len + 1), "shape": [max_len + 1]}, f"at most {max_len}"),
        ("filter", "CANDIDATE_SCORES", {"data": [1.0], "shape": [1]}, "CANDIDATE_SCORES must have at least 3"),
        ("filter", "CANDIDATES", {"data": [1, 2, n], "shape": [3]}, "CANDIDATES holds 1 item index(es)"),
        ("rerank", "FILTERED", {"data": [3, 999_999], "shape": [2]}, "FILTERED holds 1 item index(es)"),
        ("rerank", "USER_ATTRS", {"data": [0.0] * (attrs + 1), "shape": [attrs + 1]}, f"at most {attrs} are allowed"),
        ("rerank", "K", {"data": [0], "shape": [1]}, "K must be between 1 and"),
        ("feature_lookup", "USER_ID", {"data": [""], "shape": [1]}, "USER_ID is empty"),
    ]


@pytest.mark.parametrize("index", range(15))
def test_malformed_direct_stage_call_is_a_400(server, stage_calls, index):
    stage, name, change, message = _stage_cases(stage_calls["_sizes"])[index]
    status, answer = infer_json(server.http_url, stage, replace(stage_calls[stage], name, **change))
    assert status == 400 and message in answer["error"], (stage, name, status, answer)


def test_the_server_still_answers_after_the_suite(server, exported):
    """Last in this module: all five stubs alive and answering (a crashed stub is not restarted, and its model
    still reports READY: so count the stub processes and send real inferences through all of them)."""
    for _ in range(3):
        status, answer = _recommend(server, recommend_inputs(user=exported[1][0]))
        assert status == 200 and len(_outputs(answer)["ITEM_IDS"]) == 5
    assert sorted(stub_processes(server.pid).values()) == sorted(STAGES)


def _outputs(answer: dict) -> dict:
    return {o["name"]: o["data"] for o in answer["outputs"]}
