"""Rendering deploy/kubernetes and the checks a cluster would otherwise do for us (or fail to do).

Each ``*_problems`` function takes the rendered objects and returns what is wrong, one line per
problem, so a test asserts ``== []`` and another proves each check finds a broken tree.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
KIT = ROOT / "deploy" / "kubernetes"

Obj = dict[str, Any]

#: kinds whose pod template these checks look into
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def render(path: Path = KIT) -> list[Obj]:
    """``kubectl kustomize path``, parsed; skips the caller's test when kubectl is not installed."""
    import pytest

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here: it renders deploy/kubernetes (kubectl kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def named(objs: list[Obj], kind: str, namespace: str = "") -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs
            if o["kind"] == kind and o["metadata"].get("namespace", "") == namespace}


def pods(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, its pod template) for every Deployment, StatefulSet and DaemonSet."""
    for o in objs:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]


def where(o: Obj) -> str:
    kind, ns, name = key(o)
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, or a plain map as a Service has) against labels."""
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    assert "matchExpressions" not in selector, "the checks understand matchLabels only"
    return all(labels.get(k) == v for k, v in match.items())


# -- cross-references ------------------------------------------------------------------------


def reference_problems(objs: list[Obj]) -> list[str]:
    problems: list[str] = []
    namespaces = set(named(objs, "Namespace"))
    for o in objs:
        ns = o["metadata"].get("namespace")
        if ns and ns not in namespaces:
            problems.append(f"{where(o)}: namespace {ns} is not created here")
    for w, pod in pods(objs):
        ns = w["metadata"]["namespace"]
        spec = pod["spec"]
        sa = spec.get("serviceAccountName", "default")
        if sa not in named(objs, "ServiceAccount", ns):
            problems.append(f"{where(w)}: serviceAccountName {sa} does not exist")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            for cm in _config_maps(v):
                if cm not in named(objs, "ConfigMap", ns):
                    problems.append(f"{where(w)}: volume {v['name']} names ConfigMap {cm}, which does not exist")
            if "csi" in v and v["csi"]["driver"] not in named(objs, "CSIDriver"):
                problems.append(f"{where(w)}: volume {v['name']} uses CSI driver {v['csi']['driver']}, not installed")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    problems.append(f"{where(w)}: container {c['name']} mounts {m['name']}, which is no volume")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in {p.get("name") for p in c.get("ports", [])}:
                    problems.append(f"{where(w)}: {probe} of {c['name']} names port {port}, which it has not")
        if w["kind"] == "StatefulSet" and w["spec"]["serviceName"] not in named(objs, "Service", ns):
            problems.append(f"{where(w)}: serviceName {w['spec']['serviceName']} does not exist")
        if not selects(w["spec"]["selector"], pod["metadata"].get("labels", {})):
            problems.append(f"{where(w)}: its selector does not select its own pods")
    problems += _service_problems(objs)
    problems += _rbac_problems(objs)
    problems += _policy_problems(objs)
    for hook in (o for o in objs if o["kind"] == "ValidatingWebhookConfiguration"):
        for wh in hook["webhooks"]:
            svc = wh["clientConfig"]["service"]
            if svc["name"] not in named(objs, "Service", svc["namespace"]):
                problems.append(f"{where(hook)}: webhook {wh['name']} calls Service {svc['name']}, not here")
    return problems


def _config_maps(volume: Obj) -> list[str]:
    if "configMap" in volume:
        return [volume["configMap"]["name"]]
    sources = volume.get("projected", {}).get("sources", [])
    return [s["configMap"]["name"] for s in sources if "configMap" in s]


def _service_problems(objs: list[Obj]) -> list[str]:
    problems = []
    for svc in (o for o in objs if o["kind"] == "Service"):
        ns = svc["metadata"]["namespace"]
        backing = [pod for w, pod in pods(objs) if w["metadata"]["namespace"] == ns
                   and selects(svc["spec"]["selector"], pod["metadata"].get("labels", {}))]
        if not backing:
            problems.append(f"{where(svc)}: its selector matches no pod")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in backing:
                declared = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
                if not any(p.get("name") == target or p["containerPort"] == target for p in declared):
                    problems.append(f"{where(svc)}: targetPort {target} is no port of the pods it selects")
    return problems


def _rbac_problems(objs: list[Obj]) -> list[str]:
    problems = []
    for b in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        ref = b["roleRef"]
        roles = named(objs, ref["kind"], b["metadata"].get("namespace", "") if ref["kind"] == "Role" else "")
        if ref["name"] not in roles:
            problems.append(f"{where(b)}: roleRef {ref['kind']} {ref['name']} does not exist")
        for s in b["subjects"]:
            if s["kind"] == "ServiceAccount" and s["name"] not in named(objs, "ServiceAccount", s["namespace"]):
                problems.append(f"{where(b)}: subject ServiceAccount {s['namespace']}/{s['name']} does not exist")
    return problems


def _policy_problems(objs: list[Obj]) -> list[str]:
    """Every podSelector of a NetworkPolicy (and of its peers) selects some pod of its namespace."""
    problems = []
    for np in (o for o in objs if o["kind"] == "NetworkPolicy"):
        ns = np["metadata"]["namespace"]
        labels = [pod["metadata"].get("labels", {}) for w, pod in pods(objs) if w["metadata"]["namespace"] == ns]
        selectors = [np["spec"]["podSelector"]]
        for rule in np["spec"].get("ingress", []) + np["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    selectors.append(peer["podSelector"])
        for selector in selectors:
            if not any(selects(selector, lab) for lab in labels):
                problems.append(f"{where(np)}: podSelector {selector} selects no pod")
    return problems


def image_problems(objs: list[Obj]) -> list[str]:
    problems = []
    for w, pod in pods(objs):
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            if not name or "/" in tag or tag in ("latest", "nightly", "devel", "") or "@" in image:
                problems.append(f"{where(w)}: container {c['name']} image {image} is not pinned by a release tag")
    return problems


# -- custom resources against the CRDs kept in the tree -----------------------------------------


def crd_schemas(objs: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    """(group, version, kind) -> the openAPIV3Schema, closed: unknown fields are errors, as with
    kubectl's default strict field validation."""
    schemas = {}
    for crd in (o for o in objs if o["kind"] == "CustomResourceDefinition"):
        spec = crd["spec"]
        for version in spec["versions"]:
            schemas[(spec["group"], version["name"], spec["names"]["kind"])] = _closed(
                copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return schemas


def _closed(schema: Obj) -> Obj:
    if isinstance(schema, dict):
        for value in schema.values():
            _closed(value)
        if "properties" in schema and "additionalProperties" not in schema and schema.get("type") == "object":
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema


def custom_resource_problems(objs: list[Obj]) -> list[str]:
    import jsonschema

    schemas = crd_schemas(objs)
    problems = []
    for o in objs:
        group, _, version = o["apiVersion"].rpartition("/")
        if not group or "." not in group or group.endswith("k8s.io"):
            continue
        schema = schemas.get((group, version, o["kind"]))
        if schema is None:
            problems.append(f"{where(o)}: no CRD in this tree defines {o['apiVersion']} {o['kind']}")
            continue
        body = {k: v for k, v in o.items() if k != "metadata"} | {"metadata": {}}
        for error in jsonschema.Draft7Validator(schema).iter_errors(body):
            problems.append(f"{where(o)}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}")
    return problems


# -- SPIRE's configuration (HCL, read for the few keys the wiring depends on) --------------------


def hcl_strings(text: str, name: str) -> list[str]:
    """Every string value of ``name = "..."`` in an HCL text."""
    return re.findall(rf'\b{re.escape(name)}\s*=\s*"([^"]*)"', text)


def hcl_string(text: str, name: str) -> str:
    values = hcl_strings(text, name)
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def config_map_data(objs: list[Obj], namespace: str, name: str, key_: str) -> str:
    data: str = named(objs, "ConfigMap", namespace)[name]["data"][key_]
    return data


def container(objs: list[Obj], kind: str, namespace: str, name: str, container_name: str) -> Obj:
    pod = named(objs, kind, namespace)[name]["spec"]["template"]["spec"]
    found: Obj = next(c for c in pod["containers"] if c["name"] == container_name)
    return found


def volume_for(objs: list[Obj], kind: str, namespace: str, name: str, container_name: str, mount: str) -> Obj:
    """The volume mounted at ``mount`` in that container."""
    pod = named(objs, kind, namespace)[name]["spec"]["template"]["spec"]
    c = container(objs, kind, namespace, name, container_name)
    vol_name = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == mount)
    found: Obj = next(v for v in pod["volumes"] if v["name"] == vol_name)
    return found


def env(c: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def go_template(template: str, values: dict[str, str]) -> str:
    """The subset of Go templates a ClusterSPIFFEID template uses here: ``{{ .A.B }}``."""
    def field(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"template field {match.group(1)} is not modelled"
        return values[match.group(1)]

    return re.sub(r"\{\{\s*\.([A-Za-z.]+)\s*\}\}", field, template)
