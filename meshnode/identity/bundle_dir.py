"""A polled directory of federated bundles: ``[identity] federated_bundles_dir``.

One file per foreign trust domain, named after it: ``partner.org.json`` (a
SPIFFE bundle) or ``partner.org.pem`` (PEM CA certificates); what each may
hold is in :mod:`meshnode.identity.bundle_file`. Other entries (dotfiles
such as a writer's temporary files, other suffixes, subdirectories) are not
bundles and are skipped. Symlinks are followed, so a Kubernetes ConfigMap or
Secret volume works as the directory.

:meth:`BundleDir.scan` runs on the polling thread of the source that owns
the directory. It reads only files whose ``stat`` changed and keeps the last
good bundle of every trust domain:

* a good file replaces the bundle of its trust domain;
* a bad file keeps the last good bundle of its trust domain (none: the trust
  domain stays untrusted). Bad is: a content refused by ``bundle_file``, a
  file that cannot be read or is larger than :data:`MAX_BUNDLE_BYTES`, a
  name that is not a trust domain, two files for one trust domain, a file
  for the node's own trust domain (it would replace the roots the identity
  source gives for it), a ``spiffe_sequence`` lower than the one in use. It
  is reported - one WARNING naming the file and the reason, one ``on_error``
  call - once it has been seen on two scans in a row (a writer half-way
  through is not an error), and never again while its content stays the same;
* a file gone on two scans in a row takes the bundle of its trust domain
  with it: from then on that trust domain is not trusted for new handshakes.

The same polling serves other kinds of bundle files: a :class:`BundleKind`
says which suffixes a directory holds, how each file is parsed, what
consumers get per trust domain, and whether the node's own trust domain may
have a file (``[identity] jwt_bundles_dir`` uses :class:`BundleFiles` with
the JWT kind of :mod:`meshnode.jwtsvid.bundle`: there the own trust domain's
JWT keys may come from a file, since no other source has them).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from cryptography import x509

from meshnode.errors import InvalidBundleError, InvalidSpiffeIdError
from meshnode.identity.bundle_file import (
    FORMATS,
    MAX_BUNDLE_BYTES,
    FederatedBundle,
    parse_pem_bundle,
    parse_spiffe_bundle,
)
from meshnode.identity.rejects import describe_error
from meshnode.spiffeid import parse_trust_domain

__all__ = ["MAX_BUNDLE_FILES", "X509_BUNDLES", "BundleDir", "BundleFiles", "BundleKind"]

log = logging.getLogger("meshnode.identity")

#: More bundle files than this are not read (the rest is reported once).
MAX_BUNDLE_FILES = 1000

Stamp = tuple[int, int, int, int]
V = TypeVar("V")
#: (file content, trust domain) -> a bundle with ``sequence`` and ``ignored`` (see FederatedBundle); raises
Parser = Callable[[bytes, str], Any]


def _count_cas(bundle: FederatedBundle) -> str:
    n = len(bundle.authorities)
    return f"{n} CA{'' if n == 1 else 's'}"


def _authorities(bundle: FederatedBundle) -> tuple[x509.Certificate, ...]:
    return bundle.authorities


@dataclass(frozen=True)
class BundleKind(Generic[V]):
    """One kind of bundle directory: its files, how they are read, and what consumers get from each."""

    key: str  # the configuration key that names the directory
    noun: str  # what one file is, in messages
    formats: Mapping[str, Parser]  # file name suffix -> parser
    view: Callable[[Any], V]  # parsed bundle -> what :attr:`BundleFiles.bundles` holds for its trust domain
    describe: Callable[[Any], str]  # parsed bundle -> "2 CAs", for the log line
    own_allowed: bool = False  # may the node's own trust domain have a file?
    gone: str = "not trusted for new connections unless the identity source delivers its bundle"


X509_BUNDLES: BundleKind[tuple[x509.Certificate, ...]] = BundleKind(
    "federated_bundles_dir", "federated bundle",
    {suffix: parse_spiffe_bundle if fmt == "spiffe" else parse_pem_bundle for suffix, fmt in FORMATS.items()},
    _authorities, _count_cas,
)


@dataclass(frozen=True)
class _Good:
    name: str
    digest: str
    bundle: Any


class BundleFiles(Generic[V]):
    """The bundles of one directory of ``kind``: the last good bundle per trust domain."""

    def __init__(self, path: Path, *, kind: BundleKind[V], on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.kind = kind
        self._on_error = on_error
        self._good: dict[str, _Good] = {}
        self._view: Mapping[str, V] = MappingProxyType({})
        self._stamps: dict[str, Stamp] = {}  # name -> stat of the content last settled (taken or reported)
        self._seen_bad: dict[str, Hashable] = {}  # name -> a problem seen once, reported if seen again
        self._reported: dict[str, Hashable] = {}  # name -> the problem reported last
        self._gone: set[str] = set()  # trust domains whose file was missing on the last scan
        self._absent = False
        #: how many problems were reported (each distinct one once)
        self.errors = 0

    @property
    def bundles(self) -> Mapping[str, V]:
        """Trust domain -> its CAs, as of the last scan (an immutable view; safe from any thread)."""
        return self._view

    def scan(self, own_trust_domain: str, *, at_once: bool = False) -> bool:
        """Look at the directory once; True when :attr:`bundles` changed.

        ``at_once``: report problems on this scan, not only when the next
        one sees them too (for the first scan, when there is no writer race
        to forgive).
        """
        listing = self._list(at_once)
        if listing is None:
            return False
        present: dict[str, list[str]] = {}
        for name in sorted(listing):
            td = self._trust_domain_of(name)
            if td is not None:
                present.setdefault(td, []).append(name)
        changed = False
        for td, names in present.items():
            if td == own_trust_domain and not self.kind.own_allowed:
                self._problem(names[0], "own", (
                    f"is for this node's own trust domain '{td}'; refused, it would replace the roots that "
                    "verify this trust domain (they come from the identity source only): remove the file"
                ), at_once=True, keeping="the file is not used")
            elif len(names) > 1:
                for name in names:
                    self._problem(name, tuple(names), (
                        f"trust domain '{td}' has two bundle files ({', '.join(names)}): remove one"
                    ), at_once=True, keeping=self._keeping(td))
            else:
                changed |= self._load(td, names[0], listing[names[0]], at_once)
        kept = set(present) if self.kind.own_allowed else set(present) - {own_trust_domain}
        changed |= self._drop_gone(kept, at_once)
        for name in [n for n in {*self._stamps, *self._seen_bad, *self._reported} if n and n not in listing]:
            self._stamps.pop(name, None)
            self._seen_bad.pop(name, None)
            self._reported.pop(name, None)
        if changed:
            self._view = MappingProxyType({td: self.kind.view(g.bundle) for td, g in sorted(self._good.items())})
        return changed

    # -- the directory and file names ----------------------------------------

    def _list(self, at_once: bool) -> dict[str, Path] | None:
        """Bundle file name -> path; None when the directory cannot be listed (keep everything)."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            if not self._absent:
                self._absent = True
                log.warning("identity: %s %s does not exist: no %ss from it until it does", self.kind.key,
                            self.path, self.kind.noun)
            return {}
        except OSError as exc:
            self._problem("", ("list", exc.errno), f"cannot be listed ({exc.strerror})", at_once=at_once,
                          keeping="keeping the bundles in use")
            return None
        self._absent = False
        found: dict[str, Path] = {}
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") or Path(entry.name).suffix not in self.kind.formats:
                continue
            try:
                if not entry.is_file():  # follows symlinks
                    continue
            except OSError:
                continue
            if len(found) == MAX_BUNDLE_FILES:
                self._problem("", "too many", f"holds more than {MAX_BUNDLE_FILES} bundle files",
                              at_once=True, keeping=f"only the first {MAX_BUNDLE_FILES} (by name) are read")
                break
            found[entry.name] = Path(entry.path)
        return found

    def _trust_domain_of(self, name: str) -> str | None:
        stem = name[: -len(Path(name).suffix)]
        try:
            return str(parse_trust_domain(stem))
        except InvalidSpiffeIdError as exc:
            self._problem(name, "name", (
                f"the file name must be {' or '.join(repr('<trust-domain>' + x) for x in self.kind.formats)} "
                f"({exc.reason})"
            ), at_once=True, keeping="the file is not used")
            return None

    # -- one file -----------------------------------------------------------

    def _load(self, td: str, name: str, path: Path, at_once: bool) -> bool:
        """Read ``path`` if it changed; True when it gave ``td`` a new bundle."""
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._stamps.get(name) == stamp and name not in self._seen_bad:
                return False
            with open(path, "rb") as f:
                data = f.read(MAX_BUNDLE_BYTES + 1)
        except FileNotFoundError:
            return False  # gone since the listing: the next scan sees it missing
        except OSError as exc:
            self._problem(name, ("read", exc.errno), f"cannot be read ({exc.strerror})", at_once=at_once,
                          keeping=self._keeping(td))
            return False
        digest = hashlib.sha256(data).hexdigest()
        good = self._good.get(td)
        if good is not None and (good.name, good.digest) == (name, digest):
            self._settle(name, stamp)
            return False
        if self._reported.get(name) == digest:
            self._stamps[name] = stamp  # the bad content reported already: not parsed again
            return False
        try:
            bundle = self._parse(name, data, td, good)
        except Exception as exc:  # InvalidBundleError, or a surprise from outside input: never a crash loop
            reason = exc.reason if isinstance(exc, InvalidBundleError) else f"cannot be parsed: {describe_error(exc)}"
            if self._problem(name, digest, reason, at_once=at_once, keeping=self._keeping(td)):
                self._stamps[name] = stamp
            return False
        self._good[td] = _Good(name, digest, bundle)
        self._settle(name, stamp)
        sequence = "" if bundle.sequence is None else f", spiffe_sequence {bundle.sequence}"
        log.info("identity: %s for '%s' taken from %s (%s%s)", self.kind.noun, td, path, self.kind.describe(bundle),
                 sequence)
        if bundle.ignored:
            log.warning("identity: %s %s: ignored %s", self.kind.noun, path, "; ".join(bundle.ignored))
        return True

    def _parse(self, name: str, data: bytes, td: str, good: _Good | None) -> Any:
        if len(data) > MAX_BUNDLE_BYTES:
            raise InvalidBundleError(f"is larger than {MAX_BUNDLE_BYTES} bytes", trust_domain=td)
        bundle = self.kind.formats[Path(name).suffix](data, td)
        old = good.bundle.sequence if good is not None else None
        if old is not None and bundle.sequence is not None and bundle.sequence < old:
            raise InvalidBundleError(
                f"spiffe_sequence {bundle.sequence} is lower than {old} of the bundle in use (an older bundle?); "
                "to go back on purpose, remove the file first", trust_domain=td,
            )
        return bundle

    def _settle(self, name: str, stamp: Stamp) -> None:
        self._stamps[name] = stamp
        self._seen_bad.pop(name, None)
        self._reported.pop(name, None)  # a later bad content is news again

    def _drop_gone(self, present: set[str], at_once: bool) -> bool:
        """Forget the bundles whose file is gone (on two scans in a row); True if one was."""
        dropped = False
        for td in sorted(set(self._good) - present):
            if td in self._gone or at_once:
                self._gone.discard(td)
                good = self._good.pop(td)
                dropped = True
                log.info("identity: %s for '%s' removed (%s is gone): %s", self.kind.noun, td, self.path / good.name,
                         self.kind.gone)
            else:
                self._gone.add(td)
        self._gone &= set(self._good)
        return dropped

    # -- reporting ----------------------------------------------------------

    def _keeping(self, td: str) -> str:
        good = self._good.get(td)
        if good is None:
            return f"'{td}' stays untrusted until a good file arrives"
        return f"keeping the last good bundle of '{td}' (from {good.name})"

    def _problem(self, name: str, key: Hashable, reason: str, *, at_once: bool, keeping: str) -> bool:
        """Report a problem with file ``name`` ("": the directory) once; True once it is settled."""
        if not at_once and self._seen_bad.get(name) != key:
            self._seen_bad[name] = key
            return False
        self._seen_bad.pop(name, None)
        if self._reported.get(name) == key:
            return True
        self._reported[name] = key
        where = f"{self.kind.noun} {self.path / name}" if name else f"{self.kind.key} {self.path}"
        message = f"identity: {where}: {reason}; {keeping}"
        self.errors += 1
        log.warning("%s", message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:  # a faulty callback must not stop the scan
                log.warning("identity: the on_error callback failed for: %s", message)
        return True


class BundleDir(BundleFiles[tuple[x509.Certificate, ...]]):
    """The federated bundles of one directory (``[identity] federated_bundles_dir``): the CAs per trust domain."""

    def __init__(self, path: Path, *, on_error: Callable[[str], None] | None = None) -> None:
        super().__init__(path, kind=X509_BUNDLES, on_error=on_error)
