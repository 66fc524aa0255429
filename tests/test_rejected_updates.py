"""Any exception from parsing an identity or a policy is a rejected update: reported once per
distinct content (not once per poll or push), counted, the last good one kept; never a traceback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshnode.authz.source import PolicyFile
from meshnode.errors import InvalidIdentityError, PolicyError
from meshnode.identity.federation import FederatedSource
from meshnode.identity.files import FileSource, SvidFiles
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.identity.x509svid import build_snapshot
from meshnode.testing import short_tmpdir
from tests.support.badcerts import RawCA
from tests.support.scripted_workload_api import ScriptedWorkloadApi, x509_response

ALPHA = "spiffe://example.org/node/alpha"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


class Captured(logging.Handler):
    """Every record of the loggers it is attached to; ``wait_for`` blocks until a message appears."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def matching(self, text: str) -> list[str]:
        return [r.getMessage() for r in list(self.records) if text in r.getMessage()]

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.matching(text)) >= count, timeout), self.summary()

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in list(self.records) if r.exc_info]

    def summary(self) -> str:
        return "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in list(self.records))


@pytest.fixture
def logs() -> Iterator[Captured]:
    handler = Captured()
    # spiffe.workloadapi.x509_source too: `meshnode run` mutes it, and tests that call the CLI in
    # this process leave it muted
    loggers = [logging.getLogger(name) for name in ("meshnode", "spiffe", "grpc", "spiffe.workloadapi.x509_source")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_files(files: SvidFiles, ca: RawCA, leaf: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(pem_key(key))
    files.bundle.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))


def response(ca: RawCA, *, malformed_san: bool = False) -> object:
    """A Workload API push: a new leaf of ``ca`` and ``ca`` as the bundle."""
    leaf, key = ca.leaf(ALPHA, malformed_san=malformed_san)
    return x509_response(ALPHA, [leaf], key, [ca.certificate])


def svid_files(d: Path) -> SvidFiles:
    return SvidFiles(d / "svid.pem", d / "svid_key.pem", d / "bundle.pem")


# -- the X509-SVID rules -----------------------------------------------------------------------


def test_a_malformed_san_is_an_invalid_identity_not_a_value_error() -> None:
    ca = RawCA("example.org")
    leaf, key = ca.leaf(ALPHA, malformed_san=True)
    with pytest.raises(InvalidIdentityError, match="certificate 0 has malformed extensions: ValueError: error parsing"):
        build_snapshot([leaf], key, {"example.org": (ca.certificate,)})
    broken_ca = RawCA("example.org", malformed_san=True)
    good, good_key = broken_ca.leaf(ALPHA)
    with pytest.raises(InvalidIdentityError, match=r"bundle of 'example\.org', certificate 0 has malformed extensions"):
        build_snapshot([good], good_key, {"example.org": (broken_ca.certificate,)})


# -- SVID files --------------------------------------------------------------------------------


def test_files_with_a_malformed_san_are_refused_at_start_in_one_line(tmp_path: Path) -> None:
    ca = RawCA("example.org")
    files = svid_files(tmp_path)
    write_files(files, ca, *ca.leaf(ALPHA, malformed_san=True))
    with pytest.raises(InvalidIdentityError) as info:
        FileSource(files)
    assert "ValueError: error parsing asn1 value" in str(info.value) and str(files.cert) in str(info.value)


def test_a_malformed_svid_file_set_is_reported_once_and_the_good_svid_kept(tmp_path: Path, logs: Captured) -> None:
    ca = RawCA("example.org")
    files = svid_files(tmp_path)
    write_files(files, ca, *ca.leaf(ALPHA))
    errors: list[str] = []
    with FileSource(files, poll_interval=3600, on_error=errors.append) as source:
        good = source.current()
        write_files(files, ca, *ca.leaf(ALPHA, malformed_san=True))
        for _ in range(6):
            assert source.poll() is None
        assert source.current() is good
        assert len(errors) == 1 and source.errors == 1
        assert "ValueError: error parsing asn1 value" in errors[0] and str(files.cert) in errors[0]
        # another bad content is another report; a good set is taken again
        files.bundle.write_bytes(RawCA("example.org", malformed_san=True).certificate.public_bytes(
            serialization.Encoding.PEM))
        for _ in range(3):
            assert source.poll() is None
        assert len(errors) == 2
        write_files(files, ca, *ca.leaf(ALPHA))
        fresh = source.poll()
        assert fresh is not None and fresh.generation == 2
    assert len(logs.matching("ignoring the SVID files")) == 2
    assert logs.tracebacks() == []


def test_a_federated_ca_with_malformed_der_is_refused_not_a_reason_to_refuse_the_svid(
    tmp_path: Path, logs: Captured
) -> None:
    """A partner's broken bundle must never stop this node's own rotations, nor verify anyone."""
    ca = RawCA("example.org")
    fed = tmp_path / "federated"
    fed.mkdir()
    (fed / "partner.org.pem").write_bytes(
        RawCA("partner.org", malformed_san=True).certificate.public_bytes(serialization.Encoding.PEM)
    )
    files = SvidFiles(tmp_path / "svid.pem", tmp_path / "key.pem", tmp_path / "bundle.pem")
    write_files(files, ca, *ca.leaf(ALPHA))
    errors: list[str] = []
    with FederatedSource(FileSource(files, poll_interval=3600), fed, poll_interval=3600,
                         on_error=errors.append) as source:
        assert sorted(source.current().bundles) == ["example.org"]
    [refused] = errors
    assert f"federated bundle {fed / 'partner.org.pem'}: certificate 0 (serial " in refused
    assert "has malformed extensions: ValueError" in refused and "'partner.org' stays untrusted" in refused
    assert logs.tracebacks() == []


def test_the_file_poller_thread_reports_a_malformed_set_once(tmp_path: Path, logs: Captured) -> None:
    ca = RawCA("example.org")
    files = svid_files(tmp_path)
    write_files(files, ca, *ca.leaf(ALPHA))
    reported = threading.Event()
    with FileSource(files, poll_interval=0.01, on_error=lambda _: reported.set()) as source:
        published = threading.Event()
        source.subscribe(lambda snap: published.set())
        write_files(files, ca, *ca.leaf(ALPHA, malformed_san=True))
        assert reported.wait(30), logs.summary()
        write_files(files, ca, *ca.leaf(ALPHA))  # the thread keeps polling and takes the next good set
        assert published.wait(30), logs.summary()
    assert len(logs.matching("ignoring the SVID files")) == 1
    assert logs.tracebacks() == []


NODE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    from cryptography.hazmat.primitives import serialization
    from meshnode.node import Node
    from tests.support.nodes import node_config
    from tests.support.badcerts import RawCA

    d = Path(sys.argv[1])
    ca = RawCA("example.org")

    def write(leaf, key):
        (d / "svid.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (d / "bundle.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))

    async def main():
        write(*ca.leaf("spiffe://example.org/node/alpha"))
        identity = {"source": "files", "cert": str(d / "svid.pem"), "key": str(d / "key.pem"),
                    "bundle": str(d / "bundle.pem")}
        async with Node(node_config("alpha", identity=identity)) as node:
            serial = node.identity.serial
            write(*ca.leaf("spiffe://example.org/node/alpha", malformed_san=True))
            for _ in range(5):
                node.source.inner.poll()  # the files source, behind the node's trust-domain guard
            kept = node.identity.serial == serial
        points = {m.name: [p.value for p in m.data.data_points] for rm in reader.get_metrics_data().resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics}
        print(json.dumps({"kept": kept, "source_errors": points.get("meshnode.identity.source_errors")}))

    asyncio.run(main())
    """
)


def test_a_node_counts_a_rejected_svid_file_set_once(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", NODE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"kept": True, "source_errors": [1]}
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("ignoring the SVID files") == 1, proc.stderr


# -- the Workload API --------------------------------------------------------------------------


@pytest.fixture
def sockets() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_workload_api_pushes_that_break_our_parser_are_reported_once(sockets: Path, logs: Captured) -> None:
    """A bundle CA whose SAN is malformed DER passes py-spiffe and fails meshnode's chain check."""
    ca = RawCA("example.org")
    with ScriptedWorkloadApi(sockets / "api.sock", response(ca)) as api:
        errors: list[str] = []
        with WorkloadApiSource(api.address, timeout=10, on_error=errors.append) as source:
            good = source.current()
            published = threading.Event()
            source.subscribe(lambda snap: published.set())
            bad = response(RawCA("example.org", malformed_san=True))
            for _ in range(5):
                api.push(bad)
            api.push(response(ca))  # a stream keeps its order: once this is taken, every bad push was seen
            assert published.wait(30), logs.summary()
            assert source.current().generation == good.generation + 1
    assert len(errors) == 1 and "ValueError: error parsing asn1 value" in errors[0], errors
    assert logs.tracebacks() == [], logs.summary()


@pytest.mark.slow
def test_a_workload_api_that_keeps_sending_an_unparsable_svid_is_reported_once(
    sockets: Path, logs: Captured
) -> None:
    """A leaf SAN py-spiffe cannot parse closes its X509Source; every reconnection fails the same way."""
    ca = RawCA("example.org")
    with ScriptedWorkloadApi(sockets / "api.sock", response(ca)) as api:
        errors: list[str] = []
        with WorkloadApiSource(api.address, timeout=10, on_error=errors.append) as source:
            good = source.current()
            published = threading.Event()
            source.subscribe(lambda snap: published.set())
            api.push(response(ca, malformed_san=True))
            logs.wait_for("X509 Source Error", count=3)  # the first failure and two reconnections
            assert source.current() is good
            api.push(response(ca))
            assert published.wait(30), logs.summary()
    reconnects = [e for e in errors if "reconnecting to the Workload API" in e]
    assert len(reconnects) == 1 and "error parsing asn1 value" in reconnects[0], errors
    assert logs.tracebacks() == [], logs.summary()


# -- policy files ------------------------------------------------------------------------------


def reload_failures(reader: InMemoryMetricReader) -> list[int]:
    data = reader.get_metrics_data()
    return [p.value for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
            for m in sm.metrics if m.name == "meshnode.authz.policy_reload_failures" for p in m.data.data_points]


def test_a_policy_nested_100000_deep_is_a_refused_reload(tmp_path: Path, logs: Captured) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"name": "p", "allow_rules": [{"name": "all"}]}))
    reader = InMemoryMetricReader()
    with PolicyFile(path, meter_provider=MeterProvider(metric_readers=[reader]), start=False) as policy:
        path.write_text(DEEP_JSON)
        for _ in range(5):
            assert policy.poll() is False
        assert policy.current().version == 1
        assert reload_failures(reader) == [1]
    (failed,) = logs.matching("policy reload failed")
    assert "JSON nested too deeply" in failed and str(path) in failed
    assert logs.tracebacks() == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [(DEEP_JSON, "JSON nested too deeply"), ('{"name": ' + "1" * 5000 + "}", "not a usable JSON document")],
)
def test_a_policy_that_breaks_the_json_reader_is_refused_at_start(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(PolicyError, match=reason):
        PolicyFile(path, start=False)
    done = subprocess.run([sys.executable, "-m", "meshnode.cli", "policy", "check", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"meshnode: authz: {path}: {reason}" + done.stderr.split(reason, 1)[1]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
