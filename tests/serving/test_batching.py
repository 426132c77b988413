"""Dynamic batching without Triton: rows in and out of a request, vectorised stages equal to per-user calls, the
adapter's execute over several queued requests (with a stand-in for Triton's pb_utils), and the config rewrite."""
import shutil
import types

import numpy as np
import pytest
import torch

from tapestry.ensembles.export import TEMPLATES, build_faiss_index
from tapestry.serving.batching import (DEFAULT_MAX_BATCH_SIZE, MODELS, pad_stack, request_error, set_max_batch_size,
                                       split_rows, stack_rows)
from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.retrieval import Retrieval
from tapestry.serving.stage import USER_COLD, USER_KNOWN, USER_SESSION, RequestError, bytes_array
from tapestry.serving.tenant_repository import read_config
from tapestry.serving.metrics import MemoryRegistry, StageMetrics
from tapestry.serving.triton_adapter import triton_model
from tapestry.serving.user_encoder import UserEncoder

TENANT = bytes_array(["acme"])


def test_split_rows_slices_every_input_along_the_batch_dimension():
    t = {"TENANT": np.array([[b"acme"], [b"acme"]], dtype=np.object_), "SEEN": np.array([[0, 3], [0, 0]])}
    rows = split_rows(t, batched=True)
    assert len(rows) == 2 and rows[0]["SEEN"].tolist() == [0, 3] and rows[1]["TENANT"].tolist() == [b"acme"]
    assert split_rows(t, batched=False) == [t]     # unbatched: the request is one row, as it is


@pytest.mark.parametrize("tensors", [
    {"TENANT": np.zeros((2, 1)), "SEEN": np.zeros((1, 3))},      # the inputs disagree on the batch size
    {"TENANT": np.zeros((0, 1))},                                 # no row at all
    {"TENANT": np.array(1.0)},                                    # no batch dimension
])
def test_split_rows_refuses_inconsistent_batch_sizes(tensors):
    with pytest.raises(RequestError, match="same batch size"):
        split_rows(tensors, batched=True)


def test_pad_stack_pads_with_the_contracts_padding_values():
    ids = pad_stack([np.array([b"a", b"b"], dtype=np.object_), np.array([b"c"], dtype=np.object_)])
    assert ids.tolist() == [[b"a", b"b"], [b"c", b""]]
    assert pad_stack([np.array([3, 4, 5]), np.array([7])]).tolist() == [[3, 4, 5], [7, 0, 0]]
    emb = pad_stack([np.ones((4, 2), np.float32), np.ones((1, 2), np.float32)])
    assert emb.shape == (2, 4, 2) and not emb[1, 1:].any()       # a cold user's one row next to K = 4 interests
    out = stack_rows([{"A": np.array([1]), "B": np.array([2])}], ("A",), batched=True)
    assert list(out) == ["A"] and out["A"].shape == (1, 1)


def test_request_error_names_the_failed_row_only_when_the_request_had_several():
    results = [{}, RequestError("USER_ID is empty"), ValueError("bug")]
    assert str(request_error(results, 0, 2)) == "row 1: USER_ID is empty"
    assert str(request_error(results, 1, 1)) == "USER_ID is empty"
    assert isinstance(request_error(results, 2, 1), ValueError)
    assert request_error(results, 0, 1) is None


def _encoders():
    from tapestry.models.sequential.sasrec import SASRec

    torch.manual_seed(0)
    served = SASRec(num_items=8, hidden_dim=4, num_blocks=1, max_len=5, dropout=0.0)
    session = SASRec(num_items=8, hidden_dim=4, num_blocks=1, max_len=3, dropout=0.0)
    return UserEncoder("acme", served, session)


def _enc_row(history, kind=USER_KNOWN, tenant=TENANT):
    return {"TENANT": tenant, "HISTORY": np.array(history), "USER_KIND": np.array([kind], np.int32)}


def test_user_encoder_batch_equals_one_call_per_user_and_isolates_a_bad_row():
    enc = _encoders()
    rows = [_enc_row([0, 0, 1, 2, 3]), _enc_row([0, 0, 0, 4, 5], USER_SESSION), _enc_row([0, 0, 0, 0, 0], USER_COLD),
            _enc_row([0, 0, 0, 0, 99]), _enc_row([1, 1, 2, 6, 7]), _enc_row([0, 3], tenant=bytes_array(["evil"]))]
    out = enc.batch(rows)
    assert isinstance(out[3], RequestError) and "HISTORY" in str(out[3])
    assert isinstance(out[5], RequestError) and "evil" in str(out[5])
    for i in (0, 1, 2, 4):
        np.testing.assert_allclose(out[i]["USER_EMB"], enc(rows[i])["USER_EMB"], rtol=1e-5, atol=1e-6)
    assert not out[2]["USER_EMB"].any()
    assert not np.allclose(out[0]["USER_EMB"], out[1]["USER_EMB"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_user_encoder_on_cuda_answers_like_the_cpu():
    cpu = _encoders()
    gpu = UserEncoder("acme", cpu.model, cpu.session_model, device="cuda")
    rows = [_enc_row([0, 0, 1, 2, 3]), _enc_row([0, 0, 0, 4, 5], USER_SESSION)]
    cpu = _encoders()      # fresh CPU copies: the GPU encoder moved the modules
    for a, b in zip(gpu.batch(rows), cpu.batch(rows)):
        np.testing.assert_allclose(a["USER_EMB"], b["USER_EMB"], rtol=1e-4, atol=1e-5)


def _retrieval():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb[0] = 0
    return Retrieval("acme", build_faiss_index(emb), rng.integers(1, 100, 40).astype(np.float32), num_candidates=5)


def _ret_row(emb, seen=(0,), tenant=TENANT):
    return {"TENANT": tenant, "USER_EMB": np.asarray(emb, np.float32), "SEEN": np.array(seen),
            "EXCLUDE": np.array([0])}


def test_retrieval_batch_is_one_search_equal_to_one_search_per_user():
    r = _retrieval()
    rng = np.random.default_rng(1)
    rows = [_ret_row(rng.normal(size=(1, 8))), _ret_row(rng.normal(size=(4, 8)), seen=[0, 1, 2, 3, 4, 5, 6]),
            _ret_row(np.zeros((1, 8))), _ret_row(rng.normal(size=(1, 7))), _ret_row(rng.normal(size=(2, 8)))]
    searches = []
    search = r.index.search
    r.index.search = lambda x, k: searches.append(x.shape[0]) or search(x, k)
    out = r.batch(rows)
    assert searches == [1 + 4 + 2]                         # every interest vector of every warm row, one call
    assert isinstance(out[3], RequestError) and "USER_EMB" in str(out[3])
    for i in (0, 1, 2, 4):
        single = r(rows[i])
        assert out[i]["CANDIDATES"].tolist() == single["CANDIDATES"].tolist()
        np.testing.assert_allclose(out[i]["CANDIDATE_SCORES"], single["CANDIDATE_SCORES"], rtol=1e-6)
    assert out[1]["CANDIDATES"].size == 5 + 7 + 1          # it asks for enough to survive its seen set
    assert out[2]["CANDIDATES"].tolist() == r._popular_order[:5 + 1 + 1].tolist()   # cold: popularity


def test_retrieval_ignores_all_zero_interest_rows_a_batch_pads_with():
    r = _retrieval()
    vec = np.random.default_rng(2).normal(size=(1, 8))
    padded = r(_ret_row(np.concatenate([vec, np.zeros((3, 8))])))
    assert padded["CANDIDATES"].tolist() == r(_ret_row(vec))["CANDIDATES"].tolist()


def test_retrieval_searches_the_device_index_within_gpu_faiss_k_limit(monkeypatch):
    """The GPU copy (here a second CPU index, counted) serves k <= GPU_MAX_K; a larger k falls back to the CPU one.
    On a CPU host from_artifacts gets no device index (to_device returns the index itself)."""
    import tapestry.serving.retrieval as retrieval_module

    r = _retrieval()
    used = []

    class Counting:
        def __init__(self, name, index):
            self.name, self.index, self.d, self.ntotal = name, index, index.d, index.ntotal

        def search(self, x, k):
            used.append(self.name)
            return self.index.search(x, k)

    cpu = r.index
    r.index, r.device_index = Counting("cpu", cpu), Counting("gpu", cpu)
    vec = np.random.default_rng(3).normal(size=(1, 8))
    r(_ret_row(vec))
    monkeypatch.setattr(retrieval_module, "GPU_MAX_K", 4)
    r(_ret_row(vec))
    assert used == ["gpu", "cpu"]
    assert Retrieval("acme", cpu, r.popularity, 5, device_index=cpu).device_index is None


def test_rerank_batch_scores_every_row_at_once_and_equals_one_call_per_row():
    from tapestry.serving.rerank import Rerank
    from tapestry.inference.feature_reranker import FeatureReranker, RerankTables

    rng = np.random.default_rng(4)
    n = 12
    tables = RerankTables(rng.random((n, 3)).astype(np.float32), rng.random(n).astype(np.float32),
                          rng.random((2, n)).astype(np.float32), np.zeros((3, 2), np.float32), ["a", "b"])
    reranker = FeatureReranker(tables, [1.0, 0.5, -0.3, 0.2])
    calls = []
    score_many = reranker.score_many
    reranker.score_many = lambda feats: calls.append(len(feats)) or score_many(feats)
    ids = [""] + [f"i{j}" for j in range(1, n)]
    stage = Rerank("acme", reranker, ids, ids, max_k=5, max_len=4)

    def row(cands, k=3, attrs=(1.0, 0.0)):
        cands = np.array(cands)
        return {"TENANT": TENANT, "FILTERED": cands, "FILTERED_SCORES": np.linspace(1, 0, cands.size, dtype=np.float32),
                "HISTORY": np.array([0, 0, 1, 2]), "SEEN": np.array([0, 1, 2]), "USER_ATTRS": np.array(attrs, np.float32),
                "USER_KIND": np.array([USER_KNOWN], np.int32), "K": np.array([k], np.int32)}

    rows = [row([3, 4, 5, 6]), row([7, 8], k=5), row([9, 10, 11], attrs=(0.0, 1.0)), row([0]), row([3, 4], k=9)]
    out = stage.batch(rows)
    assert calls == [3]                                       # the three valid rows, one call
    assert isinstance(out[3], RequestError) and isinstance(out[4], RequestError)
    for i in range(3):
        single = stage(rows[i])
        assert out[i]["ITEM_IDS"].tolist() == single["ITEM_IDS"].tolist()
        np.testing.assert_allclose(out[i]["SCORES"], single["SCORES"], rtol=1e-6)
    assert len(out[1]["ITEM_IDS"]) == 2                      # k = 5 but two candidates


class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


def _fake_pb():
    """The parts of Triton's triton_python_backend_utils the adapter uses."""
    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, msg, code):
            self.msg, self.code = msg, code

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    return types.SimpleNamespace(
        get_input_tensor_by_name=lambda request, name: request.get(name),
        Tensor=_FakeTensor, TritonError=TritonError, InferenceResponse=InferenceResponse)


class _FakeRequest(dict):
    """A queued request: its tensors by name, and the parameters Triton forwards (no API key: keys are off)."""

    def parameters(self) -> str:
        return "{}"


def _filter_model(batched: bool):
    from tapestry.serving.auth import KeyGuard

    model = triton_model(CandidateFilter)()
    model.pb, model.batched = _fake_pb(), batched
    model.guard = KeyGuard("acme", None)       # no key file: the tenant has no keys, every request passes
    model.stage = CandidateFilter("acme", num_candidates=3, num_items=10)
    model.metrics = StageMetrics(model.stage.name, "acme", MemoryRegistry())   # initialize() sets it in Triton
    model.out_dtypes = {"FILTERED": np.int64, "FILTERED_SCORES": np.float32}
    return model


def _filter_request(cands, seen, tenants=(b"acme",)):
    b = len(cands)
    width = max(len(c) for c in cands)
    c = np.zeros((b, width), np.int64)
    for i, row in enumerate(cands):
        c[i, :len(row)] = row
    return _FakeRequest({"TENANT": _FakeTensor("TENANT", np.array([[t] for t in tenants], dtype=np.object_)),
            "CANDIDATES": _FakeTensor("CANDIDATES", c),
            "CANDIDATE_SCORES": _FakeTensor("CANDIDATE_SCORES", np.ones((b, width), np.float32)),
            "SEEN": _FakeTensor("SEEN", np.array(seen)),
            "EXCLUDE": _FakeTensor("EXCLUDE", np.zeros((b, 1), np.int64))})


def test_adapter_answers_each_queued_request_with_its_own_rows_and_errors():
    model = _filter_model(batched=True)
    ok_two = _filter_request([[1, 2, 3, 4], [5, 6]], [[0, 2], [0, 0]], tenants=(b"acme", b"acme"))
    bad_row = _filter_request([[1], [2]], [[0], [0]], tenants=(b"acme", b"evil"))
    missing = _FakeRequest({k: v for k, v in _filter_request([[1]], [[0]]).items() if k != "SEEN"})
    ok_one = _filter_request([[7, 8]], [[0]])
    first, second, third, fourth = model.execute([ok_two, bad_row, missing, ok_one])
    assert first.error is None and first.outputs["FILTERED"].tolist() == [[1, 3, 4], [5, 6, 0]]   # padded with 0
    assert second.error.code == "INVALID_ARG" and second.error.msg.startswith("row 1: tenant 'evil'")
    assert third.error.code == "INVALID_ARG" and "missing input tensor SEEN" in third.error.msg
    assert fourth.error is None and fourth.outputs["FILTERED"].tolist() == [[7, 8]]


def test_adapter_without_batching_takes_each_request_as_one_row():
    model = _filter_model(batched=False)
    req = _FakeRequest({k: _FakeTensor(k, v.array[0]) for k, v in _filter_request([[1, 2]], [[0, 1]]).items()})
    (resp,) = model.execute([req])
    assert resp.error is None and resp.outputs["FILTERED"].tolist() == [2]


def test_a_bug_in_a_row_is_an_internal_error_for_its_request_only():
    model = _filter_model(batched=True)
    calls = model.stage.batch

    def flaky(rows):
        out = calls(rows)
        out[0] = KeyError("boom")
        return out

    model.stage.batch = flaky
    bug, fine = model.execute([_filter_request([[1]], [[0]]), _filter_request([[2]], [[0]])])
    assert bug.error.code == "INTERNAL" and "filter failed: KeyError" in bug.error.msg
    assert fine.error is None and fine.outputs["FILTERED"].tolist() == [[2]]


def test_templates_batch_every_model_and_the_ensemble_no_more_than_its_steps():
    configs = {m: read_config(TEMPLATES / m / "config.pbtxt") for m in MODELS}
    for name, cfg in configs.items():
        assert cfg.max_batch_size == DEFAULT_MAX_BATCH_SIZE, name
        if cfg.platform != "ensemble":
            assert cfg.HasField("dynamic_batching") and all(i.allow_ragged_batch for i in cfg.input), name


@pytest.mark.parametrize("size", [0, 8])
def test_set_max_batch_size_rewrites_every_model(tmp_path, size):
    repo = tmp_path / "model_repository"
    shutil.copytree(TEMPLATES, repo)
    set_max_batch_size(repo, size)
    for m in MODELS:
        cfg = read_config(repo / m / "config.pbtxt")
        assert cfg.max_batch_size == size
        if cfg.platform != "ensemble":
            assert cfg.HasField("dynamic_batching") == bool(size)
            assert all(i.allow_ragged_batch == bool(size) for i in cfg.input)
            assert cfg.parameters["ARTIFACT_DIR"].string_value == "../artifacts"   # the rest is kept
    with pytest.raises(ValueError, match="between 0 and 4096"):
        set_max_batch_size(repo, -1)
