"""deploy/kubernetes renders into a mesh a cluster would accept and that would work.

Offline: `kubectl kustomize` renders the tree; every object is validated against the Kubernetes
API schemas (kubernetes-validate, strict: unknown fields are errors) and the custom resources
against the CRDs kept in the tree; then what no schema sees: references between objects, the
SPIRE wiring (trust domain, cluster name, sockets, tokens), each node.toml as `meshnode check
--config-only` loads it, the SPIFFE IDs the ClusterSPIFFEID gives the pods against the IDs the
node configs expect, and the probe commands against the meshnode command line of the image.
Nothing here runs a cluster; docs/kubernetes.md says what was checked how.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from meshnode.cli import build_parser
from meshnode.cli import probe as probe_command
from meshnode.spiffeid import dns_name_for
from tests.support import k8s
from tests.support.k8s import Obj

#: The oldest Kubernetes minor the tree is checked against, and the newest kubernetes-validate knows.
OLDEST = "1.30.0"


@pytest.fixture(scope="module")
def objs() -> list[Obj]:
    return k8s.render()


def node_configs(objs: list[Obj]) -> dict[str, dict[str, Any]]:
    """Deployment name -> its node.toml, read from the ConfigMap its pods mount."""
    found = {}
    for name in k8s.named(objs, "Deployment", "meshnode"):
        cm = k8s.volume_for(objs, "Deployment", "meshnode", name, "meshnode", "/etc/meshnode")["configMap"]["name"]
        found[name] = tomllib.loads(k8s.config_map_data(objs, "meshnode", cm, "node.toml"))
    return found


def test_the_tree_renders_a_complete_mesh(objs: list[Obj]) -> None:
    kinds = {k8s.key(o)[0] for o in objs}
    assert {"Namespace", "CustomResourceDefinition", "StatefulSet", "DaemonSet", "CSIDriver", "ClusterSPIFFEID",
            "Deployment", "Service", "NetworkPolicy", "ValidatingWebhookConfiguration"} <= kinds
    assert sorted(k8s.named(objs, "Deployment", "meshnode")) == ["alpha", "beta", "gamma"]
    assert k8s.named(objs, "Deployment", "meshnode")["beta"]["spec"]["replicas"] == 2
    assert sorted(k8s.named(objs, "DaemonSet", "spire-system")) == ["spiffe-csi-driver", "spire-agent"]


@pytest.mark.parametrize("version", [OLDEST, "latest"])
def test_every_object_is_valid_for_the_kubernetes_api(objs: list[Obj], version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    version = kubernetes_validate.latest_version() if version == "latest" else version
    custom = {(o["spec"]["group"], o["spec"]["names"]["kind"]) for o in objs if o["kind"] == "CustomResourceDefinition"}
    problems = []
    for o in objs:
        if (o["apiVersion"].split("/")[0], o["kind"]) in custom:
            continue  # validated against the CRDs of the tree (below)
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{k8s.where(o)}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError:
            problems.append(f"{k8s.where(o)}: Kubernetes {version} has no {o['apiVersion']} {o['kind']}")
    assert problems == []


def test_custom_resources_match_the_crds_in_the_tree(objs: list[Obj]) -> None:
    assert [o["kind"] for o in objs if o["apiVersion"].startswith("spire.spiffe.io/")] == ["ClusterSPIFFEID"]
    assert k8s.custom_resource_problems(objs) == []


def test_every_reference_resolves(objs: list[Obj]) -> None:
    assert k8s.reference_problems(objs) == []


def test_every_image_is_pinned_by_a_release_tag(objs: list[Obj]) -> None:
    assert k8s.image_problems(objs) == []
    images = {c["image"] for _, pod in k8s.pods(objs) for c in pod["spec"]["containers"]}
    version = tomllib.loads((k8s.ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"meshnode:{version}" in images  # the tag docs/kubernetes.md builds


@pytest.mark.parametrize(("break_it", "found"), [
    (lambda o: o.remove(next(x for x in o if k8s.key(x) == ("ServiceAccount", "meshnode", "beta"))),
     "Deployment meshnode/beta: serviceAccountName beta does not exist"),
    (lambda o: o.remove(next(x for x in o if k8s.key(x)[0] == "ConfigMap" and "gamma-config" in k8s.key(x)[2])),
     "Deployment meshnode/gamma: volume config names ConfigMap gamma-config-"),
    (lambda o: k8s.named(o, "Service", "meshnode")["alpha"]["spec"]["selector"].update({"tier": "x"}),
     "Service meshnode/alpha: its selector matches no pod"),
    (lambda o: k8s.named(o, "Service", "meshnode")["beta"]["spec"]["ports"][0].update({"targetPort": "grpc"}),
     "Service meshnode/beta: targetPort grpc is no port of the pods it selects"),
    (lambda o: k8s.container(o, "Deployment", "meshnode", "alpha", "meshnode").update({"image": "meshnode"}),
     "Deployment meshnode/alpha: container meshnode image meshnode is not pinned"),
    (lambda o: k8s.named(o, "ClusterSPIFFEID")["meshnode"]["spec"].update({"dnsNameTemplate": ["x"]}),
     "ClusterSPIFFEID meshnode: spec: Additional properties are not allowed ('dnsNameTemplate' was unexpected)"),
])
def test_each_check_finds_what_it_looks_for(objs: list[Obj], break_it: Any, found: str) -> None:
    broken = copy.deepcopy(objs)
    break_it(broken)
    problems = k8s.reference_problems(broken) + k8s.image_problems(broken) + k8s.custom_resource_problems(broken)
    assert any(p.startswith(found) for p in problems), problems


# -- SPIRE wiring ------------------------------------------------------------------------------------


def test_spire_server_agent_and_controller_manager_agree(objs: list[Obj]) -> None:
    import yaml

    server = k8s.config_map_data(objs, "spire-system", "spire-server", "server.conf")
    agent = k8s.config_map_data(objs, "spire-system", "spire-agent", "agent.conf")
    manager = yaml.safe_load(k8s.config_map_data(objs, "spire-system", "spire-controller-manager", "config.yaml"))
    # one trust domain and one cluster name (k8s_psat), everywhere
    assert k8s.hcl_string(server, "trust_domain") == k8s.hcl_string(agent, "trust_domain") == manager["trustDomain"]
    assert re.search(r'clusters = \{\s*"([^"]+)"', server).group(1) == k8s.hcl_string(agent, "cluster") \
        == manager["clusterName"]  # type: ignore[union-attr]
    # only the agent's service account may attest as a node
    agent_sa = k8s.named(objs, "DaemonSet", "spire-system")["spire-agent"]["spec"]["template"]["spec"]
    assert re.search(r'service_account_allow_list = \["([^"]+)"\]', server).group(1) == \
        f"spire-system:{agent_sa['serviceAccountName']}"  # type: ignore[union-attr]
    # the agent's PSAT: the projected token, for the audience the server checks (its default, spire-server)
    token = k8s.volume_for(objs, "DaemonSet", "spire-system", "spire-agent", "spire-agent", "/var/run/secrets/tokens")
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert k8s.hcl_string(agent, "token_path") == f"/var/run/secrets/tokens/{source['path']}"
    assert source["audience"] == "spire-server" and "audience" not in server
    # the agent finds the server by its Service, and trusts the bundle the server publishes
    assert k8s.hcl_string(agent, "server_address") == "spire-server.spire-system.svc"
    assert k8s.hcl_string(agent, "server_port") == str(k8s.named(objs, "Service", "spire-system")["spire-server"]
                                                       ["spec"]["ports"][0]["port"])
    bundle = k8s.volume_for(objs, "DaemonSet", "spire-system", "spire-agent", "spire-agent", "/run/spire/bundle")
    assert bundle["configMap"]["name"] == "spire-bundle" and "spire-bundle" in k8s.named(objs, "ConfigMap",
                                                                                         "spire-system")
    assert k8s.hcl_string(agent, "trust_bundle_path") == "/run/spire/bundle/bundle.crt"  # the notifier's key
    # the controller manager reaches the server's admin socket (its default path) in a shared volume
    server_socket = Path(k8s.hcl_string(server, "socket_path"))
    shared = k8s.volume_for(objs, "StatefulSet", "spire-system", "spire-server", "spire-server",
                            str(server_socket.parent))
    assert shared == k8s.volume_for(objs, "StatefulSet", "spire-system", "spire-server", "spire-controller-manager",
                                    "/spire-server")
    assert server_socket.name == "api.sock" and "spireServerSocketPath" not in manager
    hooks = [o["metadata"]["name"] for o in objs if o["kind"] == "ValidatingWebhookConfiguration"]
    assert hooks == [manager["validatingWebhookConfigurationName"]]


def test_the_workload_api_socket_reaches_every_node(objs: list[Obj]) -> None:
    """agent socket -> host directory -> CSI driver -> csi.spiffe.io volume -> SPIFFE_ENDPOINT_SOCKET."""
    agent_socket = Path(k8s.hcl_string(k8s.config_map_data(objs, "spire-system", "spire-agent", "agent.conf"),
                                       "socket_path"))
    agent_dir = k8s.volume_for(objs, "DaemonSet", "spire-system", "spire-agent", "spire-agent",
                               str(agent_socket.parent))
    driver = k8s.container(objs, "DaemonSet", "spire-system", "spiffe-csi-driver", "spiffe-csi-driver")
    args = driver["args"]
    driver_dir = k8s.volume_for(objs, "DaemonSet", "spire-system", "spiffe-csi-driver", "spiffe-csi-driver",
                                args[args.index("-workload-api-socket-dir") + 1])
    assert agent_dir["hostPath"]["path"] == driver_dir["hostPath"]["path"]
    for name in ("alpha", "beta", "gamma"):
        node = k8s.container(objs, "Deployment", "meshnode", name, "meshnode")
        mount = next(m for m in node["volumeMounts"]
                     if "csi" in k8s.volume_for(objs, "Deployment", "meshnode", name, "meshnode", m["mountPath"]))
        assert mount["readOnly"] is True
        assert k8s.env(node)["SPIFFE_ENDPOINT_SOCKET"] == f"unix://{mount['mountPath']}/{agent_socket.name}"


# -- the nodes -------------------------------------------------------------------------------------


def test_every_node_toml_passes_check_config_only(objs: list[Obj], tmp_path: Path) -> None:
    for name in k8s.named(objs, "Deployment", "meshnode"):
        cm = k8s.volume_for(objs, "Deployment", "meshnode", name, "meshnode", "/etc/meshnode")["configMap"]["name"]
        path = tmp_path / f"{name}.toml"
        path.write_text(k8s.config_map_data(objs, "meshnode", cm, "node.toml"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHNODE_", "SPIFFE_"))}
        done = subprocess.run([sys.executable, "-m", "meshnode.cli", "check", str(path), "--config-only", "--json"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert (report["node"], report["mode"]) == (name, "production")
        assert [c["name"] for c in report["checks"] if not c["ok"]] == []


def spiffe_ids(objs: list[Obj]) -> dict[str, str]:
    """Deployment name -> the SPIFFE ID the ClusterSPIFFEID gives its pods (checked to select exactly them)."""
    manager = k8s.config_map_data(objs, "spire-system", "spire-controller-manager", "config.yaml")
    trust_domain = re.search(r"trustDomain: (\S+)", manager).group(1)  # type: ignore[union-attr]
    (cid,) = k8s.named(objs, "ClusterSPIFFEID").values()
    ids = {}
    for name, deployment in k8s.named(objs, "Deployment", "meshnode").items():
        pod = deployment["spec"]["template"]
        namespace_labels = k8s.named(objs, "Namespace")["meshnode"]["metadata"].get("labels", {})
        namespace_labels = {**namespace_labels, "kubernetes.io/metadata.name": "meshnode"}  # set by the API server
        assert k8s.selects(cid["spec"]["podSelector"], pod["metadata"]["labels"]), name
        assert k8s.selects(cid["spec"]["namespaceSelector"], namespace_labels), name
        values = {"TrustDomain": trust_domain, "PodMeta.Namespace": "meshnode",
                  "PodSpec.ServiceAccountName": pod["spec"]["serviceAccountName"]}
        ids[name] = k8s.go_template(cid["spec"]["spiffeIDTemplate"], values)
        # the DNS SAN `meshnode probe` verifies the node by: meshnode's own mapping of that ID
        (dns_template,) = cid["spec"]["dnsNameTemplates"]
        assert k8s.go_template(dns_template, values) == dns_name_for(ids[name])
    return ids


def test_peer_ids_are_the_ids_the_clusterspiffeid_gives_those_pods(objs: list[Obj]) -> None:
    ids = spiffe_ids(objs)
    assert ids == {n: f"spiffe://example.org/ns/meshnode/sa/{n}" for n in ("alpha", "beta", "gamma")}
    configs = node_configs(objs)
    edges = []
    for name, config in configs.items():
        assert config["identity"]["trust_domain"] == "example.org"
        for peer_name, peer in config.get("peers", {}).items():
            host, _, port = peer["address"].rpartition(":")
            service, namespace, *rest = host.split(".")
            assert (namespace, rest) == ("meshnode", ["svc", "cluster", "local"]), peer["address"]
            svc = k8s.named(objs, "Service", namespace)[service]
            assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
            (behind,) = [n for n, d in k8s.named(objs, "Deployment", namespace).items()
                         if k8s.selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
            assert peer["spiffe_id"] == ids[behind], (name, peer_name)
            edges.append((name, behind))
    assert sorted(edges) == [("alpha", "beta"), ("beta", "gamma")]


@pytest.mark.parametrize(("caller", "callee", "allowed"), [
    ("alpha", "beta", True), ("beta", "gamma", True), ("gamma", "beta", False), ("alpha", "gamma", False),
])
def test_each_node_admits_exactly_the_caller_its_peers_need(objs: list[Obj], tmp_path: Path, caller: str,
                                                            callee: str, allowed: bool) -> None:
    ids = spiffe_ids(objs)
    config = tmp_path / f"{callee}.toml"
    cm = k8s.volume_for(objs, "Deployment", "meshnode", callee, "meshnode", "/etc/meshnode")["configMap"]["name"]
    config.write_text(k8s.config_map_data(objs, "meshnode", cm, "node.toml"))
    done = subprocess.run([sys.executable, "-m", "meshnode.cli", "policy", "explain", "--config", str(config),
                           "--peer", ids[caller], "--method", "/meshnode.demo.v1.Relay/Forward"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == (0 if allowed else 1), done.stdout + done.stderr


def test_probes_run_meshnode_probe_from_the_image_against_the_nodes_port(objs: list[Obj]) -> None:
    pyproject = tomllib.loads((k8s.ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["meshnode"] == "meshnode.cli:main"
    dockerfile = (k8s.ROOT / "compose" / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install '\.\[otlp\]'", dockerfile, re.M)  # the package, with its console script
    parser = build_parser()
    configs = node_configs(objs)
    for name, config in configs.items():
        c = k8s.container(objs, "Deployment", "meshnode", name, "meshnode")
        assert c["command"] == ["meshnode", "run", "/etc/meshnode/node.toml"]
        port = int(config["node"]["listen"].rpartition(":")[2])
        assert [p["containerPort"] for p in c["ports"]] == [port]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = c[kind]["exec"]["command"]
            assert command[0] == "meshnode", (name, kind)
            args = parser.parse_args(command[1:])
            assert args.func is probe_command.run
            assert args.address == f"127.0.0.1:{port}" and args.timeout <= c[kind]["timeoutSeconds"]


def test_the_nodes_run_locked_down(objs: list[Obj]) -> None:
    configs = node_configs(objs)
    for name, deployment in k8s.named(objs, "Deployment", "meshnode").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] > configs[name]["node"]["shutdown_grace"]
        (c,) = pod["containers"]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        # the only writable place: a private tmpfs, where the node keeps what gRPC reads from files
        writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
        assert writable == [k8s.env(c)["XDG_RUNTIME_DIR"]]
        assert k8s.volume_for(objs, "Deployment", "meshnode", name, "meshnode", writable[0])["emptyDir"]["medium"] \
            == "Memory"
    for svc in k8s.named(objs, "Service", "meshnode").values():
        for port in svc["spec"]["ports"]:  # Istio and others treat the port as opaque TLS, not as gRPC
            assert port["name"].startswith("tls-") and port["appProtocol"] == "tls"
