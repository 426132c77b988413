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


def test_a_fault_seen_between_a_swaps_steps_is_not_healed_once_gone(tmp_path, monkeypatch):
    """A round can see the old stages unloaded while a swap runs (the state still names them); when it gets the
    lock, the swap is over and the tenant is whole: reloading then would unload a healthy ensemble."""
    from tapestry.serving import supervisor as sv

    server = {"pid": os.getpid(), "http_url": "x", "tenants": {TENANT: INFO}}
    healed = []
    monkeypatch.setattr(sv.ModelControl, "of", classmethod(lambda cls, s: type("C", (), {
        "ready_models": lambda self: ALL})()))
    monkeypatch.setattr(sv, "stub_processes", lambda pid: _stubs(STAGES))
    answer = ["ok"]
    monkeypatch.setattr(sv, "probe", lambda *a, **k: answer[0])
    monkeypatch.setattr(sv, "heal", lambda *a, **k: healed.append(a) or answer.__setitem__(0, "ok") or 0.0)
    watcher = sv.Supervisor(tmp_path, log=lambda *a: None)
    monkeypatch.setattr(watcher, "_state", lambda: server)
    stale = sv.Fault("unloaded", ["acme__filter__v0002"], "not loaded: acme__filter__v0002")
    watcher._heal(TENANT, sv._TenantWatch(), stale)
    assert healed == [] and watcher.events == []
    answer[0] = "HTTP 404: no metadata for model 'acme__recommend'"
    watcher._heal(TENANT, sv._TenantWatch(), stale)   # still broken when re-diagnosed: healed
    assert len(healed) == 1 and watcher.events[0]["healed"]


def test_model_control_uses_grpc_when_the_server_has_it():
    """Triton's HTTP frontend runs a load on the evhtp thread that accepted it and stalls that thread's other
    connections (inference included) for the whole load: swaps go over gRPC (tapestry.serving.model_control)."""
    from tapestry.serving.auth import GRPC_ADMIN_HEADER
    from tapestry.serving.model_control import ModelControl

    control = ModelControl.of({"http_url": "127.0.0.1:1", "grpc_url": "127.0.0.1:2", "admin_key": "k"})
    client = control._client()
    try:
        assert type(client).__module__.startswith("tritonclient.grpc")
        assert control.headers == {GRPC_ADMIN_HEADER: "k"}
    finally:
        client.close()
    assert ModelControl.of({"http_url": "127.0.0.1:1"})._client().__module__.startswith("tritonclient.http")
