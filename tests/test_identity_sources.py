"""The files and dev identity sources, and the snapshot/X509-SVID checks."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshnode.devagent.ca import DevCA
from meshnode.devagent.source import DevSource
from meshnode.errors import InvalidIdentityError
from meshnode.identity.federation import FederatedSource
from meshnode.identity.files import FileSource, SvidFiles
from meshnode.identity.snapshot import IdentitySnapshot, certs_pem
from meshnode.testing import issue_snapshot


def write_set(dirpath: Path, snap: IdentitySnapshot, *, bundle: bytes | None = None) -> SvidFiles:
    files = SvidFiles(dirpath / "svid.pem", dirpath / "svid_key.pem", dirpath / "bundle.pem")
    files.cert.write_bytes(snap.chain_pem)
    files.key.write_bytes(snap.key_pem)
    files.bundle.write_bytes(bundle if bundle is not None else snap.bundle_pem(snap.trust_domain))
    return files


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_snapshot_repr_never_shows_the_key() -> None:
    ca = DevCA("example.org")
    snap = issue_snapshot(ca, "spiffe://example.org/a")
    key_body = snap.key_pem.decode().splitlines()[1]
    assert key_body not in repr(snap)
    assert "PRIVATE" not in repr(snap)
    assert "spiffe://example.org/a" in repr(snap)


def test_files_source_loads_a_consistent_set(tmp_path: Path) -> None:
    ca = DevCA("example.org")
    snap = issue_snapshot(ca, "spiffe://example.org/files")
    with FileSource(write_set(tmp_path, snap)) as source:
        got = source.current()
        assert str(got.spiffe_id) == "spiffe://example.org/files"
        assert got.generation == 1


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("key-mismatch", "private key does not match"),
        ("expired", "outside its validity"),
        ("foreign-bundle", "does not verify against the trust bundle"),
        ("missing-key", "does not exist"),
        ("garbage-cert", "not a PEM certificate"),
    ],
)
def test_files_source_refuses_a_bad_set_at_start(tmp_path: Path, breakage: str, message: str) -> None:
    ca = DevCA("example.org")
    snap = issue_snapshot(ca, "spiffe://example.org/files")
    files = write_set(tmp_path, snap)
    if breakage == "key-mismatch":
        other = issue_snapshot(ca, "spiffe://example.org/other")
        files.key.write_bytes(other.key_pem)
    elif breakage == "expired":
        old = ca.issue("spiffe://example.org/files", dt.timedelta(seconds=-10))
        files.cert.write_bytes(certs_pem(old.chain))
        files.key.write_bytes(
            old.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    elif breakage == "foreign-bundle":
        files.bundle.write_bytes(certs_pem(DevCA("example.org").bundle))
    elif breakage == "missing-key":
        files.key.unlink()
    elif breakage == "garbage-cert":
        files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidIdentityError) as info:
        FileSource(files)
    assert message in str(info.value)
    assert str(files.cert) in str(info.value) or str(files.key) in str(info.value)
    assert "BEGIN" not in str(info.value)


def test_files_source_never_publishes_a_mismatched_set_under_a_non_atomic_writer(tmp_path: Path) -> None:
    ca = DevCA("example.org")
    first = issue_snapshot(ca, "spiffe://example.org/files")
    files = write_set(tmp_path, first)
    source = FileSource(files, poll_interval=0.001)
    published: list[IdentitySnapshot] = []
    source.subscribe(published.append)
    stop = threading.Event()
    written_serials: set[int] = set()

    def writer() -> None:
        # rewrite cert and key in place, in small chunks, one after the other
        while not stop.is_set():
            snap = issue_snapshot(ca, "spiffe://example.org/files")
            written_serials.add(snap.leaf.serial_number)
            for path, data in ((files.cert, snap.chain_pem), (files.key, snap.key_pem)):
                with open(path, "wb") as f:
                    for i in range(0, len(data), 64):
                        f.write(data[i : i + 64])
                        f.flush()
                        os.fsync(f.fileno())

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: len(published) >= 5, timeout=20)
    finally:
        stop.set()
        t.join()
    source.close()
    for snap in published:
        pub = snap.leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_pub = snap.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert pub == key_pub
        assert snap.leaf.serial_number in written_serials
    gens = [s.generation for s in published]
    assert gens == sorted(gens) and len(set(gens)) == len(gens)


def test_files_source_keeps_the_good_identity_when_files_turn_bad(tmp_path: Path) -> None:
    ca = DevCA("example.org")
    snap = issue_snapshot(ca, "spiffe://example.org/files")
    files = write_set(tmp_path, snap)
    with FileSource(files, poll_interval=60) as source:
        files.key.write_bytes(b"junk")
        assert source.poll() is None
        assert source.current().leaf.serial_number == snap.leaf.serial_number
        newer = issue_snapshot(ca, "spiffe://example.org/files")
        write_set(tmp_path, newer)
        got = source.poll()
        assert got is not None and got.generation == 2
        assert got.leaf.serial_number == newer.leaf.serial_number


def test_files_source_reads_federated_bundles(tmp_path: Path) -> None:
    ca = DevCA("example.org")
    partner = DevCA("partner.org")
    snap = issue_snapshot(ca, "spiffe://example.org/files")
    files = write_set(tmp_path, snap)
    fed = tmp_path / "federated"
    fed.mkdir()
    (fed / "partner.org.pem").write_bytes(certs_pem(partner.bundle))
    with FederatedSource(FileSource(files), fed) as source:
        assert sorted(source.current().bundles) == ["example.org", "partner.org"]
    # a file whose name is no trust domain is skipped and reported; it stops nothing
    (fed / "Bad_TD!.pem").write_bytes(certs_pem(partner.bundle))
    errors: list[str] = []
    with FederatedSource(FileSource(files), fed, on_error=errors.append) as source:
        assert sorted(source.current().bundles) == ["example.org", "partner.org"]
    [error] = errors
    assert f"federated bundle {fed / 'Bad_TD!.pem'}: the file name must be '<trust-domain>.json'" in error


def test_dev_source_reissues_at_half_life() -> None:
    with DevSource("spiffe://example.org/dev", svid_ttl=dt.timedelta(seconds=2)) as source:
        first = source.current()
        seen: list[IdentitySnapshot] = []
        source.subscribe(seen.append)
        wait_for(lambda: bool(seen), timeout=5)
        assert seen[0].generation == first.generation + 1
        assert seen[0].leaf.serial_number != first.leaf.serial_number
