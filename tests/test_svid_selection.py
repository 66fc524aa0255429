"""Several X509-SVIDs for one workload: the dev agent serves them on one socket, a node takes one.

A real `meshnode agent` process serves two [[entries]] named "svc" (each with its own SPIFFE ID
and hint) on svc.sock; nodes select by [identity] spiffe_id, by hint, or take the first (and say
which others exist). A configured ID or hint that is not delivered stops a production
`meshnode run` with exit 3 naming what was delivered. To drop an SVID at runtime, a scripted
Workload API server on a unix socket pushes responses built from a dev CA.
"""

from __future__ import annotations

import datetime as dt
import os
import selectors
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe import X509Source
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc

from meshnode.devagent.ca import DevCA
from meshnode.errors import SvidNotDeliveredError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.testing import short_tmpdir
from tests.support.agent_process import HEADER, AgentProcess, x509_svids
from tests.support.logs import watch_logs
from tests.support.processes import meshnode_command
from tests.support.scripted_workload_api import ScriptedWorkloadApi, x509_svids_response

INTERNAL = "spiffe://example.org/node/svc"
EXTERNAL = "spiffe://example.org/node/svc-external"
OTHER = "spiffe://example.org/node/other"
BOTH = (f"{INTERNAL} (hint 'internal'), {EXTERNAL} (hint 'external')")


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = short_tmpdir("mn-sel-")
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def agent(workdir: Path) -> Iterator[AgentProcess]:
    """`meshnode agent`: svc.sock hands out INTERNAL (hint internal) then EXTERNAL (hint external)."""
    config = workdir / "agent.toml"
    config.write_text(
        f'trust_domain = "example.org"\nsocket_dir = "{workdir}/sockets"\n'
        f'[[entries]]\nname = "svc"\nspiffe_id = "{INTERNAL}"\nhint = "internal"\n'
        f'[[entries]]\nname = "other"\nspiffe_id = "{OTHER}"\n'
        f'[[entries]]\nname = "svc"\nspiffe_id = "{EXTERNAL}"\nhint = "external"\n'
    )
    process = AgentProcess(config)
    yield process
    assert process.stop() == 0, process.stderr()


def svc_address(workdir: Path) -> str:
    return f"unix://{workdir}/sockets/svc.sock"


def stub(channel: grpc.Channel) -> pb_grpc.SpiffeWorkloadAPIStub:
    return pb_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]


def generations(source: IdentitySource) -> tuple[threading.Condition, list[IdentitySnapshot]]:
    """Every snapshot ``source`` publishes from now on, and a condition to wait on."""
    seen: list[IdentitySnapshot] = []
    changed = threading.Condition()

    def on_update(snapshot: IdentitySnapshot) -> None:
        with changed:
            seen.append(snapshot)
            changed.notify_all()

    source.subscribe(on_update)
    return changed, seen


# -- the dev agent: several SVIDs on one socket -------------------------------------------------


def test_the_agent_serves_every_entry_of_a_name_on_its_socket_in_order_with_hints(
    agent: AgentProcess, workdir: Path
) -> None:
    assert "entries=svc,other" in agent.ready_line
    with grpc.insecure_channel(f"unix:{workdir}/sockets/svc.sock") as channel:
        stream = stub(channel).FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=10)
        response = next(stream)
        stream.cancel()
        assert [(spiffe_id, hint) for spiffe_id, hint, _ in x509_svids(response)] == [
            (INTERNAL, "internal"), (EXTERNAL, "external"),
        ]
        # JWT-SVIDs: one per identity when no spiffe_id is asked for, else the one asked for
        jwt = stub(channel).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=10)
        assert [(s.spiffe_id, s.hint) for s in jwt.svids] == [(INTERNAL, "internal"), (EXTERNAL, "external")]
        one = stub(channel).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"], spiffe_id=EXTERNAL),
                                         metadata=HEADER, timeout=10)
        assert [(s.spiffe_id, s.hint) for s in one.svids] == [(EXTERNAL, "external")]
    with grpc.insecure_channel(f"unix:{workdir}/sockets/other.sock") as channel:
        stream = stub(channel).FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=10)
        assert [(i, h) for i, h, _ in x509_svids(next(stream))] == [(OTHER, "")]
        stream.cancel()
    # a client that knows nothing of hints gets the first, the default identity
    with X509Source(socket_path=svc_address(workdir), timeout_in_seconds=10) as source:
        assert str(source.get_x509_context().default_svid.spiffe_id) == INTERNAL


# -- a node selects one ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "taken"),
    [
        ({"spiffe_id": EXTERNAL}, EXTERNAL),
        ({"hint": "external"}, EXTERNAL),
        ({"hint": "internal"}, INTERNAL),
        ({"spiffe_id": INTERNAL, "hint": "internal"}, INTERNAL),
    ],
    ids=["by spiffe_id", "by hint", "by the first one's hint", "by both"],
)
def test_a_node_takes_the_svid_it_is_configured_for(
    agent: AgentProcess, workdir: Path, selection: dict[str, str], taken: str
) -> None:
    with watch_logs("meshnode.identity") as logs, \
            WorkloadApiSource(svc_address(workdir), timeout=10, **selection) as source:  # type: ignore[arg-type]
        assert str(source.current().spiffe_id) == taken
        [note] = logs.messages("delivered 2 SVIDs")
    other = INTERNAL if taken == EXTERNAL else EXTERNAL
    assert f"took {taken} (hint '" in note and f"the others: {other} (hint '" in note


def test_without_a_selection_the_first_is_taken_and_the_others_are_named_once(
    agent: AgentProcess, workdir: Path
) -> None:
    with watch_logs("meshnode.identity") as logs, WorkloadApiSource(svc_address(workdir), timeout=10) as source:
        first = source.current()
        assert str(first.spiffe_id) == INTERNAL
        changed, seen = generations(source)
        agent.proc.send_signal(signal.SIGUSR1)  # every SVID re-issued and pushed: the same two IDs
        with changed:
            assert changed.wait_for(lambda: bool(seen), timeout=30), logs.messages()
        assert str(seen[0].spiffe_id) == INTERNAL and seen[0].serial != first.serial
        notes = logs.messages("delivered 2 SVIDs")
    assert notes == [
        f"identity: the Workload API at {svc_address(workdir)} delivered 2 SVIDs; took the first, {INTERNAL} "
        f"(hint 'internal'); the others: {EXTERNAL} (hint 'external') (set [identity] spiffe_id or hint to "
        "choose one)"
    ]


def test_a_rotation_keeps_both_svids_and_the_selection(agent: AgentProcess, workdir: Path) -> None:
    with grpc.insecure_channel(f"unix:{workdir}/sockets/svc.sock") as channel, \
            WorkloadApiSource(svc_address(workdir), timeout=10, hint="external") as source:
        stream = stub(channel).FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=30)
        before = x509_svids(next(stream))
        selected = source.current()
        assert str(selected.spiffe_id) == EXTERNAL and int(selected.serial, 16) == before[1][2]
        changed, seen = generations(source)
        agent.proc.send_signal(signal.SIGUSR1)
        after = x509_svids(next(stream))  # the same open stream: both SVIDs, re-issued, hints kept
        stream.cancel()
        with changed:
            assert changed.wait_for(lambda: bool(seen), timeout=30)
    assert [(i, h) for i, h, _ in after] == [(INTERNAL, "internal"), (EXTERNAL, "external")]
    assert all(new != old for (_, _, new), (_, _, old) in zip(after, before, strict=True))
    assert str(seen[0].spiffe_id) == EXTERNAL and int(seen[0].serial, 16) == after[1][2]


@pytest.mark.parametrize(
    ("selection", "wanted"),
    [({"hint": "nope"}, "[identity] hint = 'nope'"), ({"spiffe_id": OTHER}, f'[identity] spiffe_id = "{OTHER}"')],
    ids=["hint", "spiffe_id"],
)
def test_a_selection_that_is_not_delivered_refuses_to_open(
    agent: AgentProcess, workdir: Path, selection: dict[str, str], wanted: str
) -> None:
    with pytest.raises(SvidNotDeliveredError) as info:
        WorkloadApiSource(svc_address(workdir), timeout=10, **selection)  # type: ignore[arg-type]
    assert info.value.exit_code == 3
    assert info.value.wanted == wanted
    assert info.value.delivered == (f"{INTERNAL} (hint 'internal')", f"{EXTERNAL} (hint 'external')")


# -- meshnode run -------------------------------------------------------------------------------


def node_toml(workdir: Path, selection: str) -> Path:
    path = workdir / "node.toml"
    path.write_text(
        '[node]\nname = "svc"\nlisten = "127.0.0.1:0"\nmode = "production"\n'
        f'[identity]\nsource = "workload-api"\nsocket = "{svc_address(workdir)}"\ntrust_domain = "example.org"\n'
        f'timeout = 10\n{selection}\n'
        '[authz]\nallow = ["spiffe://example.org/node/caller"]\n'
    )
    return path


def run_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SPIFFE_ENDPOINT_SOCKET", "MESHNODE_MODE")}


@pytest.mark.parametrize(
    ("selection", "wanted"),
    [('hint = "nope"', "[identity] hint = 'nope'"), (f'spiffe_id = "{OTHER}"', f'[identity] spiffe_id = "{OTHER}"')],
    ids=["hint", "spiffe_id"],
)
def test_production_run_exits_3_naming_what_was_delivered(
    agent: AgentProcess, workdir: Path, selection: str, wanted: str
) -> None:
    done = subprocess.run(meshnode_command("run", str(node_toml(workdir, selection))), capture_output=True,
                          text=True, env=run_env(), timeout=120)
    out = done.stderr + done.stdout
    assert done.returncode == 3, out
    assert (f"identity: the Workload API at {svc_address(workdir)} delivered no SVID for {wanted}; it "
            f"delivered 2 SVIDs: {BOTH}. To fix:") in out
    assert "ready on" not in out and "Traceback" not in out


def test_production_run_serves_as_the_selected_svid(agent: AgentProcess, workdir: Path) -> None:
    proc = subprocess.Popen(meshnode_command("run", str(node_toml(workdir, 'hint = "external"'))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env())
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=60)
        line = proc.stdout.readline() if ready else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert f"as {EXTERNAL} " in line, line + err
    assert proc.returncode == 0, err
    assert f"took {EXTERNAL} (hint 'external') for [identity] hint = 'external'; the others: {INTERNAL}" in err


# -- an update that drops the selected SVID -------------------------------------------------------


def test_an_update_without_the_selected_svid_is_rejected_once_and_the_last_good_is_kept(workdir: Path) -> None:
    ca = DevCA("example.org")

    def issue(spiffe_id: str, hint: str) -> tuple[tuple[x509.Certificate, ...], CertificateIssuerPrivateKeyTypes, str]:
        svid = ca.issue(spiffe_id, dt.timedelta(hours=1))
        return svid.chain, svid.private_key, hint

    both = x509_svids_response([issue(INTERNAL, "internal"), issue(EXTERNAL, "external")], ca.bundle)
    internal_only = x509_svids_response([issue(INTERNAL, "internal")], ca.bundle)
    renewed = x509_svids_response([issue(INTERNAL, "internal"), issue(EXTERNAL, "external")], ca.bundle)
    errors: list[str] = []
    with ScriptedWorkloadApi(workdir / "api.sock", both) as api, watch_logs("meshnode.identity") as logs, \
            WorkloadApiSource(api.address, timeout=10, hint="external", on_error=errors.append) as source:
        good = source.current()
        assert str(good.spiffe_id) == EXTERNAL
        changed, seen = generations(source)
        for _ in range(3):  # the same set of SVIDs again and again: reported once
            api.push(internal_only)
        api.push(renewed)  # a stream keeps its order: once this is taken, every push before it was seen
        with changed:
            assert changed.wait_for(lambda: bool(seen), timeout=30), logs.messages()
        assert str(seen[0].spiffe_id) == EXTERNAL and seen[0].serial != good.serial
        assert seen[0].generation == good.generation + 1  # nothing was published in between
    expected = (
        f"identity: ignoring an update from {api.address}, keeping the current SVID: no SVID for "
        f"[identity] hint = 'external'; it delivered 1 SVID: {INTERNAL} (hint 'internal')"
    )
    assert errors == [expected]  # what the node counts in meshnode.identity.source_errors
    assert logs.messages("ignoring an update") == [expected]


def test_the_id_matched_is_the_certificates_not_the_responses_field(workdir: Path) -> None:
    """A Workload API that labels an SVID with another ID in the response field does not get it selected."""
    ca = DevCA("example.org")
    svid = ca.issue(INTERNAL, dt.timedelta(hours=1))
    response = x509_svids_response([(svid.chain, svid.private_key, "")], ca.bundle)
    response.svids[0].spiffe_id = EXTERNAL
    with ScriptedWorkloadApi(workdir / "api.sock", response) as api, pytest.raises(SvidNotDeliveredError) as info:
        WorkloadApiSource(api.address, timeout=10, spiffe_id=EXTERNAL)
    assert info.value.delivered == (f"{INTERNAL} (no hint)",)


def test_with_the_same_hint_twice_the_first_is_taken(workdir: Path) -> None:
    ca = DevCA("example.org")
    first, second = ca.issue(INTERNAL, dt.timedelta(hours=1)), ca.issue(EXTERNAL, dt.timedelta(hours=1))
    response = x509_svids_response(
        [(first.chain, first.private_key, "shared"), (second.chain, second.private_key, "shared")], ca.bundle
    )
    with ScriptedWorkloadApi(workdir / "api.sock", response) as api, \
            WorkloadApiSource(api.address, timeout=10, hint="shared") as source:
        assert str(source.current().spiffe_id) == INTERNAL


def test_a_flood_of_svids_gives_a_bounded_message(workdir: Path) -> None:
    """A hostile agent may send many SVIDs with long hints: the error lists a few, in one line."""
    ca = DevCA("example.org")
    issued = [ca.issue(f"spiffe://example.org/w/{i}", dt.timedelta(hours=1)) for i in range(30)]
    response = x509_svids_response([(s.chain, s.private_key, "h\n" * 500) for s in issued], ca.bundle)
    with ScriptedWorkloadApi(workdir / "api.sock", response) as api, pytest.raises(SvidNotDeliveredError) as info:
        WorkloadApiSource(api.address, timeout=10, hint="mine")
    message = str(info.value)
    assert len(info.value.delivered) == 30 and " and 22 more. To fix:" in message
    assert "\n" not in message and len(message) < 2000
