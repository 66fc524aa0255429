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
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.identity.devca import DevCA
from meshnode.identity.snapshot import certs_pem
from meshnode.spiffeid import dns_name_for
from meshnode.testing import issue_snapshot, short_tmpdir
from tests.support.federation import atomic_write, bundle_bytes, spiffe_bundle, svid_files, x509_key
from tests.support.meshnode_run import counter_total
from tests.support.procs import Meshnode
from tests.support.wait import eventually

BETA, GAMMA = "spiffe://example.org/node/beta", "spiffe://partner.org/node/gamma"
ALPHA = "spiffe://example.org/node/alpha"
PARTNER_APP, OTHER_APP = "spiffe://partner.org/app", "spiffe://other.org/app"
SOURCE_ERRORS = "meshnode.identity.source_errors"


@dataclass
class Mesh:
    """The two nodes, their CAs and beta's federated_bundles_dir."""

    example: DevCA
    partner: DevCA
    other: DevCA
    fed: Path
    beta: Meshnode
    gamma: Meshnode
    port: int

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


@pytest.fixture
def mesh_factory() -> Iterator[Callable[[bool], Mesh]]:
    started: list[Meshnode] = []
    workdir = short_tmpdir("mn-fedlive-")

    def make(partner_at_start: bool) -> Mesh:
        """Start gamma, then beta (with partner.org's bundle in its directory from the start, or not)."""
        example, partner, other = DevCA("example.org"), DevCA("partner.org"), DevCA("other.org")
        for name in ("beta", "gamma", "beta-fed", "gamma-fed"):
            (workdir / name).mkdir()
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
        if partner_at_start:
            atomic_write(workdir / "beta-fed" / "partner.org.json", spiffe_bundle(partner.bundle))
        beta_config = _write_config(
            workdir / "beta.toml", "beta",
            svid_files(workdir / "beta", example, BETA)
            + f'federated_bundles_dir = "{workdir / "beta-fed"}"\nfederates_with = ["partner.org"]\n',
            'services = ["meshnode.demo:EchoService", "meshnode.demo:RelayService"]\n'
            f'[authz]\nallow = ["{PARTNER_APP}", "{ALPHA}"]\n'
            f'[peers.gamma]\naddress = "127.0.0.1:{gamma_port}"\nspiffe_id = "{GAMMA}"\nverify = "spiffe-id"\n'
            '[telemetry]\nexporter = "none"\nmetrics_exporter = "console"\n',
        )
        beta = Meshnode(["run", str(beta_config)])
        started.append(beta)
        return Mesh(example, partner, other, workdir / "beta-fed", beta, gamma, beta.ready("beta"))

    yield make
    for proc in started:
        proc.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "pem"])
def test_a_trust_domain_added_and_removed_while_the_node_runs(mesh_factory: Callable[[bool], Mesh], fmt: str) -> None:
    mesh = mesh_factory(False)
    partner_file = mesh.fed / f"partner.org.{fmt}"

    # before: partner.org has no bundle here
    code, _ = mesh.call_echo(mesh.partner, PARTNER_APP)
    assert code == "UNAVAILABLE"  # refused at the handshake: the client sees the connection closed
    code, details = mesh.relay()
    assert code == "UNAVAILABLE" and "this node has no trust bundle for 'partner.org'" in details, details

    # partner.org's bundle arrives (and other.org's, which beta does not federate with)
    atomic_write(mesh.fed / f"other.org.{fmt}", bundle_bytes(mesh.other, fmt))
    atomic_write(partner_file, bundle_bytes(mesh.partner, fmt))
    mesh.trust_domains_event("example.org,other.org,partner.org")
    assert mesh.call_echo(mesh.partner, PARTNER_APP) == ("OK", PARTNER_APP)  # server side: at once
    assert mesh.call_echo(mesh.other, OTHER_APP)[0] == "UNAVAILABLE"  # a bundle alone accepts nobody
    eventually(lambda: mesh.relay()[0] == "OK", "beta reaching gamma once gRPC read the new bundle map")
    assert mesh.relay() == ("OK", "beta<-alpha gamma<-beta")
    kept = mesh.channel(mesh.partner, PARTNER_APP)
    assert mesh.call_echo(mesh.partner, PARTNER_APP, kept) == ("OK", PARTNER_APP)

    # ... and goes away
    partner_file.unlink()
    mesh.trust_domains_event("example.org,other.org")
    assert mesh.call_echo(mesh.partner, PARTNER_APP)[0] == "UNAVAILABLE"  # new handshakes fail
    code, details = mesh.call_echo(mesh.partner, PARTNER_APP, kept)  # an open connection: every call checked
    assert (code, details) == ("UNAUTHENTICATED", "authz: no usable SPIFFE identity: no trust bundle for the "
                                                  "caller's trust domain 'partner.org'")
    kept.close()
    eventually(lambda: mesh.relay()[0] == "UNAVAILABLE", "beta's new handshakes with gamma failing")
    assert "this node has no trust bundle for 'partner.org'" in mesh.relay()[1]
    assert mesh.beta.terminate() == 0 and mesh.gamma.terminate() == 0


#: bad content -> what the warning says about it
BAD_INPUT = {
    "wrong use": "holds no X.509 CA",
    "no x5c": 'has no "x5c" certificate',
    "another trust domain": "is a CA of trust domain 'other.org'",
    "malformed JSON": "is not JSON: Expecting",
}


@pytest.mark.slow
def test_bad_bundle_files_keep_the_last_good_bundle(mesh_factory: Callable[[bool], Mesh]) -> None:
    """Each bad file: one warning naming the file and the reason, one count; callers and peers keep working."""
    mesh = mesh_factory(True)
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
