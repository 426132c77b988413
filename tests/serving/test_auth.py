"""tapestry.serving.auth without Triton: the key store, the check every stage runs, and the serve defaults."""
import json
import os
import stat

import pytest

from tapestry.serving import auth

TENANT = "acme"


@pytest.fixture
def root(tmp_path):
    (tmp_path / TENANT).mkdir()
    (tmp_path / "globex").mkdir()
    return tmp_path


def guard(root, tenant=TENANT, require=False, admin=None):
    return auth.KeyGuard(tenant, auth.key_file(tenant, root), require, auth.hash_key(admin) if admin else None)


def params(*pairs) -> str:
    """The request parameters as the python backend gives them: a JSON object, names possibly repeated."""
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"


def refused(g, parameters, match):
    with pytest.raises(auth.KeyRefused, match=match):
        g.check(parameters)


def test_only_a_hash_is_stored_in_a_0600_file_and_list_shows_no_secret(root):
    key_id, key = auth.create_key(TENANT, root, name="web")
    assert key.startswith(f"tpk_{key_id}_") and len(key) > 40
    path = auth.key_file(TENANT, root)
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text and auth.hash_key(key) in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [listed] = auth.list_keys(TENANT, root)
    assert listed == {"id": key_id, "name": "web", "created_at": listed["created_at"], "revoked_at": None}
    assert auth.create_key(TENANT, root)[1] != key and auth.active_keys(TENANT, root) == 2
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_the_old_file_whole(root, monkeypatch):
    auth.create_key(TENANT, root)
    before = auth.key_file(TENANT, root).read_text()

    def crash(*a):
        raise OSError("disk full")
    monkeypatch.setattr(auth.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        auth.create_key(TENANT, root)
    assert auth.key_file(TENANT, root).read_text() == before
    assert not [p for p in auth.key_file(TENANT, root).parent.iterdir() if p.name.endswith(".tmp")]


def test_keys_of_an_unknown_tenant_or_key_id_are_refused(root):
    with pytest.raises(auth.KeyStoreError, match="no tenant nobody"):
        auth.create_key("nobody", root)
    with pytest.raises(ValueError, match="invalid tenant id '../acme'"):
        auth.create_key("../acme", root)
    auth.create_key(TENANT, root)
    with pytest.raises(auth.KeyStoreError, match="has no key 'ffffffff'"):
        auth.revoke_key(TENANT, root, "ffffffff")


def test_keys_off_until_a_key_file_exists_then_every_request_needs_one(root):
    g = guard(root)
    g.check("{}")                                             # no key file: off, as before keys existed
    g.check(params(("tapestry-api-key", "anything")))
    _, key = auth.create_key(TENANT, root)
    refused(g, "{}", "API key required")                      # created while serving: on from the next request
    g.check(params(("tapestry-api-key", key)))
    g.check(params(("Tapestry-API-Key", f" {key} ")))        # a header's case and padding as a client sends it


def test_every_wrong_key_is_refused(root):
    _, key = auth.create_key(TENANT, root)
    _, other = auth.create_key("globex", root)
    g = guard(root, admin="the-admin-key")
    refused(g, "{}", "API key required")
    refused(g, "", "API key required")
    refused(g, params(("tapestry-api-key", "")), "is empty")
    refused(g, params(("tapestry-api-key", " ")), "is empty")          # what Triton forwards for an empty header
    refused(g, params(("tapestry-api-key", 12345)), "is empty")        # not a string (a request parameter)
    refused(g, params(("tapestry-api-key", key[:-1])), "not an active key")
    refused(g, params(("tapestry-api-key", other)), "not an active key")        # another tenant's
    refused(g, params(("tapestry-api-key", "the-admin-key")), "not an active key")   # the admin key as a key
    refused(g, params(("tapestry-api-key", auth.hash_key(key))), "not an active key")  # its stored hash
    refused(g, params(("tapestry-api-key", key), ("tapestry-api-key", key)), "given more than once")
    refused(g, params(("tapestry-api-key", other), ("TAPESTRY-API-KEY", key)), "given more than once")
    refused(g, params(("tapestry-admin-key", key)), "admin key refused")
    refused(g, params(("tapestry-admin-key", "the-admin-key"), ("tapestry-admin-key", "x")), "more than once")
    refused(g, params(("tapestry-admin-key", "wrong"), ("tapestry-api-key", key)), "admin key refused")
    refused(g, "not json", "API key required")
    refused(g, "[1, 2]", "API key required")
    g.check(params(("tapestry-admin-key", "the-admin-key")))   # the operator (tapestry status) may probe
    refused(guard(root), params(("tapestry-admin-key", "the-admin-key")), "admin key refused")  # no admin key


def test_a_revoked_key_is_refused_from_the_next_request_and_the_last_revoked_keeps_keys_on(root):
    key_id, key = auth.create_key(TENANT, root)
    g = guard(root)
    g.check(params(("tapestry-api-key", key)))
    listed = auth.revoke_key(TENANT, root, key)                # a whole key pasted instead of its id
    assert listed["id"] == key_id and listed["revoked_at"]
    refused(g, params(("tapestry-api-key", key)), "not an active key")
    refused(g, "{}", "API key required")                       # no active key left: nobody, not everybody
    assert auth.revoke_key(TENANT, root, key_id) == listed     # revoking twice keeps the first time


def test_required_keys_refuse_a_tenant_without_key_file_and_a_broken_file_fails_closed(root):
    refused(guard(root, require=True), "{}", "API key required")
    refused(auth.KeyGuard(TENANT, None, True), params(("tapestry-api-key", "x")), "not an active key")
    auth.key_file(TENANT, root).write_text("{not json")
    refused(guard(root), params(("tapestry-api-key", "x")), "key file cannot be read")


def test_a_stage_finds_its_tenants_key_file(tmp_path, monkeypatch):
    artifacts = tmp_path / TENANT / "export" / "v0003" / "artifacts"
    artifacts.mkdir(parents=True)
    monkeypatch.delenv(auth.ENV_KEYS_ROOT, raising=False)
    assert auth.KeyGuard.for_stage(TENANT, artifacts).path == tmp_path / TENANT / auth.KEY_FILE
    assert auth.KeyGuard.for_stage("globex", artifacts).path is None    # not that tenant's folder
    monkeypatch.setenv(auth.ENV_KEYS_ROOT, str(tmp_path / "keys"))
    monkeypatch.setenv(auth.ENV_REQUIRE, "1")
    g = auth.KeyGuard.for_stage(TENANT, artifacts)
    assert g.path == tmp_path / "keys" / TENANT / auth.KEY_FILE and g.require


def test_serve_defaults(root):
    warnings = []
    loop = auth.ServerAuth.for_serve("127.0.0.1", [TENANT], root)
    assert not loop.require_keys and len(loop.admin_key) >= 40
    assert loop.admin_key != auth.ServerAuth.for_serve("127.0.0.1", [TENANT], root).admin_key   # per run
    with pytest.raises(ValueError, match="requires API keys, and tenant.s. acme have no active key"):
        auth.ServerAuth.for_serve("0.0.0.0", [TENANT], root)
    insecure = auth.ServerAuth.for_serve("0.0.0.0", [TENANT], root, insecure=True, warn=warnings.append)
    assert not insecure.require_keys and "WARNING: --insecure" in warnings[0]
    key_id, _ = auth.create_key(TENANT, root)
    served = auth.ServerAuth.for_serve("10.1.2.3", [TENANT], root)
    assert served.require_keys and served.state() == {"admin_key": served.admin_key, "keys_required": True}
    auth.revoke_key(TENANT, root, key_id)
    with pytest.raises(ValueError, match="no active key"):
        auth.ServerAuth.for_serve("0.0.0.0", [TENANT], root)
    args = " ".join(served.triton_args())
    assert "--http-header-forward-pattern=^(tapestry-api-key|tapestry-admin-key)$" in args
    assert (f"--grpc-restricted-protocol=model-repository,model-config,statistics,trace,logging,shared-memory:"
            f"tapestry-admin-key={served.admin_key}") in args
    env = served.triton_env()
    assert env[auth.ENV_ADMIN_SHA] == auth.hash_key(served.admin_key) and served.admin_key not in env.values()
    assert [auth.metrics_host(h) for h in ("127.0.0.1", "0.0.0.0", "localhost")] == ["127.0.0.1"] * 2 + ["localhost"]
    assert auth.metrics_host("0.0.0.0", "0.0.0.0") == "0.0.0.0"
    assert auth.admin_headers(None) == {} and auth.admin_headers("k", "grpc") == {
        "triton-grpc-protocol-tapestry-admin-key": "k"}


def _cli(*args, root):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tapestry.cli", *args, "--root", str(root)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TAPESTRY_API_KEY": ""})


def test_serve_off_loopback_without_keys_refuses_before_starting_anything(root):
    for args in (["--tenant", TENANT, "--detach"], ["--tenants", f"{TENANT},globex"],
                 ["--tenants", TENANT, "--detach"]):
        out = _cli("serve", *args, "--host", "0.0.0.0", root=root)
        assert out.returncode != 0 and "requires API keys" in out.stderr and "--insecure" in out.stderr, out
        assert not (root / "_server" / "server.json").exists() and not (root / TENANT / "serve.json").exists()
    # --insecure gets past the check, with a warning (then this root has no export to serve).
    out = _cli("serve", "--tenant", TENANT, "--detach", "--host", "0.0.0.0", "--insecure", root=root)
    assert "WARNING: --insecure" in out.stdout + out.stderr and "requires API keys" not in out.stderr


def test_keys_cli_prints_the_key_once_and_lists_no_secret(root):
    out = _cli("keys", "create", "--tenant", TENANT, "--name", "web", root=root)
    key = out.stdout.strip()
    assert out.returncode == 0 and key.startswith("tpk_") and "shown only this once" in out.stderr
    listed = _cli("keys", "list", "--tenant", TENANT, root=root).stdout
    assert key not in listed and key.split("_")[1] in listed and "web" in listed
    assert key not in _cli("keys", "list", "--tenant", TENANT, "--json", root=root).stdout
    out = _cli("keys", "revoke", "--tenant", TENANT, "--id", key.split("_")[1], root=root)
    assert out.returncode == 0 and "revoked" in out.stdout and key not in out.stdout
    assert "0 active key(s)" in _cli("keys", "list", "--tenant", TENANT, root=root).stdout
    out = _cli("keys", "revoke", "--tenant", TENANT, root=root)
    assert out.returncode != 0 and "--id KEY_ID is required" in out.stderr
