"""The runtime directory: identity files for gRPC's ``file_watcher`` provider.

gRPC's xDS security reads the node's certificate, key and trust bundles only
from files, so the control plane keeps them in one private directory:

* mode 0700, owned by this user, on tmpfs where there is one
  (``$XDG_RUNTIME_DIR``, else ``/dev/shm``, else the temp directory);
* ``svid.pem``: the private key and the certificate chain in *one* file,
  named as both ``certificate_file`` and ``private_key_file``. gRPC reads the
  two paths one after the other; with two files a rotation landing between
  the reads would hand TLS a key that does not match the certificate.
* ``bundles.<trust domain>.json``: a SPIFFE bundle map (gRFC A87) holding
  one trust domain's roots, or roots that verify nothing while the node has
  no bundle for it (gRPC then refuses every peer there);
  ``bundle.<trust domain>.pem``, its PEM roots, in per-trust-domain PEM
  mode; ``a87-probe.json``, the map of the start-up probe;
* every file 0600, written to a temporary name, fsynced and renamed, so a
  reader sees the old or the new content, never half of it;
* ``ads.sock``: the control plane's unix socket lives here too;
* with provider slots (:mod:`meshnode.xds.bootstrap`), slot ``n`` reads
  ``n.svid.pem``, ``n.bundles.<trust domain>.json``, ...: every slot gets
  the same content at every write, so no older key stays on disk and a
  provider instance gRPC still holds for an old connection re-reads the
  current files too.

:meth:`RuntimeDir.close` removes the files, and the directory when it made it.
A directory it makes names its owner process, so one left by a node that
was killed (its private key still inside) is removed when the next node
makes its own (:func:`meshnode.private_dirs.remove_stale`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshnode.errors import ConfigError, IdentityError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.private_dirs import OWNER_FILE, make_private_dir, remove_stale
from meshnode.xds.bootstrap import slot_path

__all__ = ["MAX_SOCKET_PATH", "RuntimeDir", "default_runtime_base", "map_key_type", "spiffe_bundle_map"]

log = logging.getLogger("meshnode.xds")

#: Unix socket paths longer than this do not fit ``sockaddr_un`` everywhere.
MAX_SOCKET_PATH = 100

IDENTITY_FILE = "svid.pem"
PROBE_FILE = "a87-probe.json"
SOCKET_FILE = "ads.sock"
_OWN_NAMES = re.compile(
    r"a87-probe\.json|bundles\.json|ads\.sock"
    r"|(?:[0-9]\.)?(?:svid\.pem|bundle\.[a-z0-9._-]+\.pem|bundles\.[a-z0-9._-]+\.json)"
    r"|\.[A-Za-z0-9._-]+\.tmp"
)


def default_runtime_base() -> Path:
    """Where private runtime directories go: tmpfs first, the temp dir last."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _private_dir(Path(xdg)):
        return Path(xdg)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _private_dir(path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077 == 0


def map_key_type(cert: x509.Certificate) -> str | None:
    """The JWK ``kty`` gRPC takes for ``cert`` in a bundle map: "EC", "RSA", or None (it takes no other).

    gRPC (1.85.3) refuses a whole map with one key it does not take, and
    then fails every handshake verified with it ("Failed to create security
    handshaker"), even when a good map was read before.
    """
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    return None


def spiffe_bundle_map(bundles: Mapping[str, Iterable[x509.Certificate]]) -> bytes:
    """A SPIFFE bundle map (gRFC A87): trust domain -> JWKS of its X.509 roots.

    Roots gRPC cannot take in a map (see :func:`map_key_type`) are left out.
    """
    def jwk(cert: x509.Certificate, kty: str) -> dict[str, object]:
        der = cert.public_bytes(serialization.Encoding.DER)
        return {"kty": kty, "use": "x509-svid", "x5c": [base64.b64encode(der).decode()]}

    doc = {
        "trust_domains": {
            td: {"keys": [jwk(c, kty) for c in certs if (kty := map_key_type(c)) is not None]}
            for td, certs in sorted(bundles.items())
        }
    }
    return json.dumps(doc, indent=1).encode()


class RuntimeDir:
    """A private directory holding the identity files and the ADS socket."""

    def __init__(self, node_name: str, path: Path | None = None) -> None:
        if path is None:
            base = default_runtime_base()
            for stale in remove_stale("meshnode-", base, lambda name: bool(_OWN_NAMES.fullmatch(name))):
                log.info("xds: removed %s, left behind by a node that was killed", stale)
            path = make_private_dir(f"meshnode-{_safe(node_name)}-", base)
            self._owned = True
        else:
            self._owned = _make_private(path)
        self.path = path
        self._digests: dict[str, str] = {}
        self._left_out: set[bytes] = set()  # roots left out of a bundle map, warned about once
        self._closed = False
        #: Bumped by every write that changed the content of a file.
        self.content_version = 0
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            self.close()
            raise ConfigError(
                f"xds: runtime directory {path} is too long for a unix socket path "
                f"({len(str(self.socket_path))} > {MAX_SOCKET_PATH} characters); choose a shorter runtime_dir"
            )

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def socket_path(self) -> Path:
        return self.path / SOCKET_FILE

    @property
    def probe_path(self) -> Path:
        return self.path / PROBE_FILE

    def bundle_path(self, trust_domain: str, *, bundle_map: bool = False) -> Path:
        """The roots file of one trust domain: its bundle map, or its PEM roots."""
        return self.path / (f"bundles.{trust_domain}.json" if bundle_map else f"bundle.{trust_domain}.pem")

    def write_identity(
        self, snapshot: IdentitySnapshot, trust_domains: Iterable[str], *, bundle_map: bool,
        placeholder: bytes, slots: int = 1,
    ) -> list[str]:
        """Write the bundles first, then key and chain, in every one of ``slots`` slots; returns the
        trust domains without a bundle.

        Every trust domain in ``trust_domains`` gets a file. One the snapshot
        has no bundle for (or none gRPC can take in a map) gets ``placeholder``
        (PEM roots that verify nothing), so gRPC fails closed instead of
        logging a missing file every second. Not an empty map: after a map
        with roots, gRPC (1.85.3) sometimes fails handshakes verified with an
        empty one as "Failed to create security handshaker" instead of a
        failed verification, which reads like a bug rather than a missing bundle.
        """
        if self._closed:
            raise IdentityError("xds: the runtime directory is closed")
        wanted = sorted(set(trust_domains))
        missing = [td for td in wanted if not snapshot.bundles.get(td)]
        files: list[tuple[Path, bytes]] = []
        for td in wanted:
            path = self.bundle_path(td, bundle_map=bundle_map)
            if bundle_map:
                roots = snapshot.bundles.get(td, ())
                self._warn_left_out(td, roots)
                if not any(map_key_type(c) for c in roots):
                    roots = tuple(x509.load_pem_x509_certificates(placeholder))
                files.append((path, spiffe_bundle_map({td: roots})))
            else:
                files.append((path, snapshot.bundle_pem(td) or placeholder))
        files.append((self.identity_path, snapshot.key_pem + snapshot.chain_pem))
        for slot in range(slots):
            for path, data in files:
                self._write(slot_path(path, slot).name, data)
        return missing

    def write_probe(self, document: bytes) -> None:
        """Write the A87 probe's map (see :mod:`meshnode.xds.a87`)."""
        self._write(PROBE_FILE, document)

    def _warn_left_out(self, trust_domain: str, roots: Iterable[x509.Certificate]) -> None:
        for cert in roots:
            fingerprint = cert.fingerprint(hashes.SHA256())
            if map_key_type(cert) is None and fingerprint not in self._left_out:
                self._left_out.add(fingerprint)
                log.warning(
                    "xds: a root of trust domain '%s' (serial %x) has a key of type %s; gRPC takes only EC and RSA "
                    "keys in a SPIFFE bundle map: spiffe-id peers there cannot be verified with it", trust_domain,
                    cert.serial_number, type(cert.public_key()).__name__.removesuffix("PublicKey"),
                )

    def _write(self, name: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if self._digests.get(name) == digest:
            return  # unchanged: keep the mtime, nothing for gRPC to re-read
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise IdentityError(f"xds: cannot write {self.path / name}: {exc.strerror}") from None
        self._digests[name] = digest
        self.content_version += 1

    def close(self) -> None:
        """Remove every file written here, and the directory if this object made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        patterns = [IDENTITY_FILE, PROBE_FILE, SOCKET_FILE, "bundle.*.pem", "bundles.*.json", ".*.tmp",
                    f"[0-9].{IDENTITY_FILE}", "[0-9].bundle.*.pem", "[0-9].bundles.*.json"]
        for pattern in patterns + ([OWNER_FILE] if self._owned else []):
            for path in self.path.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if self._owned:
            try:
                self.path.rmdir()
            except OSError as exc:
                log.warning("xds: could not remove the runtime directory %s: %s", self.path, exc.strerror)

    def __enter__(self) -> RuntimeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:24] or "node"


def _make_private(path: Path) -> bool:
    """Create ``path`` 0700, or check that it is a private directory; True if it was created."""
    try:
        path.mkdir(mode=0o700)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"xds: cannot create the runtime directory {path}: {exc.strerror}") from None
    if not _private_dir(path):
        raise ConfigError(
            f"xds: runtime directory {path} must be a directory owned by this user with mode 0700 "
            "(not a symlink); it will hold the node's private key"
        )
    return False
