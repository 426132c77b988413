"""Tenant API keys and the server's admin key (docs/auth.md has the measurements this design rests on).

Tenant keys (`tapestry keys create|list|revoke --tenant T`):
- a key is `tpk_<id>_<secret>` (id: 8 hex characters, shown by `list`; secret: 256 random bits). Only its SHA-256
  is stored, in `<root>/<tenant>/api_keys.json` (mode 0600, written to a temp file and renamed; changes hold
  `<root>/<tenant>/.api_keys.lock`). The plaintext is shown once, by `create`, and never written or logged. A salt
  would add nothing: the secret is random, not a password.
- a client sends it as the HTTP header / gRPC metadata `tapestry-api-key`. Triton forwards that header into the
  request's parameters (`--http-header-forward-pattern`, `--grpc-header-forward-pattern`), and Triton 2.51 passes
  an ensemble request's parameters on to every composing model: so each python stage checks the key itself
  (`KeyGuard`, called by tapestry.serving.triton_adapter before it reads any tensor), whether it is reached through
  `recommend` or called directly.
- keys are ON for a tenant as soon as its key file exists (revoking the last key does not turn them off: every
  request is refused). With no key file they are off, as before keys existed, unless the server requires keys
  (`tapestry serve` on a non-loopback address: `TAPESTRY_REQUIRE_KEYS=1` in the server's environment), then every
  request of that tenant is refused.
- each stage process caches the tenant's active key hashes and re-reads the file when its inode, size or mtime
  change (one stat per request): a revoked key is refused from the next request on, without a restart.

Admin key: generated at each server start, stored in the server's state file (0600), sent as `tapestry-admin-key`
(HTTP) / `triton-grpc-protocol-tapestry-admin-key` (gRPC; Triton adds the prefix). Triton itself refuses, without
it, the API groups in `ADMIN_APIS` (`--http-restricted-api`, `--grpc-restricted-protocol`). It also authorises
inference for every tenant (what `tapestry status` probes with); the stages know only its SHA-256 (environment).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tapestry.config import artifacts_root, validate_tenant

KEY_HEADER = "tapestry-api-key"           # tenant key: HTTP header, gRPC metadata, or request parameter
ADMIN_HEADER = "tapestry-admin-key"       # admin key over HTTP
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER   # over gRPC (Triton's restricted-protocol prefix)
API_KEY_ENV = "TAPESTRY_API_KEY"          # where RecommendClient and `tapestry recommend` look for a key
KEY_FILE = "api_keys.json"
ADMIN_APIS = ("model-repository", "model-config", "statistics", "trace", "logging", "shared-memory")
ENV_REQUIRE = "TAPESTRY_REQUIRE_KEYS"      # "1": a tenant without a key file is refused (non-loopback servers)
ENV_KEYS_ROOT = "TAPESTRY_KEYS_ROOT"       # the artifact root whose <tenant>/api_keys.json the stages read
ENV_ADMIN_SHA = "TAPESTRY_ADMIN_KEY_SHA256"
KEY_PREFIX = "tpk_"


class KeyStoreError(ValueError):
    """A key-store operation that cannot be done (unknown tenant or key id)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- the key store (operator side) --------------------------------------------------------------------------------

def key_file(tenant: str, root: Path | None = None) -> Path:
    return Path(root or artifacts_root()) / validate_tenant(tenant) / KEY_FILE


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"keys": []}


def _write(path: Path, data: dict) -> None:
    """Temp file (mkstemp: mode 0600) in the same folder, fsync, rename: a reader sees the old file or the new one."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(tenant: str, root: Path | None):
    path = key_file(tenant, root)
    if not path.parent.is_dir():
        raise KeyStoreError(f"no tenant {tenant} under {path.parent.parent} (run `tapestry etl --tenant {tenant}` "
                            "first)")
    with open(path.parent / f".{KEY_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_key(tenant: str, root: Path | None = None, name: str = "") -> tuple[str, str]:
    """A new key for ``tenant``: (key id, plaintext). Only its hash is stored; the plaintext is not kept anywhere."""
    with _locked(tenant, root) as path:
        data = _read(path)
        ids = {k["id"] for k in data["keys"]}
        key_id = secrets.token_hex(4)
        while key_id in ids:
            key_id = secrets.token_hex(4)
        plaintext = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        data["tenant"] = tenant
        data["keys"].append({"id": key_id, "name": name, "sha256": hash_key(plaintext),
                             "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "revoked_at": None})
        _write(path, data)
    return key_id, plaintext


def list_keys(tenant: str, root: Path | None = None) -> list[dict]:
    """Every key of ``tenant`` (revoked ones too): id, name, created_at, revoked_at; never a hash or a plaintext."""
    return [{k: entry[k] for k in ("id", "name", "created_at", "revoked_at")}
            for entry in _read(key_file(tenant, root))["keys"]]


def revoke_key(tenant: str, root: Path | None, key_id: str) -> dict:
    """Mark key ``key_id`` revoked (kept in the file, so `list` shows when); the stages refuse it from their next
    request. Returns the key's listing."""
    key_id = key_id.removeprefix(KEY_PREFIX).split("_")[0]   # an id, or a whole key pasted by mistake
    with _locked(tenant, root) as path:
        data = _read(path)
        for entry in data["keys"]:
            if entry["id"] == key_id:
                if entry["revoked_at"] is None:
                    entry["revoked_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                    _write(path, data)
                return {k: entry[k] for k in ("id", "name", "created_at", "revoked_at")}
    raise KeyStoreError(f"tenant {tenant} has no key {key_id!r} (`tapestry keys list --tenant {tenant}`)")


def active_keys(tenant: str, root: Path | None = None) -> int:
    return sum(1 for k in list_keys(tenant, root) if k["revoked_at"] is None)


def keys_on(tenant: str, root: Path | None = None) -> bool:
    return key_file(tenant, root).exists()


def key_summary(tenant: str, root: Path | None, state: dict) -> str:
    """One line for `tapestry status`: the tenant's keys and whether the server closes its admin API."""
    with contextlib.suppress(OSError, ValueError):
        keys = list_keys(tenant, root)
        active = sum(1 for k in keys if k["revoked_at"] is None)
        if keys_on(tenant, root):
            text = f"{active} active, {len(keys) - active} revoked: every request needs one"
        elif state.get("keys_required"):
            text = "none, and this server requires them: every request is refused"
        else:
            text = "off (no key created; `tapestry keys create` turns them on)"
        closed = "admin API closed (admin key in the 0600 state file)" if state.get("admin_key") else "admin API OPEN"
        return f"{text}; {closed}"
    return "unknown (key file unreadable)"


# --- the server (operator side) -----------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_host(host: str, asked: str | None = None) -> str:
    """Where `tapestry serve` binds Triton's metrics port: where asked, else with the server on loopback, else on
    loopback only: its per-model counters name every model of every tenant, and it has no access control."""
    return asked or (host if is_loopback(host) else "127.0.0.1")


def admin_headers(admin_key: str | None, protocol: str = "http") -> dict[str, str]:
    """Headers that open the admin API (none when the server has no admin key: started before keys existed)."""
    if not admin_key:
        return {}
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: admin_key}


@dataclass(frozen=True)
class ServerAuth:
    """What one server run is started with: a fresh admin key, whether every tenant must have keys, and where the
    stages find the key files."""
    admin_key: str
    require_keys: bool
    keys_root: Path

    @classmethod
    def for_serve(cls, host: str, tenants: list[str], root: Path | None = None, insecure: bool = False,
                  warn=print) -> "ServerAuth":
        """Safe defaults: on loopback keys are per tenant (on once it has a key file); on any other address every
        tenant needs an active key, unless ``insecure`` (a warning says what that means). Raises ValueError."""
        require = not is_loopback(host)
        if require and insecure:
            warn(f"[serve] WARNING: --insecure: listening on {host} without requiring API keys; a tenant with no "
                 "key file answers ANYONE who can reach this address (`tapestry keys create --tenant T`)")
            require = False
        elif require:
            missing = [t for t in tenants if not (keys_on(t, root) and active_keys(t, root))]
            if missing:
                raise ValueError(f"listening on {host} (not loopback) requires API keys, and tenant(s) "
                                 f"{', '.join(missing)} have no active key: `tapestry keys create --tenant "
                                 f"{missing[0]}` first (or --insecure, which lets anyone who reaches {host} in)")
        return cls(secrets.token_urlsafe(32), require, Path(root or artifacts_root()).resolve())

    def triton_args(self) -> list[str]:
        # NB: Triton takes the admin key on its command line (there is no other way to give it), so local users of
        # this machine can read it in the process list; the state file is 0600 (docs/auth.md).
        forward = f"^({KEY_HEADER}|{ADMIN_HEADER})$"
        restricted = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [f"--http-header-forward-pattern={forward}", f"--grpc-header-forward-pattern={forward}",
                f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]

    def triton_env(self) -> dict[str, str]:
        return {ENV_REQUIRE: "1" if self.require_keys else "0", ENV_KEYS_ROOT: str(self.keys_root),
                ENV_ADMIN_SHA: hash_key(self.admin_key)}

    def state(self) -> dict:
        """Recorded in the server's state file (0600): what swap, rollback, status and stop need."""
        return {"admin_key": self.admin_key, "keys_required": self.require_keys}


# --- the check in every stage process -----------------------------------------------------------------------------

def _stage_key_file(tenant: str, artifact_dir: Path | None) -> Path | None:
    """``$TAPESTRY_KEYS_ROOT/<tenant>/api_keys.json``; without it, the tenant folder the export is in
    (``<root>/<tenant>/export/vNNNN/artifacts``); None when neither applies (keys off unless required)."""
    keys_root = os.environ.get(ENV_KEYS_ROOT)
    if keys_root:
        return Path(keys_root) / tenant / KEY_FILE
    if artifact_dir is not None:
        parents = Path(artifact_dir).resolve().parents
        if len(parents) > 2 and parents[1].name == "export" and parents[2].name == tenant:
            return parents[2] / KEY_FILE
    return None


class KeyRefused(ValueError):
    """The request's key does not authorise it (the adapter answers it as RequestError: HTTP 400 / INVALID_ARG)."""


class KeyGuard:
    """Checks the key a request carries against its tenant's active key hashes (or the server's admin key)."""

    def __init__(self, tenant: str, path: Path | None, require: bool = False, admin_sha256: str | None = None):
        self.tenant, self.path, self.require, self.admin_sha256 = tenant, path, require, admin_sha256 or None
        self._signature: tuple | None = ("unread",)
        self._hashes: frozenset[str] = frozenset()
        self._on = require
        self._broken = ""
        self._accepted: set = set()   # parameter texts accepted since the key file last changed (a client's key)

    @classmethod
    def for_stage(cls, tenant: str, artifact_dir: Path | None) -> "KeyGuard":
        return cls(tenant, _stage_key_file(tenant, artifact_dir), os.environ.get(ENV_REQUIRE) == "1",
                   os.environ.get(ENV_ADMIN_SHA))

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path) if self.path is not None else None
        except FileNotFoundError:
            st = None
        signature = None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return
        self._signature, self._broken = signature, ""
        self._accepted = set()
        if signature is None:
            self._hashes, self._on = frozenset(), self.require
            return
        try:
            data = json.loads(Path(self.path).read_text())
            self._hashes = frozenset(k["sha256"] for k in data["keys"] if k.get("revoked_at") is None)
        except (OSError, ValueError, KeyError, TypeError) as e:   # fail closed: keys on, none valid
            self._hashes, self._broken = frozenset(), f"the key file cannot be read ({type(e).__name__})"
        self._on = True

    def check(self, parameters: str | dict | None) -> None:
        """Raise KeyRefused unless the request may use this tenant's models. ``parameters``: the request's
        parameters as the python backend gives them (a JSON object, as text)."""
        self._refresh()
        if not self._on or (type(parameters) is str and parameters in self._accepted):
            return
        keys, admin = _credentials(parameters)
        for name, values in ((KEY_HEADER, keys), (ADMIN_HEADER, admin)):
            if len(values) > 1:   # a header sent twice, or a header and a request parameter of that name
                raise KeyRefused(f"API key refused: '{name}' given more than once")
        if not keys and not admin:
            raise KeyRefused(f"API key required: send your tenant's key in the '{KEY_HEADER}' header (HTTP) or "
                             "metadata (gRPC)")
        if self._broken:
            raise KeyRefused(f"API key refused: {self._broken}")
        if admin:
            value = admin[0].strip() if isinstance(admin[0], str) else ""
            if not (value and self.admin_sha256 and hash_key(value) == self.admin_sha256):
                raise KeyRefused("admin key refused")
        if keys:
            value = keys[0].strip() if isinstance(keys[0], str) else ""
            if not value:
                raise KeyRefused(f"API key refused: '{KEY_HEADER}' is empty")
            if hash_key(value) not in self._hashes:
                raise KeyRefused("API key refused: not an active key of this model's tenant")
        if type(parameters) is str:
            if len(self._accepted) >= 256:   # bounded: many distinct valid parameter texts only cost a re-check
                self._accepted.clear()
            self._accepted.add(parameters)


class _Pairs(list):
    """A JSON object as its (name, value) pairs, repeated names kept."""


def _credentials(parameters) -> tuple[list, list]:
    """(tenant key values, admin key values) among the request's parameters; names compared case-insensitively
    (Triton forwards an HTTP header with the case the client wrote). Duplicates are kept: a header sent twice, or a
    header and a request parameter of the same name, arrive as one JSON object with the name twice."""
    if not parameters:
        return [], []
    if isinstance(parameters, dict):
        pairs = list(parameters.items())
    else:
        try:
            pairs = json.loads(parameters, object_pairs_hook=_Pairs)
        except ValueError:
            return [], []
        if not isinstance(pairs, _Pairs):   # not a JSON object
            return [], []
    keys = [v for k, v in pairs if isinstance(k, str) and k.lower() == KEY_HEADER]
    admin = [v for k, v in pairs if isinstance(k, str) and k.lower() == ADMIN_HEADER]
    return keys, admin
