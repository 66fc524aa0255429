"""Federation without a restart, with real processes and real TLS.

Two ``meshnode run`` processes on the files source: ``beta`` (example.org; EchoService and
RelayService; ``federates_with = ["partner.org"]``; a spiffe-id peer ``gamma``) and ``gamma``
(partner.org; RelayService; a 1 s ``max_connection_age``, so beta's connection to it keeps making
new handshakes). Callers are this test process: partner.org and other.org workloads call beta's
Echo (server side); example.org's alpha calls beta's Relay, which calls gamma through beta's xDS
control plane (client side).

The test writes ``partner.org.json`` / ``.pem`` into beta's ``federated_bundles_dir`` with an atomic
rename, and waits for beta's ``identity.bundle_updated`` event naming the new set of trust domains
(not a sleep); gRPC's file watcher then takes up to a second more on the client side, so Relay
calls are repeated until they pass (or fail), with a generous limit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import IdentitySnapshot, certs_pem
from meshnode.spiffeid import dns_name_for
from meshnode.testing import issue_snapshot, short_tmpdir
from tests.support.agent_process import AgentProcess
from tests.support.federation import atomic_write, bundle_bytes, spiffe_bundle, svid_files, x509_key
from tests.support.meshnode_run import counter_total
from tests.support.procs import Meshnode
from tests.support.scripted_workload_api import ScriptedWorkloadApi, x509_response
from tests.support.wait import eventually

BETA, GAMMA = "spiffe://example.org/node/beta", "spiffe://partner.org/node/gamma"
ALPHA = "spiffe://example.org/node/alpha"
PARTNER_APP, OTHER_APP = "spiffe://partner.org/app", "spiffe://other.org/app"
SOURCE_ERRORS = "meshnode.identity.source_errors"


@dataclass
class Mesh:
    """The two nodes, their CAs, and how bundles reach beta (``federate``)."""

    example: DevCA
    partner: DevCA
    other: DevCA
    fed: Path
    beta: Meshnode
    gamma: Meshnode
    port: int
    #: make beta's identity source hold exactly these foreign bundles: a directory write, or a Workload API push
    federate: Callable[[dict[str, DevCA]], None]

    def call_echo(self, ca: DevCA, spiffe_id: str, channel: grpc.Channel | None = None) -> tuple[str, str]:
        """Say() to beta as ``spiffe_id`` on a new connection (or ``channel``): ("OK", caller) or (code, details)."""
        own = channel or self.channel(ca, spiffe_id)
        try:
            reply = demo_pb2_grpc.EchoStub(own).Say(demo_pb2.SayRequest(text="hi"), timeout=10)
            return "OK", reply.caller
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
        finally:
            if channel is None:
                own.close()

    def channel(self, ca: DevCA, spiffe_id: str) -> grpc.Channel:
        snap = issue_snapshot(ca, spiffe_id)
        creds = grpc.ssl_channel_credentials(certs_pem(self.example.bundle), snap.key_pem, snap.chain_pem)
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=[
            ("grpc.ssl_target_name_override", dns_name_for(BETA)), ("grpc.use_local_subchannel_pool", 1)])

    def relay(self) -> tuple[str, str]:
        """alpha -> beta -> gamma: ("OK", "beta<-alpha gamma<-beta") or (code, details)."""
        with self.channel(self.example, ALPHA) as channel:
            try:
                reply = demo_pb2_grpc.RelayStub(channel).Forward(
                    demo_pb2.ForwardRequest(text="hi", route=["gamma"]), timeout=10)
                return "OK", " ".join(f"{h.node}<-{h.caller.rsplit('/', 1)[-1]}" for h in reply.hops)
            except grpc.RpcError as err:
                return err.code().name, err.details() or ""

    def trust_domains_event(self, domains: str) -> None:
        """Wait for beta's ``identity.bundle_updated`` event with exactly these trust domains."""
        self.beta.wait_line(rf"identity\.bundle_updated .* bundle\.trust_domains={re.escape(domains)}$")


def _write_config(path: Path, name: str, identity: str, body: str) -> Path:
    path.write_text(f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\n{body}\n[identity]\n{identity}')
    return path


def _in_directory(fed: Path, fmt: str) -> Callable[[dict[str, DevCA]], None]:
    """Bundles as files in beta's federated_bundles_dir: atomic writes, and removals."""
    def federate(bundles: dict[str, DevCA]) -> None:
        for path in fed.iterdir():
            if path.stem not in bundles:
                path.unlink()
        for td, ca in bundles.items():
            atomic_write(fed / f"{td}.{fmt}", bundle_bytes(ca, fmt))
    return federate


def _pushed(api: ScriptedWorkloadApi, example: DevCA, snap: IdentitySnapshot) -> Callable[[dict[str, DevCA]], None]:
    """Bundles as a Workload API's federated bundles: a new push (same SVID) with exactly these."""
    def federate(bundles: dict[str, DevCA]) -> None:
        push = x509_response(BETA, snap.chain, snap.private_key, example.bundle)
        for td, ca in bundles.items():
            push.federated_bundles[td] = b"".join(c.public_bytes(serialization.Encoding.DER) for c in ca.bundle)
        api.push(push)
    return federate


@pytest.fixture
def mesh_factory() -> Iterator[Callable[[str, bool], Mesh]]:
    """``make(source, partner_at_start)``; source: files-json, files-pem, agent-json (the dev agent's
    Workload API plus the directory) or workload-api-push (a Workload API pushing federated bundles)."""
    started: list[Meshnode] = []
    closers: list[Callable[[], object]] = []
    workdir = short_tmpdir("mn-fedlive-")

    def make(source: str, partner_at_start: bool) -> Mesh:
        for name in ("beta", "gamma", "beta-fed", "gamma-fed", "agent"):
            (workdir / name).mkdir()
        example = DevCA("example.org", state_dir=workdir / "agent")  # the dev agent, when used, loads it
        partner, other = DevCA("partner.org"), DevCA("other.org")
        (workdir / "gamma-fed" / "example.org.pem").write_bytes(certs_pem(example.bundle))
        gamma_config = _write_config(
            workdir / "gamma.toml", "gamma",
            svid_files(workdir / "gamma", partner, GAMMA)
            + f'federated_bundles_dir = "{workdir / "gamma-fed"}"\nfederates_with = ["example.org"]\n',
            f'services = ["meshnode.demo:RelayService"]\nmax_connection_age = 1.0\n[authz]\nallow = ["{BETA}"]\n',
        )
        gamma = Meshnode(["run", str(gamma_config)])
        started.append(gamma)
        gamma_port = gamma.ready("gamma")
        fed = workdir / "beta-fed"
        federate = _in_directory(fed, source.rsplit("-", 1)[-1])
        directory = f'federated_bundles_dir = "{fed}"\n'
        if source.startswith("files-"):
            identity = svid_files(workdir / "beta", example, BETA) + directory
        elif source == "agent-json":
            (workdir / "agent.toml").write_text(
                f'trust_domain = "example.org"\nsocket_dir = "{workdir / "agent"}"\nstate_dir = "{workdir / "agent"}"\n'
                f'[[entries]]\nname = "beta"\nspiffe_id = "{BETA}"\nuid = {os.getuid()}\n')
            agent = AgentProcess(workdir / "agent.toml")
            closers.append(agent.stop)
            identity = (f'source = "workload-api"\nsocket = "unix://{workdir / "agent" / "beta.sock"}"\n'
                        f'trust_domain = "example.org"\n{directory}')
        else:
            snap = issue_snapshot(example, BETA)
            api = ScriptedWorkloadApi(workdir / "agent" / "api.sock",
                                      x509_response(BETA, snap.chain, snap.private_key, example.bundle))
            api.__enter__()
            closers.append(lambda: api.__exit__(None, None, None))
            federate = _pushed(api, example, snap)
            identity = f'source = "workload-api"\nsocket = "{api.address}"\ntrust_domain = "example.org"\n'
        if partner_at_start:
            federate({"partner.org": partner})
        beta_config = _write_config(
            workdir / "beta.toml", "beta",
            identity + 'federates_with = ["partner.org"]\n',
            'services = ["meshnode.demo:EchoService", "meshnode.demo:RelayService"]\n'
            f'[authz]\nallow = ["{PARTNER_APP}", "{ALPHA}"]\n'
            f'[peers.gamma]\naddress = "127.0.0.1:{gamma_port}"\nspiffe_id = "{GAMMA}"\nverify = "spiffe-id"\n'
            '[telemetry]\nexporter = "none"\nmetrics_exporter = "console"\n',
        )
        beta = Meshnode(["run", str(beta_config)])
        started.append(beta)
        return Mesh(example, partner, other, fed, beta, gamma, beta.ready("beta"), federate)

    yield make
    for proc in started:
        proc.stop()
    for close in closers:
        close()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["files-json", "files-pem", "agent-json", "workload-api-push"])
def test_a_trust_domain_added_and_removed_while_the_node_runs(
    mesh_factory: Callable[[str, bool], Mesh], source: str
) -> None:
    mesh = mesh_factory(source, False)

    # before: partner.org has no bundle here
    code, _ = mesh.call_echo(mesh.partner, PARTNER_APP)
    assert code == "UNAVAILABLE"  # refused at the handshake: the client sees the connection closed
    code, details = mesh.relay()
    assert code == "UNAVAILABLE" and "this node has no trust bundle for 'partner.org'" in details, details

    # partner.org's bundle arrives (and other.org's, which beta does not federate with)
    mesh.federate({"other.org": mesh.other, "partner.org": mesh.partner})
    mesh.trust_domains_event("example.org,other.org,partner.org")
    assert mesh.call_echo(mesh.partner, PARTNER_APP) == ("OK", PARTNER_APP)  # server side: at once
    assert mesh.call_echo(mesh.other, OTHER_APP)[0] == "UNAVAILABLE"  # a bundle alone accepts nobody
    eventually(lambda: mesh.relay()[0] == "OK", "beta reaching gamma once gRPC read the new bundle map")
    assert mesh.relay() == ("OK", "beta<-alpha gamma<-beta")
    kept = mesh.channel(mesh.partner, PARTNER_APP)
    assert mesh.call_echo(mesh.partner, PARTNER_APP, kept) == ("OK", PARTNER_APP)

    # ... and goes away
    mesh.federate({"other.org": mesh.other})
    mesh.trust_domains_event("example.org,other.org")
    assert mesh.call_echo(mesh.partner, PARTNER_APP)[0] == "UNAVAILABLE"  # new handshakes fail
    code, details = mesh.call_echo(mesh.partner, PARTNER_APP, kept)  # an open connection: every call checked
    assert (code, details) == ("UNAUTHENTICATED", "authz: no usable SPIFFE identity: no trust bundle for the "
                                                  "caller's trust domain 'partner.org'")
    kept.close()
    eventually(lambda: mesh.relay()[0] == "UNAVAILABLE", "beta's new handshakes with gamma failing")
    assert "this node has no trust bundle for 'partner.org'" in mesh.relay()[1]
    assert mesh.beta.terminate() == 0 and mesh.gamma.terminate() == 0
    assert "a87-probe" not in mesh.beta.output()  # the start-up probe leaves no trace in the log


#: bad content -> what the warning says about it
BAD_INPUT = {
    "wrong use": "holds no X.509 CA",
    "no x5c": 'has no "x5c" certificate',
    "another trust domain": "is a CA of trust domain 'other.org'",
    "malformed JSON": "is not JSON: Expecting",
}


@pytest.mark.slow
def test_bad_bundle_files_keep_the_last_good_bundle(mesh_factory: Callable[[str, bool], Mesh]) -> None:
    """Each bad file: one warning naming the file and the reason, one count; callers and peers keep working."""
    mesh = mesh_factory("files-json", True)
    path = mesh.fed / "partner.org.json"
    eventually(lambda: mesh.relay()[0] == "OK", "beta reaching gamma")
    [key] = [x509_key(c) for c in mesh.partner.bundle]
    contents = {
        "wrong use": json.dumps({"keys": [{**key, "use": "jwt-svid"}]}).encode(),
        "no x5c": json.dumps({"keys": [{k: v for k, v in key.items() if k != "x5c"}]}).encode(),
        "another trust domain": spiffe_bundle(mesh.other.bundle, sequence=3),
        "malformed JSON": b'{"keys": [',
    }
    for case, data in contents.items():
        atomic_write(path, data)
        reason = BAD_INPUT[case]
        mesh.beta.wait_line(rf"WARNING .*identity: federated bundle {re.escape(str(path))}: .*{re.escape(reason)}"
                            r".*; keeping the last good bundle of 'partner\.org' \(from partner\.org\.json\)$")
        assert mesh.call_echo(mesh.partner, PARTNER_APP) == ("OK", PARTNER_APP), case
    own = mesh.fed / "example.org.json"
    atomic_write(own, spiffe_bundle(DevCA("example.org").bundle))  # a rogue CA calling itself example.org
    mesh.beta.wait_line(rf"identity: federated bundle {re.escape(str(own))}: is for this node's own trust domain "
                        r"'example\.org'; refused, it would replace the roots")
    assert mesh.call_echo(mesh.example, ALPHA) == ("OK", ALPHA)
    assert mesh.relay() == ("OK", "beta<-alpha gamma<-beta")  # the xDS bundle map kept partner.org's last good bundle
    assert mesh.beta.terminate() == 0 and mesh.gamma.terminate() == 0
    output = mesh.beta.output()
    assert len(re.findall(r"WARNING .*identity: federated bundle ", output)) == 5  # once each
    stdout = "\n".join(line for stream, line in mesh.beta.seen if stream == "stdout").encode()
    assert counter_total(stdout, SOURCE_ERRORS) == 5
