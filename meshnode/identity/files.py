"""The ``files`` identity source: PEM files kept fresh by another program.

spiffe-helper and cert-manager's SPIFFE CSI driver write the SVID chain, its
key and the trust bundle as PEM files (plus, optionally, one file per
federated trust domain). This source polls them and publishes a new snapshot
only when the whole set on disk is consistent: the chain parses, the key
matches the leaf, and the chain verifies against the bundle of its own trust
domain. A half-written or mismatched set never replaces a good identity.

Federated bundles: every ``<trust-domain>.pem`` file in ``federated_bundles_dir``.
A CA in the main bundle file whose URI SAN names another trust domain is
filed under that trust domain, never under the SVID's own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from meshnode.errors import InvalidIdentityError, InvalidSpiffeIdError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import Publisher
from meshnode.identity.x509svid import build_snapshot, load_pem_certs, load_pem_key, spiffe_id_of, uri_sans
from meshnode.spiffeid import parse_spiffe_id, parse_trust_domain

__all__ = ["FileSource", "SvidFiles"]

log = logging.getLogger("meshnode.identity")


@dataclass(frozen=True)
class SvidFiles:
    cert: Path
    key: Path
    bundle: Path
    federated_bundles_dir: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidIdentityError(f"identity: {what} file {path} does not exist") from None
    except OSError as exc:
        raise InvalidIdentityError(f"identity: cannot read {what} file {path}: {exc.strerror}") from None


def load_svid_files(files: SvidFiles) -> tuple[IdentitySnapshot, str]:
    """Read and validate one consistent set; returns the snapshot and a content digest."""
    cert_pem = _read(files.cert, "SVID certificate")
    key_pem = _read(files.key, "SVID key")
    bundle_pem = _read(files.bundle, "trust bundle")
    digest = hashlib.sha256()
    for part in (cert_pem, key_pem, bundle_pem):
        digest.update(hashlib.sha256(part).digest())
    chain = load_pem_certs(cert_pem, f"SVID certificate {files.cert}")
    key = load_pem_key(key_pem, f"SVID key {files.key}")
    bundle = load_pem_certs(bundle_pem, f"trust bundle {files.bundle}")
    bundles: dict[str, tuple[x509.Certificate, ...]] = {}
    if files.federated_bundles_dir is not None:
        for path in sorted(files.federated_bundles_dir.glob("*.pem")):
            try:
                td = parse_trust_domain(path.stem)
            except InvalidSpiffeIdError as exc:
                raise InvalidIdentityError(
                    f"identity: federated bundle {path}: the file name must be '<trust-domain>.pem' ({exc})"
                ) from None
            data = _read(path, "federated bundle")
            digest.update(path.name.encode() + hashlib.sha256(data).digest())
            bundles[td] = tuple(load_pem_certs(data, f"federated bundle {path}"))
    own_td = spiffe_id_of(chain[0]).trust_domain
    # A bundle file may also hold federated CAs (spiffe-helper's include_federated_domains):
    # a CA whose URI SAN names another trust domain must never vouch for this one.
    for cert in bundle:
        named: str | None = own_td
        for uri in uri_sans(cert):
            if uri.startswith("spiffe://"):
                try:
                    named = parse_spiffe_id(uri).trust_domain
                except InvalidSpiffeIdError:
                    named = None  # names no valid trust domain: it vouches for none
        if named is not None:
            bundles[named] = (*bundles.get(named, ()), cert)
    if own_td not in bundles:
        raise InvalidIdentityError(
            f"identity: trust bundle {files.bundle} holds no CA of the SVID's trust domain '{own_td}'"
        )
    try:
        snapshot = build_snapshot(chain, key, bundles)
    except InvalidIdentityError as exc:
        raise InvalidIdentityError(
            f"{exc} (files: cert={files.cert}, key={files.key}, bundle={files.bundle})"
        ) from None
    return snapshot, digest.hexdigest()


class FileSource(Publisher):
    """Polls SVID files and publishes each new consistent set."""

    def __init__(
        self, files: SvidFiles, *, poll_interval: float = 0.5, on_error: Callable[[str], None] | None = None
    ) -> None:
        super().__init__()
        self._on_error = on_error
        self.files = files
        self.description = f"files cert={files.cert} key={files.key} bundle={files.bundle}"
        self._interval = poll_interval
        self._stop = threading.Event()
        self._last_digest = ""
        self._last_error = ""
        self.errors = 0
        snapshot, self._last_digest = load_svid_files(files)  # raises: refuse to start
        self._publish(snapshot)
        self._stamp = self._stat()
        self._thread = threading.Thread(target=self._run, name="meshnode-file-source", daemon=True)
        self._thread.start()

    def _paths(self) -> list[Path]:
        paths = [self.files.cert, self.files.key, self.files.bundle]
        if self.files.federated_bundles_dir is not None:
            paths.append(self.files.federated_bundles_dir)
            paths.extend(sorted(self.files.federated_bundles_dir.glob("*.pem")))
        return paths

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self._paths():
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((0, -1, 0))
        return tuple(out)

    def poll(self) -> IdentitySnapshot | None:
        """Check the files once; publish and return a new snapshot if they changed and are valid."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        try:
            snapshot, digest = load_svid_files(self.files)
        except InvalidIdentityError as exc:
            # a writer may be half-way: keep the current identity, look again next poll
            if str(exc) != self._last_error:
                self.errors += 1
                log.warning("identity: ignoring the SVID files for now, keeping the current SVID: %s", exc)
                self._last_error = str(exc)
                if self._on_error is not None:
                    self._on_error(str(exc))
            return None
        self._stamp = stamp
        self._last_error = ""
        if digest == self._last_digest:
            return None
        self._last_digest = digest
        published = self._publish(snapshot)
        if published is not None:
            log.info(
                "identity: new SVID from files serial=%s not_after=%s",
                published.serial, published.not_after.isoformat(),
            )
        return published

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:
                log.exception("identity: file source poll failed; keeping the current SVID")

    def close(self) -> None:
        if self._mark_closed():
            self._stop.set()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
