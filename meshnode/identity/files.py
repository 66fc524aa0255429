"""The ``files`` identity source: PEM files kept fresh by another program.

spiffe-helper and cert-manager's SPIFFE CSI driver write the SVID chain, its
key and the trust bundle as PEM files. This source polls them and publishes a new snapshot
only when the whole set on disk is consistent: the chain parses, the key
matches the leaf, and the chain verifies against the bundle of its own trust
domain. A half-written or mismatched set never replaces a good identity.
Any exception while reading or parsing a set (also a ``ValueError`` from
malformed DER inside a certificate) is a rejected update: the current
identity stays, and the set is reported once (see :class:`FileSource`).

A CA in the bundle file whose URI SAN names another trust domain is filed
under that trust domain, never under the SVID's own. Federated bundles from
a directory (``[identity] federated_bundles_dir``) are added by
:class:`~meshnode.identity.federation.FederatedSource`, the same way for
every source.
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
from meshnode.identity.rejects import Rejections, describe_error
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import Publisher
from meshnode.identity.x509svid import build_snapshot, load_pem_certs, load_pem_key, spiffe_id_of, uri_sans
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["FileSource", "SvidFiles"]

log = logging.getLogger("meshnode.identity")


@dataclass(frozen=True)
class SvidFiles:
    cert: Path
    key: Path
    bundle: Path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidIdentityError(reason=f"{what} file {path} does not exist", component="identity") from None
    except OSError as exc:
        raise InvalidIdentityError(reason=f"cannot read {what} file {path}: {exc.strerror}",
                                   component="identity") from None


@dataclass(frozen=True)
class _Contents:
    """The bytes of one file set as read, and a digest over all of them."""

    cert: bytes
    key: bytes
    bundle: bytes
    digest: str


def _read_set(files: SvidFiles) -> _Contents:
    cert_pem = _read(files.cert, "SVID certificate")
    key_pem = _read(files.key, "SVID key")
    bundle_pem = _read(files.bundle, "trust bundle")
    digest = hashlib.sha256()
    for part in (cert_pem, key_pem, bundle_pem):
        digest.update(hashlib.sha256(part).digest())
    return _Contents(cert_pem, key_pem, bundle_pem, digest.hexdigest())


def _parse_set(files: SvidFiles, contents: _Contents) -> IdentitySnapshot:
    """Validate one file set; every problem, expected or not, is an InvalidIdentityError."""
    where = f"(files: cert={files.cert}, key={files.key}, bundle={files.bundle})"
    try:
        return _build(files, contents)
    except InvalidIdentityError as exc:
        raise InvalidIdentityError(reason=f"{exc.reason} {where}", component="identity") from None
    except Exception as exc:  # malformed DER that loaded lazily (ValueError...): outside input, not a bug
        raise InvalidIdentityError(
            reason=f"the SVID files cannot be parsed: {describe_error(exc)} {where}", component="identity"
        ) from None


def _build(files: SvidFiles, contents: _Contents) -> IdentitySnapshot:
    chain = load_pem_certs(contents.cert, f"SVID certificate {files.cert}")
    key = load_pem_key(contents.key, f"SVID key {files.key}")
    bundle = load_pem_certs(contents.bundle, f"trust bundle {files.bundle}")
    bundles: dict[str, tuple[x509.Certificate, ...]] = {}
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
            reason=f"trust bundle {files.bundle} holds no CA of the SVID's trust domain '{own_td}'",
            component="identity"
        )
    return build_snapshot(chain, key, bundles)


def load_svid_files(files: SvidFiles) -> tuple[IdentitySnapshot, str]:
    """Read and validate one consistent set; returns the snapshot and a content digest.

    Raises InvalidIdentityError for every problem (missing file, bad PEM,
    malformed DER, mismatched key, chain that does not verify).
    """
    contents = _read_set(files)
    return _parse_set(files, contents), contents.digest


class FileSource(Publisher):
    """Polls SVID files and publishes each new consistent set.

    A set that cannot be used (any exception while reading or parsing it)
    keeps the current identity. It is reported - one WARNING line and one
    ``on_error`` call - once it has been seen on two polls in a row (a
    writer half-way through a rotation is not an error), and then never
    again while the content stays the same; it is not parsed again either.
    """

    def __init__(
        self, files: SvidFiles, *, poll_interval: float = 0.5, on_error: Callable[[str], None] | None = None
    ) -> None:
        super().__init__()
        self.files = files
        self.description = f"files cert={files.cert} key={files.key} bundle={files.bundle}"
        self._interval = poll_interval
        self._stop = threading.Event()
        self._last_digest = ""
        self._rejections = Rejections(on_error)
        self._pending: object = None  # a rejected content seen once: reported if the next poll sees it again
        snapshot, self._last_digest = load_svid_files(files)  # raises: refuse to start
        self._publish(snapshot)
        self._stamp = self._stat()
        self._thread = threading.Thread(target=self._run, name="meshnode-file-source", daemon=True)
        self._thread.start()

    @property
    def errors(self) -> int:
        """How many rejected file sets were reported (each distinct content once)."""
        return self._rejections.count

    def _paths(self) -> list[Path]:
        return [self.files.cert, self.files.key, self.files.bundle]

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
            contents = _read_set(self.files)
        except Exception as exc:  # a file that cannot be read (or vanished mid-read) is a rejected update
            self._reject(("unreadable", describe_error(exc)), describe_error(exc))
            return None
        if contents.digest == self._last_digest:
            self._stamp, self._pending = stamp, None
            self._rejections.accepted()
            return None
        if self._rejections.is_last(contents.digest):
            return None  # the same bad set as before: reported already, not parsed again
        try:
            snapshot = _parse_set(self.files, contents)
        except InvalidIdentityError as exc:
            # a writer may be half-way: keep the current identity, look again next poll
            self._reject(contents.digest, exc.reason)
            return None
        self._stamp, self._pending, self._last_digest = stamp, None, contents.digest
        self._rejections.accepted()
        published = self._publish(snapshot)
        if published is not None:
            log.info(
                "identity: new SVID from files serial=%s not_after=%s",
                published.serial, published.not_after.isoformat(),
            )
        return published

    def _reject(self, key: object, message: str) -> None:
        """Report a rejected set once it is seen on two polls in a row."""
        if key != self._pending:
            self._pending = key
            return
        self._rejections.reject(
            key,
            "identity: ignoring the SVID files, keeping the current SVID until they change: " + message,
        )

    def _run(self) -> None:
        failure = ""
        while not self._stop.wait(self._interval):
            try:
                self.poll()
                failure = ""
            except Exception as exc:  # a bug here must neither stop polling nor log every 0.5 s
                if describe_error(exc) != failure:
                    failure = describe_error(exc)
                    log.exception("identity: file source poll failed; keeping the current SVID")

    def close(self) -> None:
        if self._mark_closed():
            self._stop.set()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
