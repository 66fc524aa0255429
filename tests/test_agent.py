"""The dev Workload API agent, used through py-spiffe and raw grpc over real unix sockets.

Most tests run the agent in-process (DevAgentThread); the CLI tests run
``meshnode agent`` and ``meshnode svid`` as real processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc
from spiffe.workloadapi.errors import FetchX509SvidError, ValidateJwtSvidError

from meshnode.cli import main as cli_main
from meshnode.devagent.agent import DevAgent, DevAgentThread
from meshnode.devagent.ca import DevCA
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.errors import ClosedError, ConfigError, ServeError
from meshnode.identity.x509chain import verify_chain
from meshnode.spiffeid import dns_name_for, parse_spiffe_id

TD = TrustDomain("example.org")
HEADER = (("workload.spiffe.io", "true"),)
ME = os.getuid()


def entry(name: str, **options: Any) -> EntryConfig:
    return EntryConfig(name, parse_spiffe_id(f"spiffe://example.org/node/{name}"), **options)


def agent_config(socket_dir: Path, *entries: EntryConfig, **options: Any) -> AgentConfig:
    return AgentConfig("example.org", socket_dir, entries or (entry("alpha"),), **options)


def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def serial(source: X509Source) -> int:
    return int(source.get_x509_context().default_svid.leaf.serial_number)


@contextlib.contextmanager
def workload_api(path: Path) -> Iterator[Any]:
    """A raw Workload API stub: it sends the security header only when a call passes it."""
    with grpc.insecure_channel(f"unix:{path}") as channel:
        yield pb_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="mn-agent-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(socket_dir: Path) -> Iterator[DevAgentThread]:
    config = agent_config(socket_dir, entry("alpha", dns_names=("alpha.local",)), entry("plain", map_dns=False))
    with DevAgentThread(config) as running:
        yield running


# -- the Workload API through py-spiffe ----------------------------------------------------


def test_x509_source_gets_an_svid_that_follows_the_x509_svid_spec(agent: DevAgentThread) -> None:
    with X509Source(socket_path=agent.socket_address("alpha"), timeout_in_seconds=5) as source:
        context = source.get_x509_context()
    svid = context.default_svid
    assert str(svid.spiffe_id) == "spiffe://example.org/node/alpha"
    leaf = svid.leaf
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/node/alpha"]
    assert sans.get_values_for_type(x509.DNSName) == [dns_name_for("spiffe://example.org/node/alpha"), "alpha.local"]
    assert leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca is False  # type: ignore[attr-defined]
    usage: Any = leaf.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign

    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(TD)
    assert bundle is not None
    (ca,) = bundle.x509_authorities
    assert ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca is True  # type: ignore[attr-defined]
    assert ca.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value.key_cert_sign  # type: ignore[attr-defined]
    ca_sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ca_sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    verify_chain(svid.cert_chain, [ca])
    assert leaf.serial_number == agent.svid("alpha").chain[0].serial_number


def test_map_dns_false_gives_an_svid_without_dns_san(agent: DevAgentThread) -> None:
    with WorkloadApiClient(agent.socket_address("plain"), default_timeout=5) as client:
        leaf = client.fetch_x509_svid().leaf
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == []
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/node/plain"]


def test_bundles_and_jwt_svids(agent: DevAgentThread) -> None:
    with WorkloadApiClient(agent.socket_address("alpha"), default_timeout=5) as client:
        x509_bundles = client.fetch_x509_bundles()
        bundle = x509_bundles.get_bundle_for_trust_domain(TD)
        assert bundle is not None and bundle.x509_authorities == {agent.agent.ca.ca_certificate}

        jwt_bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TD)
        assert jwt_bundle is not None and jwt_bundle.get_jwt_authority(agent.agent.ca.jwt_key_id) is not None

        token = client.fetch_jwt_svid({"svc-b"})
        assert str(token.spiffe_id) == "spiffe://example.org/node/alpha" and token.audience == {"svc-b"}
        assert str(client.validate_jwt_svid(token.token, "svc-b").spiffe_id) == "spiffe://example.org/node/alpha"
        checked = JwtSvid.parse_and_validate(token.token, jwt_bundle, {"svc-b"})
        assert str(checked.spiffe_id) == "spiffe://example.org/node/alpha"

        with pytest.raises(ValidateJwtSvidError, match=r"agent: the JWT-SVID is not valid: .*INVALID_ARGUMENT"):
            client.validate_jwt_svid(token.token, "svc-other")
        foreign = DevCA("example.org").sign_jwt("spiffe://example.org/node/alpha", ["svc-b"], dt.timedelta(minutes=1))
        with pytest.raises(ValidateJwtSvidError, match="signed by unknown key id"):
            client.validate_jwt_svid(foreign, "svc-b")


def test_jwt_rpcs_check_their_arguments(agent: DevAgentThread) -> None:
    with workload_api(agent.socket_path("alpha")) as api:
        with pytest.raises(grpc.RpcError) as info:
            api.FetchJWTSVID(pb.JWTSVIDRequest(), metadata=HEADER, timeout=5)
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        with pytest.raises(grpc.RpcError) as info:
            api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"], spiffe_id="spiffe://example.org/node/plain"),
                             metadata=HEADER, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "no identity issued for spiffe://example.org/node/plain" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"], spiffe_id="spiffe://example.org/x/../y"),
                             metadata=HEADER, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        token = api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a", "b"], spiffe_id="spiffe://example.org/node/alpha"),
                                 metadata=HEADER, timeout=5).svids[0].svid
        checked = api.ValidateJWTSVID(pb.ValidateJWTSVIDRequest(audience="b", svid=token), metadata=HEADER, timeout=5)
        assert checked.spiffe_id == "spiffe://example.org/node/alpha"
        assert checked.claims["sub"] == "spiffe://example.org/node/alpha" and list(checked.claims["aud"]) == ["a", "b"]
        with pytest.raises(grpc.RpcError) as info:
            api.ValidateJWTSVID(pb.ValidateJWTSVIDRequest(audience="b", svid="not.a.jwt"), metadata=HEADER, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("agent: the JWT-SVID is not valid:")


def test_calls_without_the_security_header_are_invalid_argument(agent: DevAgentThread) -> None:
    with workload_api(agent.socket_path("alpha")) as api:
        calls: list[Callable[[], object]] = [
            lambda: next(api.FetchX509SVID(pb.X509SVIDRequest(), timeout=5)),
            lambda: next(api.FetchX509Bundles(pb.X509BundlesRequest(), timeout=5)),
            lambda: next(api.FetchJWTBundles(pb.JWTBundlesRequest(), timeout=5)),
            lambda: api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), timeout=5),
            lambda: api.ValidateJWTSVID(pb.ValidateJWTSVIDRequest(audience="a", svid="x"), timeout=5),
            lambda: api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=(("workload.spiffe.io", "yes"),)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "security header missing from request"


def test_federated_bundles_reach_clients(socket_dir: Path) -> None:
    partner = DevCA("partner.org").ca_certificate
    config = agent_config(socket_dir, federation={"partner.org": (partner,)})
    with DevAgentThread(config) as agent, X509Source(socket_path=agent.socket_address("alpha"),
                                                     timeout_in_seconds=5) as source:
        federated = source.get_x509_context().x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("partner.org"))
        assert federated is not None and federated.x509_authorities == {partner}
        with WorkloadApiClient(agent.socket_address("alpha"), default_timeout=5) as client:
            names = {str(b.trust_domain) for b in client.fetch_x509_bundles().bundles}
        assert names == {"example.org", "partner.org"}


# -- rotation -------------------------------------------------------------------------------


def test_svid_rotation_is_pushed_on_the_open_stream(agent: DevAgentThread) -> None:
    with X509Source(socket_path=agent.socket_address("alpha"), timeout_in_seconds=5) as source:
        first = serial(source)
        agent.rotate_svids()
        rotated = agent.svid("alpha").chain[0].serial_number
        assert rotated != first
        eventually(lambda: serial(source) == rotated, "the rotated SVID on the stream")


def test_svids_are_reissued_at_half_their_lifetime(socket_dir: Path) -> None:
    with DevAgentThread(agent_config(socket_dir, svid_ttl=2)) as agent, \
            X509Source(socket_path=agent.socket_address("alpha"), timeout_in_seconds=5) as source:
        first = source.get_x509_context().default_svid.leaf
        eventually(lambda: serial(source) != first.serial_number, "a renewed SVID", timeout=4)
        renewed = source.get_x509_context().default_svid.leaf
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert renewed.not_valid_after_utc - first.not_valid_after_utc <= lifetime


def test_ca_rotation_puts_the_next_ca_in_the_bundle_before_it_signs(agent: DevAgentThread) -> None:
    seen: list[tuple[x509.Name, frozenset[x509.Name]]] = []
    old_ca = agent.agent.ca.ca_certificate
    with X509Source(socket_path=agent.socket_address("alpha"), timeout_in_seconds=5) as source:
        def record() -> None:
            context = source.get_x509_context()
            bundle = context.x509_bundle_set.get_bundle_for_trust_domain(TD)
            assert bundle is not None
            seen.append((context.default_svid.leaf.issuer, frozenset(c.subject for c in bundle.x509_authorities)))

        record()
        source.subscribe_for_updates(record)
        agent.rotate_ca(retire_after=0)
        new_ca = agent.agent.ca.ca_certificate
        assert new_ca != old_ca
        eventually(lambda: seen[-1] == (new_ca.subject, frozenset({new_ca.subject})), "the old CA retired")

    both = frozenset({old_ca.subject, new_ca.subject})
    assert seen[0] == (old_ca.subject, frozenset({old_ca.subject}))
    first_new_signed = next(i for i, (issuer, _) in enumerate(seen) if issuer == new_ca.subject)
    assert (old_ca.subject, both) in seen[:first_new_signed], "the next CA was not in the bundle before it signed"
    assert seen[first_new_signed] == (new_ca.subject, both), "the old CA left the bundle with the new SVID"
    assert all(issuer in bundle for issuer, bundle in seen)


def test_by_default_the_old_ca_stays_until_its_svids_expire(agent: DevAgentThread) -> None:
    old_ca = agent.agent.ca.ca_certificate
    agent.rotate_ca()
    assert set(agent.agent.ca.bundle) == {old_ca, agent.agent.ca.ca_certificate}


# -- who may call -----------------------------------------------------------------------


def test_uid_gated_entries_admit_only_their_uid(socket_dir: Path) -> None:
    config = agent_config(socket_dir, entry("mine", uid=ME), entry("theirs", uid=ME + 1))
    with DevAgentThread(config) as agent:
        assert stat.S_IMODE(agent.socket_path("theirs").stat().st_mode) == 0o777
        with X509Source(socket_path=agent.socket_address("mine"), timeout_in_seconds=5) as source:
            assert str(source.get_x509_context().default_svid.spiffe_id) == "spiffe://example.org/node/mine"
            agent.rotate_svids()
            rotated = agent.svid("mine").chain[0].serial_number
            eventually(lambda: serial(source) == rotated, "the rotation pushed through the uid gate")

        with WorkloadApiClient(agent.socket_address("theirs"), default_timeout=5) as client:
            with pytest.raises(FetchX509SvidError) as info:
                client.fetch_x509_svid()
        cause: Any = info.value.__cause__
        assert cause.code() == grpc.StatusCode.PERMISSION_DENIED
        assert cause.details() == f"agent: no registration entry for caller uid {ME}"
        with workload_api(agent.socket_path("theirs")) as api:
            with pytest.raises(grpc.RpcError) as raw:
                api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), timeout=5)
            assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- sockets: stale, live, in the way, unwritable, cleaned up --------------------------------


def test_a_stale_socket_file_is_removed_and_rebound(socket_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_dir / "alpha.sock"))
    stale.close()  # the file stays, nobody listens: what a killed agent leaves
    with DevAgentThread(agent_config(socket_dir)) as agent, \
            WorkloadApiClient(agent.socket_address("alpha"), default_timeout=5) as client:
        assert str(client.fetch_x509_svid().spiffe_id) == "spiffe://example.org/node/alpha"


def test_a_second_agent_on_live_sockets_is_refused_and_the_first_keeps_serving(socket_dir: Path) -> None:
    config = agent_config(socket_dir, entry("zeta"), entry("alpha"))
    with DevAgentThread(config) as first:
        inode = first.socket_path("alpha").stat().st_ino
        with pytest.raises(ServeError, match=f"another agent is already serving {socket_dir}/zeta.sock"):
            DevAgentThread(config).start()
        assert first.socket_path("alpha").stat().st_ino == inode
        with WorkloadApiClient(first.socket_address("alpha"), default_timeout=5) as client:
            assert str(client.fetch_x509_svid().spiffe_id) == "spiffe://example.org/node/alpha"


def test_a_file_in_the_way_is_refused(socket_dir: Path) -> None:
    (socket_dir / "alpha.sock").write_text("keep me")
    with pytest.raises(ConfigError, match=r"alpha\.sock exists and is not a socket"):
        DevAgentThread(agent_config(socket_dir)).start()
    assert (socket_dir / "alpha.sock").read_text() == "keep me"


def test_a_socket_dir_that_cannot_be_created(socket_dir: Path) -> None:
    (socket_dir / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create socket_dir .*/file/sub: Not a directory"):
        DevAgentThread(agent_config(socket_dir / "file" / "sub")).start()


async def test_close_removes_the_sockets_and_refuses_reuse(socket_dir: Path) -> None:
    agent = DevAgent(agent_config(socket_dir, entry("alpha"), entry("gated", uid=ME)))
    async with agent:
        assert sorted(os.listdir(socket_dir)) == ["alpha.sock", "gated.sock"]
    assert os.listdir(socket_dir) == []
    await agent.close()
    with pytest.raises(ClosedError, match="make a new DevAgent"):
        await agent.start()
    with pytest.raises(ClosedError, match="not serving"):
        await agent.rotate_svids()


def test_open_streams_end_unavailable_on_close_so_clients_retry(socket_dir: Path) -> None:
    agent = DevAgentThread(agent_config(socket_dir)).start()
    with workload_api(agent.socket_path("alpha")) as api:
        stream = api.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=10)
        assert next(stream).svids[0].spiffe_id == "spiffe://example.org/node/alpha"
        agent.close()
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # retried by py-spiffe, unlike CANCELLED
    assert os.listdir(socket_dir) == []


def test_state_dir_keeps_the_ca_across_restarts(socket_dir: Path, tmp_path: Path) -> None:
    config = agent_config(socket_dir, state_dir=tmp_path / "state")
    with DevAgentThread(config) as agent:
        ca = agent.agent.ca.ca_certificate
    assert stat.S_IMODE((tmp_path / "state" / "ca.key.pem").stat().st_mode) == 0o600
    with DevAgentThread(config) as agent:
        assert agent.agent.ca.ca_certificate == ca
        assert agent.svid("alpha").chain[0].issuer == ca.subject


# -- the commands, as processes ------------------------------------------------------------


def write_config(tmp_path: Path, socket_dir: Path, extra: str = "", entries: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'trust_domain = "example.org"\nsocket_dir = "{socket_dir}"\n{extra}\n'
        '[[entries]]\nname = "alpha"\nspiffe_id = "spiffe://example.org/node/alpha"\n'
        'dns_names = ["alpha.local"]\n' + entries
    )
    return path


class AgentProcess:
    """``meshnode agent --config`` as a child process, ready once it printed its ready line."""

    def __init__(self, config: Path, log: Path, wrapper: tuple[str, ...] = ()) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "meshnode.cli", "agent", "--config", str(config)],
                stdout=subprocess.PIPE, stderr=err, text=True,
            )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=20)
        self.ready_line = self.proc.stdout.readline() if ready else ""

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for process in started:
        process.stop()


def svid_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", "svid", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_agent_and_svid_commands(tmp_path: Path, socket_dir: Path, processes: list[AgentProcess]) -> None:
    agent = AgentProcess(write_config(tmp_path, socket_dir), tmp_path / "agent.log")
    processes.append(agent)
    assert agent.ready_line == f"meshnode agent: ready trust_domain=example.org sockets={socket_dir} entries=alpha\n", \
        agent.stderr()

    done = svid_command(env={"SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_dir}/alpha.sock"})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["spiffe_id"] == "spiffe://example.org/node/alpha"
    assert shown["dns_names"] == [dns_name_for("spiffe://example.org/node/alpha"), "alpha.local"]
    assert (shown["chain_length"], shown["trust_domains"]) == (1, ["example.org"])
    assert shown["not_after"].endswith("+00:00")

    with WorkloadApiClient(f"unix://{socket_dir}/alpha.sock", default_timeout=5) as client:
        agent.proc.send_signal(signal.SIGUSR1)
        eventually(lambda: format(client.fetch_x509_svid().leaf.serial_number, "x") != shown["serial"],
                   "a new SVID after SIGUSR1")
        agent.proc.send_signal(signal.SIGUSR2)

        def two_cas() -> bool:
            bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(TD)
            return bundle is not None and len(bundle.x509_authorities) == 2

        eventually(two_cas, "the next CA in the bundle after SIGUSR2")

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(10) == 0
    assert os.listdir(socket_dir) == []
    assert "issued X509-SVID spiffe://example.org/node/alpha for entry alpha: serial" in agent.stderr()
    assert "PRIVATE KEY" not in agent.stderr()


def test_svid_command_errors_name_the_socket(socket_dir: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    assert cli_main(["svid"]) == 2
    assert "no Workload API socket: pass --socket" in capsys.readouterr().err

    missing = socket_dir / "missing.sock"
    assert cli_main(["svid", "--socket", f"unix://{missing}"]) == 3
    assert f"the Workload API socket {missing} does not exist" in capsys.readouterr().err

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_dir / "dead.sock"))
    dead.close()
    assert cli_main(["svid", "--socket", str(socket_dir / "dead.sock")]) == 3
    assert f"nobody is listening on {socket_dir}/dead.sock" in capsys.readouterr().err

    with DevAgentThread(agent_config(socket_dir, entry("theirs", uid=ME + 1))) as agent:
        assert cli_main(["svid", "--socket", agent.socket_address("theirs")]) == 3
    err = capsys.readouterr().err
    assert f"the agent on {socket_dir}/theirs.sock has no registration entry for this process" in err
    assert f"no registration entry for caller uid {ME}" in err


def test_agent_command_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["agent", "--config", str(tmp_path / "nope.toml")]) == 2
    assert f"agent: config file {tmp_path}/nope.toml does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_socket_dir_not_writable(tmp_path: Path, processes: list[AgentProcess]) -> None:
    locked = Path(tempfile.mkdtemp(dir="/tmp", prefix="mn-locked-"))
    try:
        wrapper: tuple[str, ...] = ()
        if os.geteuid() == 0:  # root writes anywhere unless it drops the capabilities that allow it
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
            wrapper = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")
        locked.chmod(0o555)
        agent = AgentProcess(write_config(tmp_path, locked), tmp_path / "agent.log", wrapper)
        processes.append(agent)
        assert agent.proc.wait(20) == 2
        assert f"agent: socket_dir {locked} is not writable by uid {os.geteuid()}" in agent.stderr()
    finally:
        locked.chmod(0o755)
        shutil.rmtree(locked, ignore_errors=True)


@pytest.mark.slow
def test_clients_keep_their_svid_when_the_agent_dies_and_resume_after_restart(
    tmp_path: Path, socket_dir: Path, processes: list[AgentProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, socket_dir, extra=f'state_dir = "{tmp_path / "state"}"')
    first = AgentProcess(config, tmp_path / "agent.log")
    processes.append(first)
    assert first.ready_line.startswith("meshnode agent: ready"), first.stderr()
    address = f"unix://{socket_dir}/alpha.sock"
    with X509Source(socket_path=address, timeout_in_seconds=5) as source:
        before = source.get_x509_context().default_svid.leaf
        first.proc.kill()
        first.proc.wait(10)
        assert cli_main(["svid", "--socket", address]) == 3  # the socket file is left behind, nobody listens
        assert "nobody is listening" in capsys.readouterr().err
        assert serial(source) == before.serial_number and not source.is_closed()

        second = AgentProcess(config, tmp_path / "agent.log")
        processes.append(second)
        assert second.ready_line.startswith("meshnode agent: ready"), second.stderr()
        # py-spiffe retries with a backoff capped at 5 s
        eventually(lambda: serial(source) != before.serial_number, "the restarted agent's SVID", timeout=10)
        after = source.get_x509_context().default_svid.leaf
        assert after.issuer == before.issuer  # same CA: state_dir kept it
        assert "removing stale socket" in second.stderr()


def test_public_sockets_are_world_connectable(agent: DevAgentThread) -> None:
    mode = agent.socket_path("alpha").stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o777


def test_thread_runs_concurrent_clients(agent: DevAgentThread) -> None:
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            with WorkloadApiClient(agent.socket_address("alpha"), default_timeout=5) as client:
                for _ in range(5):
                    client.fetch_x509_context()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []


def test_keys_are_pkcs8_der_and_match_the_leaf(agent: DevAgentThread) -> None:
    with workload_api(agent.socket_path("alpha")) as api:
        response = next(api.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=5))
    (svid,) = response.svids
    key = serialization.load_der_private_key(svid.x509_svid_key, None)
    leaf = x509.load_der_x509_certificate(svid.x509_svid)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert svid.spiffe_id == "spiffe://example.org/node/alpha"
    assert dict(response.federated_bundles) == {}
