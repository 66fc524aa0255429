"""The compose demos (compose/spire, compose/dev), checked without a Docker engine.

What ``docker compose up`` would trip over is checked here instead: the
files parse; builds, bind mounts and named volumes resolve; images are
pinned; every node config loads; every workload container has exactly one
registration (SPIRE entry or dev-agent entry) whose SVID carries the DNS
name meshnode maps from its ID; the IDs, addresses and allow lists make the
demo's Relay flow (client -> alpha -> beta -> gamma) authorized hop by hop;
and every node config passes ``meshnode check`` in staging mode against a
real dev agent that hands out the registered identities.

The SPIRE registrations are what ``compose/spire/bootstrap/bootstrap.sh``
really passes to ``spire-server``: the script runs with a stand-in
``spire-server`` on PATH that records its arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshnode.config.node import NodeConfig, load_node_config, parse_address
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig, load_agent_config
from meshnode.spiffeid import dns_name_for, parse_spiffe_id

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose"
FLAVORS = ("spire", "dev")
NODE_TOML = "/etc/meshnode/node.toml"
LABEL = "org.meshnode.workload"
SELECTOR = f"docker:label:{LABEL}:"
HEALTH_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Host paths outside the repository a compose file may bind-mount.
SYSTEM_BINDS = {"/var/run/docker.sock"}
# The keys the Compose Specification allows (compose-spec JSON schema, compose-go 2026-07):
# docker compose refuses any other, so a typo here would stop `up`.
TOP_LEVEL_KEYS = {"configs", "include", "models", "name", "networks", "secrets", "services", "version", "volumes"}
SERVICE_KEYS = set("""
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name
    cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset credential_spec
    depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file
    environment expose extends external_links extra_hosts gpus group_add healthcheck hostname image init ipc
    isolation label_file labels links logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit
    models network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_start
    pre_stop privileged profiles provider pull_policy pull_refresh_after read_only restart runtime scale secrets
    security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits
    use_api_socket user userns_mode uts volumes volumes_from working_dir
""".split())
HEALTHCHECK_KEYS = {"disable", "interval", "retries", "start_interval", "start_period", "test", "timeout"}


@dataclasses.dataclass(frozen=True)
class Workload:
    """A registered identity: what the agent hands the container of ``service``."""

    service: str
    spiffe_id: str
    dns_names: tuple[str, ...]
    socket: str  # dev agent entry name (the socket); the service name for SPIRE


# -- reading the compose files ---------------------------------------------


def compose(flavor: str) -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / flavor / "docker-compose.yml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file has no services"
    return data


def services(flavor: str) -> dict[str, dict[str, Any]]:
    return compose(flavor)["services"]  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    out = []
    for item in service.get("volumes", []):
        if isinstance(item, str):
            source, target = item.split(":")[:2]
        else:
            source, target = item["source"], item["target"]
        out.append((source, target))
    return out


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def is_meshnode(service: dict[str, Any]) -> bool:
    return bool(service.get("build", {}).get("dockerfile") == "compose/Dockerfile")


def node_services(flavor: str) -> dict[str, NodeConfig]:
    """Service name -> its node config, for the services that run `meshnode run`."""
    out = {}
    for name, svc in services(flavor).items():
        if is_meshnode(svc) and svc.get("command", [None])[0] == "run":
            (source,) = [s for s, t in mounts(svc) if t == NODE_TOML]
            out[name] = load_node_config(COMPOSE / flavor / source, environ={})
    return out


def client_args(flavor: str) -> dict[str, Any]:
    svc = services(flavor)["client"]
    assert svc["entrypoint"] == ["python", "/opt/meshnode/client.py"]
    args = iter(svc["command"])
    options, route = {}, []
    for arg in args:
        if arg.startswith("--"):
            options[arg] = next(args)
        else:
            route.append(arg)
    return {"target": options["--target"], "server_id": options["--server-id"], "route": route}


def dockerfile_froms(path: Path) -> list[str]:
    return re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", path.read_text(), re.MULTILINE)


def hcl_value(path: Path, key: str) -> str:
    match = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', path.read_text(), re.MULTILINE)
    assert match, f"{path.name} sets no {key}"
    return match.group(1)


# -- who gets which identity -------------------------------------------------

FAKE_SPIRE_SERVER = """\
import json, os, sys
state, args = os.environ["FAKE_SPIRE_STATE"], sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\\n")
marker = os.path.join(state, "entry-" + args[args.index("-entryID") + 1]) if "-entryID" in args else ""
if args[:2] == ["bundle", "show"]:
    print("-----BEGIN CERTIFICATE-----\\nZmFrZQ==\\n-----END CERTIFICATE-----")
elif args[:2] == ["token", "generate"]:
    print("Token: 0a1b2c3d-fake")
elif args[:2] == ["entry", "show"]:
    sys.exit(0 if os.path.exists(marker) else 1)
elif args[:2] == ["entry", "create"]:
    open(marker, "w").close()
"""


def run_bootstrap(tmp: Path, runs: int = 1) -> list[list[str]]:
    """Run bootstrap.sh ``runs`` times against a recording spire-server; its calls of the last run."""
    bin_dir, state, out = tmp / "bin", tmp / "state", tmp / "out"
    for d in (bin_dir, state, out):
        d.mkdir(exist_ok=True)
    fake = bin_dir / "spire-server"
    fake.write_text(f"#!{sys.executable}\n{FAKE_SPIRE_SERVER}")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "BOOTSTRAP_DIR": str(out), "FAKE_SPIRE_STATE": str(state)}
    for _ in range(runs):
        (state / "calls.jsonl").unlink(missing_ok=True)
        done = subprocess.run(["sh", str(COMPOSE / "spire/bootstrap/bootstrap.sh")], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def flags(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for flag, value in zip(args[2::2], args[3::2], strict=True):
        out.setdefault(flag, []).append(value)
    return out


@pytest.fixture(scope="module")
def spire_calls() -> list[list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        return run_bootstrap(Path(tmp))


def spire_workloads(calls: list[list[str]]) -> dict[str, Workload]:
    out = {}
    for call in calls:
        if call[:2] == ["entry", "create"]:
            f = flags(call)
            (selector,) = f["-selector"]
            assert selector.startswith(SELECTOR), f"entry {f['-entryID']}: select containers by label {LABEL}"
            service = selector.removeprefix(SELECTOR)
            assert service not in out, f"two entries select the {service} container"
            (spiffe_id,) = f["-spiffeID"]
            out[service] = Workload(service, spiffe_id, tuple(f.get("-dns", ())), service)
    return out


def dev_workloads() -> dict[str, Workload]:
    agent = load_agent_config(COMPOSE / "dev/agent.toml")
    nodes = node_services("dev")
    out = {}
    for name, svc in services("dev").items():
        if not is_meshnode(svc) or name in ("agent", "trace"):
            continue
        if name in nodes:
            socket = nodes[name].identity.socket
        else:
            socket = svc["environment"]["SPIFFE_ENDPOINT_SOCKET"]
        assert socket is not None and socket.startswith(f"unix://{agent.socket_dir}/"), socket
        entry = agent.entry(Path(socket).stem)
        names = (*([dns_name_for(entry.spiffe_id)] if entry.map_dns else []), *entry.dns_names)
        out[name] = Workload(name, str(entry.spiffe_id), names, entry.name)
    return out


def workloads(flavor: str, spire_calls: list[list[str]]) -> dict[str, Workload]:
    return spire_workloads(spire_calls) if flavor == "spire" else dev_workloads()


# -- the files parse and everything they name exists -----------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_compose_file_uses_only_compose_spec_keys(flavor: str) -> None:
    data = compose(flavor)
    assert {k for k in data if not k.startswith("x-")} <= TOP_LEVEL_KEYS
    for name, svc in data["services"].items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: not Compose keys: {set(svc) - SERVICE_KEYS}"
        assert set(svc.get("healthcheck", {})) <= HEALTHCHECK_KEYS, f"{name}: healthcheck keys"
        restart = svc.get("restart", "no")
        assert isinstance(restart, str), f"{name}: quote restart (YAML reads a bare no as false)"
        assert re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", restart), f"{name}: restart {restart}"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_build_contexts_and_dockerfiles_exist(flavor: str) -> None:
    built = 0
    for name, svc in services(flavor).items():
        if "build" not in svc:
            continue
        build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
        context = (COMPOSE / flavor / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        for source in re.findall(r"^COPY\s+(?!--from)(\S+)", dockerfile.read_text(), re.MULTILINE):
            assert (context / source).exists(), f"{dockerfile} copies {source}, missing from {context}"
        built += 1
    assert built


def test_dockerignore_lets_the_meshnode_image_sources_through() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", (COMPOSE / "Dockerfile").read_text(), re.MULTILINE)
    for source in (s.rstrip("/") for line in sources for s in line.split()):
        assert source in allowed, f".dockerignore keeps {source} (copied by compose/Dockerfile) out of the build"


def test_the_image_copies_every_file_the_package_build_reads() -> None:
    """pip builds the package in the image: pyproject's readme and license files must be there."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    sources = re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", (COMPOSE / "Dockerfile").read_text(), re.MULTILINE)
    copied = {s.rstrip("/") for line in sources for s in line.split()}
    assert {"pyproject.toml", "meshnode", project["readme"], *project.get("license-files", [])} <= copied


@pytest.mark.parametrize("flavor", FLAVORS)
def test_healthchecks_poll_often_only_while_starting(flavor: str) -> None:
    """A health check is a process in the container each time: fast while starting, then every 30 s."""
    checked = {name: svc["healthcheck"] for name, svc in services(flavor).items() if "healthcheck" in svc}
    assert checked
    for name, check in checked.items():
        assert (check["interval"], check["start_interval"]) == ("30s", "2s"), name
        assert int(check["start_period"].rstrip("s")) >= 30, name


@pytest.mark.parametrize("flavor", FLAVORS)
def test_bind_mounts_exist_and_named_volumes_are_declared(flavor: str) -> None:
    declared = set(compose(flavor).get("volumes") or {})
    used = set()
    for name, svc in services(flavor).items():
        for source, _target in mounts(svc):
            if not is_bind(source):
                assert source in declared, f"{name}: named volume {source!r} is not declared under volumes:"
                used.add(source)
            elif source.startswith("/"):
                assert source in SYSTEM_BINDS, f"{name}: unexpected host path {source}"
            else:
                assert (COMPOSE / flavor / source).exists(), f"{name}: bind-mounted {source} does not exist"
    assert used == declared, f"declared but unused volumes: {declared - used}"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_depends_on_names_services_that_can_satisfy_the_condition(flavor: str) -> None:
    all_services = services(flavor)
    for name, svc in all_services.items():
        deps = svc.get("depends_on", {})
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            assert dep in all_services, f"{name} depends on unknown service {dep!r}"
            assert spec["condition"] in HEALTH_CONDITIONS, f"{name} -> {dep}: {spec['condition']}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in all_services[dep], f"{name} waits for {dep} to be healthy; it has no check"
            if spec["condition"] == "service_completed_successfully":
                assert all_services[dep].get("restart") == "no", f"{dep} is a one-shot: restart: \"no\""


@pytest.mark.parametrize("flavor", FLAVORS)
def test_images_are_pinned(flavor: str) -> None:
    images = [svc["image"] for svc in services(flavor).values() if "image" in svc]
    for svc in services(flavor).values():
        if "build" in svc:
            build = svc["build"]
            images += dockerfile_froms((COMPOSE / flavor / build["context"]) / build.get("dockerfile", "Dockerfile"))
    for image in images:
        if re.fullmatch(r"[a-z]+", image):  # a build stage name (FROM ... AS name)
            continue
        _name, _, tag = image.rpartition("/")[2].partition(":")
        assert tag and tag != "latest", f"{image}: pin a version tag"


def test_spire_images_share_one_version() -> None:
    svcs = services("spire")
    versions = {svcs["spire-server"]["image"].split(":")[1], svcs["spire-agent"]["image"].split(":")[1]}
    versions |= {i.split(":")[1] for i in dockerfile_froms(COMPOSE / "spire/bootstrap/Dockerfile") if "spire" in i}
    assert len(versions) == 1, f"SPIRE server, agent and bootstrap CLI must match: {versions}"


def test_collector_pipelines_use_defined_components_and_nodes_reach_it() -> None:
    config = yaml.safe_load((COMPOSE / "spire/otel-collector.yaml").read_text())
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"pipeline uses undefined {kind[:-1]} {component}"
    svcs = services("spire")
    host, port = parse_address(config["exporters"]["otlp_grpc/jaeger"]["endpoint"], "jaeger endpoint")
    assert host in svcs and port == 4317
    listen = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    for name, svc in svcs.items():
        endpoint = svc.get("environment", {}).get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint is not None:
            assert endpoint == f"http://otel-collector:{listen.rpartition(':')[2]}", f"{name}: {endpoint}"


# -- configs, identities and the Relay flow --------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_node_configs_load(flavor: str) -> None:
    nodes = node_services(flavor)
    assert set(nodes) == {"alpha", "beta", "gamma"}
    for name, config in nodes.items():
        assert config.name == name
        assert config.mode == "production", f"{name}: in compose a node must not fall back to a dev identity"
        assert config.identity.source == "workload-api"
        assert config.identity.trust_domain == "example.org"


def test_dev_agent_config_covers_every_workload() -> None:
    agent = load_agent_config(COMPOSE / "dev/agent.toml")
    assert {e.name for e in agent.entries} == {"alpha", "beta", "gamma", "client"}
    assert set(dev_workloads()) == {"alpha", "beta", "gamma", "client"}
    for svc in ("agent", "alpha", "beta", "gamma", "client"):
        assert ("agent-sockets", str(agent.socket_dir)) in mounts(services("dev")[svc]), svc


def test_spire_nodes_share_the_agent_socket_volume() -> None:
    socket_path = hcl_value(COMPOSE / "spire/spire/agent.conf", "socket_path")
    (volume,) = [s for s, t in mounts(services("spire")["spire-agent"]) if t == str(Path(socket_path).parent)]
    for name, config in node_services("spire").items():
        assert config.identity.socket == f"unix://{socket_path}", name
        assert (volume, str(Path(socket_path).parent)) in mounts(services("spire")[name])
    assert services("spire")["client"]["environment"]["SPIFFE_ENDPOINT_SOCKET"] == f"unix://{socket_path}"
    agent_conf, server_conf = COMPOSE / "spire/spire/agent.conf", COMPOSE / "spire/spire/server.conf"
    assert hcl_value(agent_conf, "trust_domain") == hcl_value(server_conf, "trust_domain") == "example.org"
    assert services("spire")["spire-agent"]["pid"] == "host", "the docker attestor must see other containers' PIDs"


def test_spire_bootstrap_hands_the_agent_its_bundle_and_token(tmp_path: Path) -> None:
    calls = run_bootstrap(tmp_path, runs=2)
    agent_conf = COMPOSE / "spire/spire/agent.conf"
    bootstrap_dir = str(Path(hcl_value(agent_conf, "join_token_file")).parent)
    assert str(Path(hcl_value(agent_conf, "trust_bundle_path")).parent) == bootstrap_dir
    script = (COMPOSE / "spire/bootstrap/bootstrap.sh").read_text()
    script_default = re.search(r"^OUT=\$\{BOOTSTRAP_DIR:-(\S+)\}", script, re.MULTILINE)
    assert script_default and script_default.group(1) == bootstrap_dir
    for service in ("spire-bootstrap", "spire-agent"):
        assert ("spire-bootstrap", bootstrap_dir) in mounts(services("spire")[service]), service
    assert (tmp_path / "out/join_token").read_text() == "0a1b2c3d-fake\n"
    assert (tmp_path / "out/bundle.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert oct((tmp_path / "out/join_token").stat().st_mode & 0o777) == "0o600"
    (token,) = [flags(c) for c in calls if c[:2] == ["token", "generate"]]
    entries = [flags(c) for c in calls if c[:2] == ["entry", "update"]]
    assert not [c for c in calls if c[:2] == ["entry", "create"]], "a second run must update, not duplicate"
    assert len(entries) == 4 and all(e["-parentID"] == token["-spiffeID"] for e in entries)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_workload_has_one_registration_with_its_dns_name(flavor: str, spire_calls: list[list[str]]) -> None:
    registered = workloads(flavor, spire_calls)
    meshnode_services = {n for n, s in services(flavor).items() if is_meshnode(s) and n not in ("agent", "trace")}
    assert set(registered) == meshnode_services
    for name, svc in services(flavor).items():
        if flavor == "spire" and name in meshnode_services:
            assert svc["labels"][LABEL] == name, f"{name}: the label its registration entry selects"
    ids = [w.spiffe_id for w in registered.values()]
    assert len(set(ids)) == len(ids), "two containers share one SPIFFE ID"
    for workload in registered.values():
        expected = dns_name_for(parse_spiffe_id(workload.spiffe_id))
        assert expected in workload.dns_names, f"{workload.service}: its SVID needs the DNS SAN {expected}"
        if flavor == "spire":
            assert workload.dns_names == (expected,)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_relay_flow_is_addressed_and_authorized_hop_by_hop(flavor: str, spire_calls: list[list[str]]) -> None:
    registered = workloads(flavor, spire_calls)
    nodes = node_services(flavor)
    for name, config in nodes.items():
        for peer in config.peers.values():
            host, port = parse_address(peer.address, "peer address")
            assert host in nodes, f"{name}: peer {peer.name} at {host}, which is no node service"
            assert port == nodes[host].host_port[1], f"{name}: {host} listens on {nodes[host].listen}"
            assert str(peer.spiffe_id) == registered[host].spiffe_id, f"{name}: {host} is registered differently"
        for allowed in config.authz.allow:
            assert allowed in {w.spiffe_id for w in registered.values()}, f"{name} allows unregistered {allowed}"
    client = client_args(flavor)
    first, port = parse_address(client["target"], "--target")
    assert port == nodes[first].host_port[1]
    assert client["server_id"] == registered[first].spiffe_id
    caller, at = registered["client"].spiffe_id, first
    assert caller in nodes[at].authz.allow, f"{at} must allow the client"
    for hop in client["route"]:
        assert hop in nodes[at].peers, f"{at} has no peer {hop} to relay to"
        caller, at = registered[at].spiffe_id, hop
        assert caller in nodes[at].authz.allow, f"{at} must allow {caller}"
    assert client["route"] == ["beta", "gamma"]


# -- meshnode check, staging, against a real dev agent ---------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mncompose-", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def agent_for(flavor: str, registered: dict[str, Workload], socket_dir: Path) -> AgentConfig:
    """A dev agent that hands out exactly the flavor's registered identities."""
    if flavor == "dev":
        return dataclasses.replace(load_agent_config(COMPOSE / "dev/agent.toml"), socket_dir=socket_dir)
    entries = [
        EntryConfig(w.socket, parse_spiffe_id(w.spiffe_id), dns_names=w.dns_names, map_dns=False)
        for w in registered.values()
    ]
    return AgentConfig("example.org", socket_dir, tuple(entries))


@pytest.mark.slow
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("node", ["alpha", "beta", "gamma"])
def test_node_config_passes_meshnode_check_in_staging(
    flavor: str, node: str, spire_calls: list[list[str]], socket_dir: Path
) -> None:
    registered = workloads(flavor, spire_calls)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHNODE_", "SPIFFE_", "OTEL_"))}
    env["MESHNODE_MODE"] = "staging"
    (source,) = [s for s, t in mounts(services(flavor)[node]) if t == NODE_TOML]
    with DevAgentThread(agent_for(flavor, registered, socket_dir)) as agent:
        socket = agent.socket_address(registered[node].socket)
        command = [sys.executable, "-m", "meshnode.cli", "check", str(COMPOSE / flavor / source), "--socket", socket]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(command)}\n{report}"
    assert "result: ready for production" in report
    assert f"spiffe id      {registered[node].spiffe_id}" in report
