"""docker-compose.yml, checked without a Docker engine: against the Compose Specification schema (vendored in
compose_spec/, see its README), and against this project: every Dockerfile, image, port, bind mount and ${VARIABLE}
the file names must exist here, and the README's GPU-host commands may name only what the file defines.

Every check is driven by what the file names (services, volumes, variables), not by a list of today's services, so
services added later (Prometheus, Grafana, ...) are checked the same way.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "compose_spec" / "compose-spec.json"
GPU_SECTION = "#### GPU hosts (Docker Compose)"

# ${VAR}, ${VAR-default}, ${VAR:-default}, ${VAR?error}, ${VAR:?error}, ${VAR+alt}, $VAR; "$$" is a literal "$".
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
                       r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
# Ports a server binary listens on when its command does not say (the documented defaults of each):
# tritonserver --http-port / --grpc-port / --metrics-port, and redis-server's port.
SERVER_DEFAULT_PORTS = {"tritonserver": {8000, 8001, 8002}, "redis-server": {6379}}


def _doc_text() -> str:
    return "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def _code_text() -> str:
    """What runs in the project's containers or on the host: the package, the Triton adapters, the Dockerfiles."""
    files = [*(REPO / "tapestry").rglob("*.py"), *(REPO / "triton_models").rglob("*.py"),
             *(REPO / "docker").rglob("*Dockerfile*")]
    return "\n".join(p.read_text() for p in files)


def _compose_comments() -> str:
    return "\n".join(line.split("#", 1)[1] for line in COMPOSE.read_text().splitlines() if "#" in line)


def _strings(node):
    """Every string in a parsed YAML tree (values and keys)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _variables(text: str) -> set[str]:
    text = text.replace("$$", "")   # an escaped dollar reaches the container's shell, compose does not read it
    return {m.group("braced") or m.group("plain") for m in _VARIABLE.finditer(text)}


def interpolate(node, env: dict[str, str]):
    """Compose's interpolation with `env` as the environment (unset variables take their defaults)."""
    if isinstance(node, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def one(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op") or "", m.group("arg") or ""
        value, unset = env.get(name), name not in env
        empty = unset or value == ""
        if op in ("-", ":-"):
            return arg if (unset if op == "-" else empty) else value
        if op in ("?", ":?"):
            if unset if op == "?" else empty:
                raise ValueError(f"required variable {name}: {arg}")
            return value
        if op in ("+", ":+"):
            return "" if (unset if op == "+" else empty) else arg
        return value or ""

    parts = node.split("$$")
    return "$".join(_VARIABLE.sub(one, p) for p in parts)


@pytest.fixture(scope="module")
def compose() -> dict:   # safe_load resolves the `<<: *anchor` merge keys as compose does
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def resolved(compose) -> dict:
    """The file as compose runs it with no variable set (every default taken)."""
    return interpolate(compose, {})


def _services(doc: dict) -> dict[str, dict]:
    return doc.get("services") or {}


def _built_here(service: dict) -> bool:   # else an external image: its env and ports are its own business
    return "build" in service


def _validator_class(schema: dict):
    """The schema's draft: it names 2019-09 as "http://json-schema.org/draft/2019-09/schema#", a spelling jsonschema
    does not look up (it would warn and fall back to the newest draft)."""
    assert "2019-09" in schema["$schema"]
    return jsonschema.Draft201909Validator


def test_schema_accepts_the_file_as_written_and_as_run(compose, resolved):
    schema = json.loads(SCHEMA.read_text())
    validator = _validator_class(schema)
    validator.check_schema(schema)
    for doc in (compose, resolved):
        errors = sorted(validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_refuses_what_compose_refuses():
    """The vendored schema is really applied: an unknown service key and a wrong type are errors."""
    schema = json.loads(SCHEMA.read_text())
    validator = _validator_class(schema)(schema)
    assert not validator.is_valid({"services": {"a": {"image": "x:1", "imagee": "y"}}})
    assert not validator.is_valid({"services": {"a": {"image": "x:1", "ports": "8000:8000"}}})
    assert validator.is_valid({"services": {"a": {"image": "x:1", "ports": ["8000:8000"]}}})


def test_every_service_is_built_here_or_a_pinned_documented_image(resolved):
    check_images(resolved)


def check_images(resolved: dict) -> None:
    docs = _doc_text() + _compose_comments()
    for name, service in _services(resolved).items():
        assert _built_here(service) or "image" in service, f"service {name}: neither build nor image"
        if _built_here(service):
            build = service["build"] if isinstance(service["build"], dict) else {"context": service["build"]}
            context = REPO / build.get("context", ".")
            assert context.is_dir(), f"service {name}: build context {context} does not exist"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"service {name}: {dockerfile} does not exist"
            for base in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M):
                _assert_pinned(base, f"{dockerfile.name} FROM")
            for line in re.findall(r"^(?:COPY|ADD)\s+(.+)$", dockerfile.read_text(), re.M):
                words = [w for w in line.split() if not w.startswith("--")]
                if "--from" in line or not words:
                    continue
                for source in words[:-1]:     # the last word is the destination
                    assert (context / source).exists(), f"{dockerfile.name}: COPY source {source} not in the context"
        elif "image" in service:
            image = service["image"]
            _assert_pinned(image, f"service {name}")
            assert image in docs, f"service {name}: external image {image!r} is named in no README/docs/compose comment"


def _assert_pinned(image: str, where: str) -> None:
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    assert "@sha256:" in image or tag not in ("", "latest"), f"{where}: image {image!r} is not pinned to a tag"


def test_every_interpolated_variable_is_documented_and_used(compose):
    check_variables(compose)


def check_variables(compose: dict) -> None:
    docs = _doc_text() + _compose_comments()
    code = _code_text()
    used = set()
    for name, service in _services(compose).items():
        env = service.get("environment") or {}
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env) if isinstance(env, list) else env
        command = " ".join(_strings([service.get("command", ""), service.get("entrypoint", "")]))
        for key, value in env.items():
            for var in _variables(str(value)):
                used.add(var)
            # A variable passed into a container of this project must be read there: by the code or the command.
            if _built_here(service):
                assert key in code or re.search(rf"\${{?{key}\b", command), \
                    f"service {name}: environment {key} is read by no code and not by its command"
    for text in _strings(compose):
        used |= _variables(text)
    assert used, "expected the compose file to take variables"
    for var in sorted(used):
        assert re.search(rf"\b{var}\b", docs), f"${{{var}}} is documented nowhere (README, docs/, compose comments)"


def test_bind_mounts_exist_or_are_the_artifact_root(resolved):
    _check_mounts(resolved, "with no variable set")


def _check_mounts(resolved: dict, when: str) -> None:
    """Bind sources (compose reads a source as a host path only when it starts with ".", "/" or "~") exist in the
    repo or lie under the artifact root; any other source must be a declared named volume."""
    from tapestry.config import PROJECT_ROOT

    created = (PROJECT_ROOT / "artifacts").resolve()   # tapestry's default root ($TAPESTRY_HOME unset): created by etl
    declared = set((resolved.get("volumes") or {}))
    for name, service in _services(resolved).items():
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            kind = volume.get("type") if isinstance(volume, dict) else None
            if kind in ("tmpfs",) or not source:
                continue
            if source.startswith((".", "/", "~")):
                path = (REPO / source).resolve()
                assert path.exists() or path == created or created in path.parents, \
                    f"{when}: service {name}: bind mount {source} is neither in the repo nor under the artifact root"
            else:
                assert source in declared, \
                    f"{when}: service {name}: volume {source!r} is not declared under volumes: (a path needs ./)"


def test_depends_on_names_services(resolved):
    check_depends_on(resolved)


def check_depends_on(resolved: dict) -> None:
    for name, service in _services(resolved).items():
        unknown = set(service.get("depends_on", [])) - set(_services(resolved))
        assert not unknown, f"service {name} depends on unknown service {sorted(unknown)[0]!r}"


def _published(service: dict) -> list[tuple[int, int]]:
    """(host port, container port) of each published port (short syntax "[ip:]host:container[/proto]")."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((int(port.get("published", port["target"])), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        out.append((int(parts[-2]) if len(parts) > 1 else int(parts[-1]), int(parts[-1])))
    return out


def test_published_ports_are_ports_the_servers_listen_on(resolved):
    check_ports(resolved)


def check_ports(resolved: dict) -> None:
    docs = _doc_text()
    for name, service in _services(resolved).items():
        command = " ".join(_strings([service.get("command", ""), service.get("healthcheck", {})]))
        listens = {int(p) for p in re.findall(r"(?<![\d.])(\d{2,5})(?![\d.])", command)}
        for server, ports in SERVER_DEFAULT_PORTS.items():
            if server in command or (server == "redis-server" and service.get("image", "").startswith("redis:")):
                listens |= ports
        for host, container in _published(service):
            # An external image's own default port counts when the docs name it (e.g. a dashboard's).
            documented = not _built_here(service) and re.search(rf"\b{container}\b", docs)
            assert container in listens or documented, \
                (f"service {name}: publishes container port {container}, which its command does not name, nor its "
                 "server's defaults, nor (for an image not built here) the README/docs")


def _edited(doc: dict, service: str, **changes) -> dict:
    out = copy.deepcopy(doc)
    out["services"][service].update(changes)
    return out


@pytest.mark.parametrize("check,service,changes,message", [
    ("images", "triton", {"build": {"context": ".", "dockerfile": "docker/nope.Dockerfile"}}, "does not exist"),
    ("images", "redis", {"image": "redis"}, "not pinned"),
    ("images", "redis", {"image": "redis:latest"}, "not pinned"),
    ("images", "redis", {"image": "redis:6.0.1"}, "named in no README"),
    ("variables", "triton", {"environment": {"TAPESTRY_NOT_READ_ANYWHERE": "1"}}, "read by no code"),
    ("variables", "redis", {"command": ["redis-server", "--port", "${UNDOCUMENTED_PORT_VAR}"]}, "documented nowhere"),
    ("mounts", "redis", {"volumes": ["./no/such/dir:/data"]}, "neither in the repo"),
    ("mounts", "redis", {"volumes": ["undeclared-volume:/data"]}, "not declared"),
    ("ports", "redis", {"ports": ["127.0.0.1:6390:6390"]}, "container port 6390"),
    ("depends_on", "redis", {"depends_on": ["tritonn"]}, "unknown service 'tritonn'"),
])
def test_the_project_checks_catch_what_does_not_exist(compose, check, service, changes, message):
    """Each project check fails on a file that names something missing (so passing on the real file means something)."""
    doc = _edited(compose, service, **changes)
    run = {"images": lambda: check_images(interpolate(doc, {})), "variables": lambda: check_variables(doc),
           "mounts": lambda: _check_mounts(interpolate(doc, {}), "edited"),
           "ports": lambda: check_ports(interpolate(doc, {})),
           "depends_on": lambda: check_depends_on(interpolate(doc, {}))}[check]
    with pytest.raises(AssertionError, match=message):
        run()


# ---- the README's GPU-host section: the exact commands, checked against the compose file and the CLI ----------
def _gpu_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert GPU_SECTION in text, f"README.md has no {GPU_SECTION!r} section"
    section = re.split(r"\n#{2,6} ", text.split(GPU_SECTION, 1)[1], maxsplit=1)[0]   # up to the next heading
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, "the GPU-host section has no bash block"
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = []
    for line in lines:
        line = re.sub(r"\s#.*$|^#.*$", "", line).strip()
        if not line:
            continue
        inner = re.findall(r"\$\(([^()]*)\)", line)      # $(tapestry keys create ...) is a command too
        commands += [*inner, re.sub(r"\$\(([^()]*)\)", "VALUE", line)]
    return commands


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    """(VAR=value assignments, argv) of one shell command; `export VAR=...` counts as an assignment."""
    words = shlex.split(command)
    if words and words[0] == "export":
        words = words[1:]
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def test_gpu_section_commands_name_only_what_exists(compose):
    check_commands(compose, _gpu_commands())


def check_commands(compose: dict, commands: list[str]) -> None:
    """Each `docker compose` command names existing services, profiles and variables; each `tapestry` command parses
    with the real CLI parser; each 127.0.0.1:PORT is a published port."""
    from tapestry.cli import build_parser

    services = _services(compose)
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    compose_vars = {v for t in _strings(compose) for v in _variables(t)}
    code = _code_text()
    published = {host for s in _services(interpolate(compose, {})).values() for host, _ in _published(s)}
    kinds = set()
    for command in commands:
        env, argv = _split(command)
        for var in env:
            assert var in compose_vars or re.search(rf"\b{var}\b", code), \
                f"`{command}` sets {var}, which neither the compose file nor the code reads"
        if argv[:2] == ["docker", "compose"] and env:
            # The values this command gives must still make a runnable file: a relative bind source without "./"
            # would be read by compose as the name of an (undeclared) volume.
            given = {k: v.replace("$PWD", str(REPO)) for k, v in env.items()}
            _check_mounts(interpolate(compose, given), f"`{command}`")
        for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", command):
            assert int(port) in published, f"`{command}` talks to port {port}, which no service publishes"
        if argv[:2] == ["docker", "compose"]:
            kinds.add("compose")
            args, enabled = argv[2:], set()
            while args and args[0].startswith("-"):
                flag = args.pop(0)
                if flag == "--profile":
                    enabled.add(args.pop(0))
            assert enabled <= profiles, f"`{command}`: unknown profile(s) {enabled - profiles}"
            sub = args.pop(0)
            assert sub in {"up", "down", "exec", "ps", "logs", "build", "config", "stop", "pull"}, command
            if sub == "exec":
                assert args and not args[0].startswith("-"), f"`{command}`: exec options are not checked here"
                target, rest = args[0], args[1:]
                assert target in services, f"`{command}`: no service {target!r}"
                if rest and rest[0] == "tapestry":
                    build_parser().parse_args(rest[1:])
                continue
            for name in (a for a in args if not a.startswith("-")):
                assert name in services, f"`{command}`: no service {name!r}"
                needed = set(services[name].get("profiles", []))
                assert not needed or needed & enabled, f"`{command}`: {name} needs --profile {sorted(needed)}"
        elif argv and argv[0] == "tapestry":
            kinds.add("tapestry")
            build_parser().parse_args(argv[1:])   # exits (SystemExit) on an unknown command or flag
    assert kinds == {"compose", "tapestry"}, f"expected docker compose and tapestry commands, got {commands}"


def test_the_command_check_catches_what_does_not_exist(compose):
    """The README check is not vacuous: a wrong service, profile, variable, port or CLI flag each fails it."""
    ok = ["tapestry status", "docker compose up -d redis"]
    check_commands(compose, ok)
    for bad, message in [("docker compose up -d tritonn", "no service 'tritonn'"),
                         ("docker compose --profile mutli up -d redis", "unknown profile"),
                         ("TAPESTRY_EXPROT=x docker compose up -d redis", "TAPESTRY_EXPROT"),
                         ("TAPESTRY_EXPORT=artifacts/t/export/v0001 docker compose up -d triton", "needs ./"),
                         ("tapestry recommend --tenant a --user 1 --url 127.0.0.1:9999", "port 9999")]:
        with pytest.raises(AssertionError, match=message):
            check_commands(compose, [*ok, bad])
    with pytest.raises(SystemExit):
        check_commands(compose, [*ok, "tapestry recommend --tenant a --usr 1"])


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET-d} ${UNSET-d} ${EMPTY-d} ${EMPTY:-d} $SET $$SET", env) == "v d  d v $SET"
    assert interpolate("${UNSET:+x}${SET:+x}", env) == "x"
    with pytest.raises(ValueError, match="required variable UNSET"):
        interpolate("${UNSET:?set it}", env)
