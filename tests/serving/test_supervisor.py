"""The supervisor's diagnosis without a server: which faults it names from the repository index, the stub processes
and a probe's answer (tests/integration/test_self_healing.py runs it against a real Triton)."""
import os
import subprocess
import sys
import time

from tapestry.serving.supervisor import probe_fault, structural_fault, stub_processes

TENANT = "acme"
STAGES = [f"acme__{s}__v0003" for s in ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")]
INFO = {"stage_models": STAGES, "export_version": "v0003"}
ALL = set(STAGES) | {"acme__recommend"}


def _stubs(names):
    return {n: [1000 + i] for i, n in enumerate(names)}


def test_a_ready_stage_without_a_live_process_is_a_dead_one():
    fault = structural_fault(TENANT, INFO, ALL, _stubs(STAGES[:2] + STAGES[3:]))
    assert (fault.kind, fault.models) == ("process_died", ["acme__retrieval__v0003"])
    assert "acme__retrieval__v0003 is gone" in fault.detail


def test_models_missing_from_the_index_are_unloaded_ones():
    fault = structural_fault(TENANT, INFO, ALL - {"acme__recommend"}, _stubs(STAGES))
    assert (fault.kind, fault.models, fault.detail) == ("unloaded", [], "not loaded: acme__recommend")
    fault = structural_fault(TENANT, INFO, ALL - {"acme__filter__v0003", "acme__recommend"}, _stubs(STAGES))
    assert (fault.kind, fault.models) == ("unloaded", ["acme__filter__v0003"])
    assert structural_fault(TENANT, INFO, ALL, _stubs(STAGES)) is None
    assert structural_fault(TENANT, INFO, ALL | {"beta__recommend"}, _stubs(STAGES)) is None   # others: not ours


def test_a_probe_answer_names_the_fault_or_none():
    assert probe_fault(TENANT, INFO, "ok") is None
    died = probe_fault(TENANT, INFO, "HTTP 500: in ensemble 'acme__recommend', Stub process "
                                     "'acme__user_encoder__v0003_0_1' is not healthy.")
    assert (died.kind, died.models) == ("process_died", ["acme__user_encoder__v0003"])
    assert probe_fault(TENANT, INFO, "HTTP 404: no metadata for model 'acme__recommend'").kind == "unloaded"
    hung = probe_fault(TENANT, INFO, "no answer: timed out")
    assert (hung.kind, hung.models, hung.kill) == ("not_answering", STAGES, True)
    store = probe_fault(TENANT, INFO, "fallback: the online store is unavailable (STRATEGY fallback_popularity)")
    assert (store.kind, store.models) == ("store_unavailable", [])
    assert probe_fault(TENANT, INFO, "HTTP 503: online store unavailable: ...").kind == "store_unavailable"
    assert probe_fault(TENANT, INFO, "HTTP 400: API key refused").kind == "unknown"   # nothing to reload


def test_stub_processes_are_the_children_named_by_their_model_py(tmp_path):
    stub = tmp_path / "backends" / "triton_python_backend_stub"
    stub.parent.mkdir()
    stub.symlink_to(sys.executable)                   # argv[0] = the stub's path, argv[1] = the model.py it runs
    model_py = tmp_path / "repo" / "acme__filter__v0003" / "1" / "model.py"
    model_py.parent.mkdir(parents=True)
    model_py.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([str(stub), str(model_py)])
    try:
        deadline = time.monotonic() + 10
        while stub_processes(os.getpid()).get("acme__filter__v0003") != [proc.pid]:
            assert time.monotonic() < deadline, stub_processes(os.getpid())
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        assert "acme__filter__v0003" not in stub_processes(os.getpid())   # dead (reaped or a zombie): gone
        assert stub_processes(None) == {}
    finally:
        proc.kill()
        proc.wait()
