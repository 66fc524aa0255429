"""The development CA: issues X.509-SVIDs and JWT-SVIDs for one trust domain.

It is what ``meshnode agent`` and the in-process ``dev`` source sign with.
SVIDs follow the X509-SVID spec: exactly one URI SAN (the SPIFFE ID),
CA=false, digitalSignature only, plus a DNS SAN from meshnode's ID -> DNS
mapping (grpcio clients verify servers by DNS name) unless turned off.

CA rotation works like SPIRE's: :meth:`DevCA.prepare_rotation` adds the next
CA to the bundle without signing anything with it; :meth:`activate_next`
makes it the signer (the old CA stays in the bundle so SVIDs it signed stay
valid); :meth:`retire_previous` drops the old CA once nothing uses it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshnode.devagent.safe_dir import STATE_DIR, secure_dir
from meshnode.errors import ConfigError, InvalidIdentityError
from meshnode.identity.snapshot import utcnow
from meshnode.spiffeid import SpiffeID, dns_name_for, parse_spiffe_id, parse_trust_domain

__all__ = ["DevCA", "IssuedSVID", "validate_dns_name"]

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_BACKDATE = dt.timedelta(seconds=30)
DEFAULT_CA_TTL = dt.timedelta(days=365)


def validate_dns_name(name: str) -> str:
    """A DNS SAN must be a plain host name: never a URI spelled as a name.

    gRPC's SAN matcher does not look at SAN types, so a DNS SAN spelled like
    a SPIFFE ID would pass an exact SPIFFE-ID check; refusing anything but
    LDH host names keeps meshnode's issuers from ever minting one.
    """
    lowered = name.lower().rstrip(".")
    labels = lowered.split(".")
    if (
        not lowered
        or len(lowered) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise ConfigError(
            reason=f"{name!r} is not a DNS host name (letters, digits, '-' and '.' only); "
            "SPIFFE IDs go in the URI SAN, never in dns_names",
            component="devca", value=name,
        )
    return lowered


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class IssuedSVID:
    spiffe_id: SpiffeID
    chain: tuple[x509.Certificate, ...]
    private_key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"IssuedSVID(spiffe_id='{self.spiffe_id}', serial={self.chain[0].serial_number:x})"


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


class DevCA:
    """A self-signed CA for one trust domain, with overlap-safe rotation."""

    def __init__(
        self,
        trust_domain: str,
        *,
        ca_ttl: dt.timedelta = DEFAULT_CA_TTL,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.trust_domain = parse_trust_domain(trust_domain)
        self._ca_ttl = ca_ttl
        self._lock = threading.Lock()
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._signer: _Authority
        self._next: _Authority | None = None
        self._previous: list[_Authority] = []
        self._jwt_key: ec.EllipticCurvePrivateKey
        self._jwt_kid: str
        if self._state_dir is not None:
            secure_dir(self._state_dir, STATE_DIR)  # nobody else may plant or swap the CA key
            if self._load():
                return
        self._signer = self._new_authority()
        self._jwt_key = _new_key()
        self._jwt_kid = uuid.uuid4().hex
        self._save()

    # -- authorities ------------------------------------------------------

    def _new_authority(self) -> _Authority:
        key = _new_key()
        now = utcnow()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode dev CA"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{self.trust_domain} {uuid.uuid4().hex[:8]}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + self._ca_ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return _Authority(key, cert)

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The CA that currently signs."""
        return self._signer.cert

    @property
    def bundle(self) -> tuple[x509.Certificate, ...]:
        """Every CA a verifier must trust now: signer, next, and not yet retired."""
        with self._lock:
            out = [self._signer.cert]
            if self._next is not None:
                out.append(self._next.cert)
            out.extend(a.cert for a in self._previous)
            return tuple(out)

    def prepare_rotation(self) -> x509.Certificate:
        """Create the next CA and put it in the bundle; it signs nothing yet."""
        with self._lock:
            if self._next is None:
                self._next = self._new_authority()
            return self._next.cert

    def activate_next(self) -> None:
        """Make the prepared CA the signer; the old one stays in the bundle."""
        with self._lock:
            if self._next is None:
                raise InvalidIdentityError(reason="activate_next() before prepare_rotation()", component="devca")
            self._previous.insert(0, self._signer)
            self._signer, self._next = self._next, None
        self._save()

    def retire_previous(self) -> None:
        """Drop every earlier CA from the bundle."""
        with self._lock:
            self._previous.clear()

    def retire(self, ca_certificate: x509.Certificate) -> bool:
        """Drop one earlier CA from the bundle; False if it is not an earlier CA.

        The signer and the prepared next CA are never dropped. Retiring one CA
        at a time lets rotations overlap: each old CA leaves the bundle when
        the SVIDs it signed have expired.
        """
        with self._lock:
            for authority in self._previous:
                if authority.cert == ca_certificate:
                    self._previous.remove(authority)
                    return True
        return False

    # -- issuing ----------------------------------------------------------

    def issue(
        self,
        spiffe_id: str | SpiffeID,
        ttl: dt.timedelta,
        *,
        dns_names: tuple[str, ...] = (),
        map_dns: bool = True,
    ) -> IssuedSVID:
        """Issue an X.509-SVID for ``spiffe_id`` valid for ``ttl``."""
        sid = spiffe_id if isinstance(spiffe_id, SpiffeID) else parse_spiffe_id(spiffe_id)
        if sid.trust_domain != self.trust_domain:
            raise ConfigError(
                f"devca: {sid} is outside the trust domain '{self.trust_domain}' of this CA"
            )
        if not sid.path:
            raise ConfigError(f"devca: {sid} has no path; an SVID names a workload, not a trust domain")
        names: list[str] = [dns_name_for(sid)] if map_dns else []
        for name in dns_names:
            checked = validate_dns_name(name)
            if checked not in names:
                names.append(checked)
        key = _new_key()
        with self._lock:
            signer = self._signer
        now = utcnow()
        not_after = min(now + ttl, signer.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(sid))]
        sans.extend(x509.DNSName(n) for n in names)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode dev"),
                        x509.NameAttribute(NameOID.SERIAL_NUMBER, uuid.uuid4().hex),
                    ]
                )
            )
            .issuer_name(signer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                critical=False,
            )
            .sign(signer.key, hashes.SHA256())
        )
        return IssuedSVID(sid, (cert,), key)

    # -- JWT-SVIDs --------------------------------------------------------

    @property
    def jwt_key_id(self) -> str:
        return self._jwt_kid

    def sign_jwt(self, spiffe_id: str | SpiffeID, audience: list[str], ttl: dt.timedelta) -> str:
        sid = spiffe_id if isinstance(spiffe_id, SpiffeID) else parse_spiffe_id(spiffe_id)
        now = utcnow()
        claims = {
            "sub": str(sid),
            "aud": audience if len(audience) != 1 else audience[0],
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
        }
        return jwt.encode(claims, self._jwt_key, algorithm="ES256", headers={"kid": self._jwt_kid, "typ": "JWT"})

    def jwks(self) -> bytes:
        """The JWT bundle of this trust domain as a JWKS document."""
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._jwt_key.public_key()))
        jwk.update({"kid": self._jwt_kid, "use": "jwt-svid"})
        return json.dumps({"keys": [jwk]}).encode()

    def jwt_public_key(self) -> ec.EllipticCurvePublicKey:
        return self._jwt_key.public_key()

    # -- persistence ------------------------------------------------------

    def _paths(self) -> tuple[Path, Path, Path]:
        assert self._state_dir is not None
        return (
            self._state_dir / "ca.key.pem",
            self._state_dir / "ca.crt.pem",
            self._state_dir / "jwt.key.pem",
        )

    def _load(self) -> bool:
        key_path, cert_path, jwt_path = self._paths()
        if not key_path.exists():
            return False
        for path in (key_path, jwt_path):
            try:
                mode = stat.S_IMODE(os.lstat(path).st_mode)
            except OSError:
                continue  # the read below says what is wrong
            if mode & 0o077:
                raise ConfigError(
                    f"devca: {path} is open to group or others (mode {mode:04o}): anyone who read it can sign "
                    f"SVIDs; run chmod 600 {path} if it never left this user, else remove state_dir {self._state_dir} "
                    "to start a new CA"
                )
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            jwt_key = serialization.load_pem_private_key(jwt_path.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"devca: cannot load the CA from state_dir {self._state_dir} ({type(exc).__name__}); "
                "fix or remove the directory to start a new CA"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(jwt_key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"devca: state_dir {self._state_dir} holds a key that is not EC P-256")
        if f"spiffe://{self.trust_domain}" not in [
            u for u in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier
            )
        ]:
            raise ConfigError(
                f"devca: the CA in state_dir {self._state_dir} belongs to another trust domain, "
                f"not '{self.trust_domain}'; use another state_dir"
            )
        if cert.not_valid_after_utc <= utcnow():
            raise ConfigError(f"devca: the CA in state_dir {self._state_dir} has expired; remove it to start a new CA")
        self._signer = _Authority(key, cert)
        self._jwt_key = jwt_key
        kid_path = cert_path.with_name("jwt.kid")
        self._jwt_kid = kid_path.read_text().strip() if kid_path.exists() else "dev"
        return True

    def _save(self) -> None:
        if self._state_dir is None:
            return
        try:
            self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_path, cert_path, jwt_path = self._paths()
            none = serialization.NoEncryption()
            pkcs8 = serialization.PrivateFormat.PKCS8
            pem = serialization.Encoding.PEM
            _write_private(key_path, self._signer.key.private_bytes(pem, pkcs8, none))
            _write_private(jwt_path, self._jwt_key.private_bytes(pem, pkcs8, none))
            _write_private(cert_path, self._signer.cert.public_bytes(pem), mode=0o644)
            _write_private(cert_path.with_name("jwt.kid"), self._jwt_kid.encode(), mode=0o644)
        except OSError as exc:
            raise ConfigError(f"devca: cannot write the CA to state_dir {self._state_dir}: {exc.strerror}") from None


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
