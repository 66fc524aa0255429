"""The ``workload-api`` identity source: a SPIRE agent (or any SPIFFE
Workload API server) through py-spiffe's ``X509Source``.

* The socket comes from config or ``SPIFFE_ENDPOINT_SOCKET``; a bare path is
  taken as ``unix:<path>``.
* The first SVID must arrive within ``timeout`` seconds. When it does not,
  a short probe finds out why (no socket file, nobody listening, no
  registration entry, silent agent) so the error can say what to fix.
* A response may carry several X509-SVIDs, each with a hint: the
  :class:`~meshnode.identity.selection.SvidSelector` built from
  ``[identity] spiffe_id`` / ``hint`` picks one (none set: the first, and the
  others are named in one log line). py-spiffe 0.3 drops the hints and its
  ``X509Source`` keeps only the SVID it picked, so the client
  (:mod:`meshnode.identity.workload_client`) keeps each response it parsed,
  with its hints, for the source to select from; ``X509Source`` still runs
  the stream (first-update timeout, reconnects, fatal errors). When the configured SVID is not delivered at start, the
  source raises :class:`~meshnode.errors.SvidNotDeliveredError` (exit 3);
  an update without it later is a rejected update.
* Updates stream in (SVID and bundle rotation, federated bundles). Each one
  is validated before it is published; a bad push keeps the last good SVID.
  Any exception from a push (also ``ValueError`` from malformed DER) is a
  rejected update, logged and counted once per distinct content.
* When the agent goes away, ``X509Source`` keeps the last SVID and
  reconnects by itself. When it closes itself for good (a fatal error), a
  supervisor thread opens a new one with backoff: the node keeps serving on
  its current SVID meanwhile.
* Reconnecting is bounded to about a second, however long the agent was
  away: py-spiffe's stream retry waits up to 1 s (its default: 5 s) and the
  gRPC channel's reconnect backoff is capped at 1 s (gRPC's default grows to
  120 s, which left a node on an expiring SVID for up to a minute after the
  agent came back). The socket is local, so frequent attempts cost nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket as pysocket
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe import X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.errors import PySpiffeError

from meshnode.errors import IdentityUnavailableError, InvalidIdentityError, SvidNotDeliveredError
from meshnode.identity.rejects import Rejections, describe_error, reason_of
from meshnode.identity.selection import Offered, SvidSelector
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import Publisher
from meshnode.identity.workload_client import Delivery, WorkloadClient, open_x509_source, path_of
from meshnode.identity.x509svid import build_snapshot
from meshnode.spiffeid import SpiffeID, parse_spiffe_id

__all__ = ["ENDPOINT_ENV", "WorkloadApiSource", "diagnose_socket", "socket_address"]

log = logging.getLogger("meshnode.identity")

#: The environment variable SPIFFE libraries read the Workload API address from.
ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"

_FIX = (
    "start the SPIRE agent (or `meshnode agent --config agent.toml` for development), "
    f"point [identity] socket or {ENDPOINT_ENV} at its socket, and register this workload"
)


def socket_address(configured: str | None) -> str:
    """The Workload API address to use, as a ``unix:`` URI; raises if none is set."""
    value = configured or os.environ.get(ENDPOINT_ENV, "")
    if not value:
        raise IdentityUnavailableError(
            reason=f"no Workload API socket configured: set [identity] socket or {ENDPOINT_ENV} "
            f"(e.g. unix:///run/spire/agent-sockets/spire-agent.sock); {_FIX}", component="identity"
        )
    if value.startswith("/"):
        value = "unix:" + value
    if not value.startswith("unix:"):
        raise IdentityUnavailableError(
            reason=f"Workload API address {value!r} is not a unix socket; use unix:///path/to/agent.sock",
            component="identity"
        )
    return value


def diagnose_socket(address: str, timeout: float = 0.5) -> str:
    """Why ``address`` gives no SVID, in one sentence a person can act on."""
    path = path_of(address)
    if not os.path.exists(path):
        return f"the socket file {path} does not exist (is the agent running, and is the socket mounted here?)"
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except PermissionError:
        return f"this process may not connect to {path} (permission denied on the socket file)"
    except OSError as exc:
        return f"nothing accepts connections on {path} ({exc.strerror}); the agent is not running"
    finally:
        probe.close()
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
        try:
            stream = stub.FetchX509SVID(
                workload_pb2.X509SVIDRequest(), timeout=timeout, metadata=(("workload.spiffe.io", "true"),)
            )
            next(iter(stream))
            stream.cancel()
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.PERMISSION_DENIED:
                return (
                    f"the agent on {path} has no registration entry for this workload (PERMISSION_DENIED): "
                    "create one (spire-server entry create -parentID ... -spiffeID ... -selector ...)"
                )
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"the agent on {path} accepted the call but sent no SVID within {timeout:g} s"
            return f"the agent on {path} answered {code.name}: {exc.details()}"
        except StopIteration:
            return f"the agent on {path} closed the stream without an SVID"
    return f"the agent on {path} answers now; it was late (try a larger [identity] timeout)"


def _snapshot_of(delivery: Delivery, chosen: Offered) -> IdentitySnapshot:
    svid = delivery.context.x509_svids[chosen.index]
    bundles = {b.trust_domain.name: tuple(b.x509_authorities) for b in delivery.context.x509_bundle_set.bundles}
    return build_snapshot(svid.cert_chain, svid.private_key, bundles)  # type: ignore[arg-type]


def _content_key(delivery: Delivery) -> str:
    """A digest of a push's certificates and hints: the same bad push is reported once, however often it comes."""
    digest = hashlib.sha256()
    for svid, hint in zip(delivery.context.x509_svids, delivery.hints, strict=False):
        digest.update(hashlib.sha256(hint.encode()).digest())
        for cert in svid.cert_chain:
            digest.update(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
        digest.update(b"|")
    for bundle in sorted(delivery.context.x509_bundle_set.bundles, key=lambda b: b.trust_domain.name):
        digest.update(bundle.trust_domain.name.encode())
        for ca in sorted(c.public_bytes(serialization.Encoding.DER) for c in bundle.x509_authorities):
            digest.update(hashlib.sha256(ca).digest())
    return digest.hexdigest()


class WorkloadApiSource(Publisher):
    """SVIDs and bundles streamed from the Workload API.

    ``spiffe_id`` and ``hint`` select one of several SVIDs (see
    :mod:`meshnode.identity.selection`); without them the first is taken.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float = 10.0,
        on_error: Callable[[str], None] | None = None,
        spiffe_id: SpiffeID | str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__()
        self.address = socket_address(socket)
        self.description = f"workload-api {self.address}"
        wanted = parse_spiffe_id(spiffe_id) if isinstance(spiffe_id, str) else spiffe_id
        self.selector = SvidSelector(wanted, hint)
        self._timeout = timeout
        self._on_error = on_error
        self._rejections = Rejections(on_error)
        self._noted: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._x509, self._client = self._open(timeout)
        self._updated()  # a push that came before the subscription
        self._thread = threading.Thread(target=self._supervise, name="meshnode-workload-api", daemon=True)
        self._thread.start()

    def _open(self, timeout: float) -> tuple[X509Source, WorkloadClient]:
        started = time.monotonic()
        try:
            source, client = open_x509_source(self.address, timeout)
        except PySpiffeError as exc:
            waited = time.monotonic() - started >= timeout * 0.9
            reason = diagnose_socket(self.address, timeout=min(0.5, max(timeout, 0.1)))
            raise IdentityUnavailableError(
                reason=f"no SVID from the Workload API at {self.address}"
                + (f" within {timeout:g} s" if waited else "")
                + f": {reason}. To fix: {_FIX}", component="identity"
            ) from exc
        try:
            delivery = client.latest
            if delivery is None:  # X509Source returns only after the client parsed a response
                raise IdentityUnavailableError(reason="the Workload API client kept no response", component="identity")
            self._publish(self._snapshot(delivery))
        except SvidNotDeliveredError:  # the configured SVID is not there: as if no SVID came (exit 3)
            source.close()
            client.close()
            raise
        except Exception as exc:  # any unusable first SVID refuses the start, in one line
            source.close()
            client.close()
            raise InvalidIdentityError(
                reason=f"the Workload API at {self.address} gave an unusable SVID: {describe_error(exc)}",
                component="identity"
            ) from None
        source.subscribe_for_updates(self._updated)
        return source, client

    def _snapshot(self, delivery: Delivery) -> IdentitySnapshot:
        """The snapshot of the SVID the selector takes from ``delivery``; raises SvidNotDeliveredError."""
        offers = delivery.offers()
        chosen = self.selector.select(offers)
        if chosen is None:
            raise SvidNotDeliveredError(
                self.selector.describe(), tuple(o.describe() for o in offers), f"the Workload API at {self.address}"
            )
        snapshot = _snapshot_of(delivery, chosen)
        self._note_choice(offers, chosen)
        return snapshot

    def _note_choice(self, offers: Sequence[Offered], chosen: Offered) -> None:
        """With several SVIDs, say once (per set delivered) which one was taken and which others exist."""
        if len(offers) < 2:
            return
        shown = tuple(o.describe() for o in offers)
        if shown == self._noted:
            return
        self._noted = shown
        rest = [o.describe() for o in offers if o is not chosen]
        others = ", ".join(rest[:8]) + (f" and {len(rest) - 8} more" if len(rest) > 8 else "")
        if self.selector.selects:
            log.info("identity: the Workload API at %s delivered %d SVIDs; took %s for %s; the others: %s",
                     self.address, len(offers), chosen.describe(), self.selector.describe(), others)
        else:
            log.info("identity: the Workload API at %s delivered %d SVIDs; took the first, %s; the others: %s "
                     "(set [identity] spiffe_id or hint to choose one)",
                     self.address, len(offers), chosen.describe(), others)

    def _updated(self) -> None:
        """Runs on py-spiffe's watcher thread for every push: select, validate and publish.

        Never raises: a push that cannot be used is a rejected update,
        reported once per distinct content (py-spiffe would log a traceback
        for every push that makes a subscriber raise); a push without the
        selected SVID, once per set of SVIDs delivered.
        """
        with self._lock:
            client = self._client
        delivery = client.latest
        if delivery is None:
            return
        key: str | None = None
        try:
            key = _content_key(delivery)
            if self._rejections.is_last(key):
                return
            published = self._publish(self._snapshot(delivery))
        except SvidNotDeliveredError as exc:
            self._rejections.reject(
                ("not delivered", exc.delivered),
                f"identity: ignoring an update from {self.address}, keeping the current SVID: {exc.reason}",
            )
            return
        except Exception as exc:
            message = reason_of(exc)
            self._rejections.reject(
                key or message,
                f"identity: ignoring an update from {self.address}, keeping the current SVID: {message}",
            )
            return
        self._rejections.accepted()
        if published is not None:
            log.info(
                "identity: SVID update from the Workload API serial=%s not_after=%s generation=%d",
                published.serial, published.not_after.isoformat(), published.generation,
            )

    def _report(self, message: str) -> None:
        log.warning("%s", message)
        if self._on_error is not None:
            self._on_error(message)

    def _supervise(self) -> None:
        """Re-open the X509Source if it closed itself (fatal stream error)."""
        backoff = 0.5
        while not self._stop.wait(1.0):
            with self._lock:
                source, client = self._x509, self._client
            if not source.is_closed():
                backoff = 0.5
                continue
            client.close()
            self._report(f"identity: the Workload API stream at {self.address} failed; reconnecting")
            while not self._stop.is_set():
                try:
                    replacement, replacement_client = open_x509_source(self.address, 5.0)
                except Exception as exc:  # each distinct reason once, not once per retry
                    self._rejections.reject(
                        describe_error(exc),
                        f"identity: reconnecting to the Workload API at {self.address} failed, keeping the "
                        f"current SVID and retrying: {describe_error(exc)}",
                    )
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, 5.0)
                    continue
                with self._lock:
                    self._x509, self._client = replacement, replacement_client
                if self._stop.is_set():  # close() ran meanwhile and closed the old one
                    replacement.close()
                    replacement_client.close()
                    return
                replacement.subscribe_for_updates(self._updated)
                self._updated()
                break

    def close(self) -> None:
        if self._mark_closed():
            self._stop.set()
            with self._lock:
                source, client = self._x509, self._client
            source.close()
            client.close()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
