"""JWT-SVIDs and JWT bundles from the Workload API.

* :class:`WorkloadApiTokens` fetches a JWT-SVID per audience with
  py-spiffe's ``WorkloadApiClient.fetch_jwt_svid`` (``FetchJWTSVID``), on
  the channel of :class:`~meshnode.identity.workload_client.WorkloadClient`
  (reconnects within about a second). It is called from the token cache's
  thread only (:mod:`meshnode.jwtsvid.tokens`), never on a call's path.
* :class:`WorkloadApiJwtBundles` streams ``FetchJWTBundles`` on a thread of
  its own. py-spiffe's ``JwtSource`` does the same, but one malformed push
  closes it for good (its watcher ends on any parse error); here a bundle
  that cannot be parsed keeps the last good bundle of its trust domain and
  is reported once, a trust domain the agent stops sending is dropped (spec
  6.2.2: clients cease using redacted bundles), and a broken stream is
  reopened with a backoff capped at one second, like the X.509 stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.errors import PySpiffeError

from meshnode.errors import InvalidBundleError, InvalidSpiffeIdError, JwtSvidError
from meshnode.identity.rejects import Rejections, describe_error
from meshnode.identity.workload_client import CHANNEL_OPTIONS, WorkloadClient, path_of
from meshnode.jwtsvid.bundle import JwtBundle, JwtBundleSet, parse_jwks
from meshnode.spiffeid import SpiffeID, parse_trust_domain

__all__ = ["WorkloadApiJwtBundles", "WorkloadApiTokens"]

log = logging.getLogger("meshnode.jwt")

_HEADER = (("workload.spiffe.io", "true"),)
#: seconds a FetchJWTSVID call may take
FETCH_TIMEOUT = 5.0


class WorkloadApiTokens:
    """Fetches JWT-SVIDs for ``subject()`` (the node's SPIFFE ID) from the Workload API at ``address``."""

    def __init__(self, address: str, subject: Callable[[], SpiffeID | None]) -> None:
        self.address = address
        self.description = f"the Workload API at {address}"
        self._subject = subject
        self._client: WorkloadClient | None = None
        self._lock = threading.Lock()

    def fetch(self, audience: str) -> str:
        """A JWT-SVID for ``audience``; raises JwtSvidError saying why there is none."""
        from spiffe import SpiffeId

        with self._lock:
            try:
                if self._client is None:
                    self._client = WorkloadClient(self.address)
                subject = self._subject()
                wanted = SpiffeId(str(subject)) if subject is not None else None
                svid = self._client.fetch_jwt_svid({audience}, wanted, timeout=FETCH_TIMEOUT)
            except (PySpiffeError, grpc.RpcError, OSError, ValueError) as exc:
                reason = f"{self.description} gave no JWT-SVID for audience {audience!r}: {describe_error(exc)}"
                raise JwtSvidError(f"jwt: {reason}", reason=reason) from None
        return str(svid.token)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _fingerprint(bundle: JwtBundle) -> tuple[tuple[str, bytes], ...]:
    return tuple(sorted(
        (kid, key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        for kid, key in bundle.keys.items()
    ))


class WorkloadApiJwtBundles:
    """The JWT bundles the Workload API at ``address`` streams; :meth:`current` is the newest set."""

    def __init__(self, address: str, *, on_error: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.description = f"JWT bundles from the Workload API at {address}"
        self._target = "unix:" + path_of(address)
        self._rejections = Rejections(on_error)
        self._lock = threading.Lock()
        self._set = JwtBundleSet({})
        self._prints: dict[str, Any] = {}
        self._first = threading.Event()
        self._stop = threading.Event()
        self._stream: Any = None
        #: why no bundles came (yet): the last error of the stream
        self.problem = "no response from the Workload API yet"
        self._thread = threading.Thread(target=self._run, name="meshnode-jwt-bundles", daemon=True)
        self._thread.start()

    def current(self) -> JwtBundleSet:
        return self._set

    def wait_first(self, timeout: float) -> bool:
        """Wait until the first response was taken; False after ``timeout`` seconds."""
        return self._first.wait(timeout)

    def _run(self) -> None:
        backoff = 0.1
        with grpc.insecure_channel(self._target, options=CHANNEL_OPTIONS) as channel:
            stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
            while not self._stop.is_set():
                try:
                    stream = stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=_HEADER)
                    with self._lock:
                        self._stream = stream
                    if self._stop.is_set():
                        stream.cancel()
                        return
                    for response in stream:
                        self._take(response.bundles)
                        backoff = 0.1
                    reason = "the FetchJWTBundles stream ended"
                except grpc.RpcError as exc:
                    if self._stop.is_set():
                        return
                    reason = f"FetchJWTBundles failed: {exc.code().name}: {exc.details()}"
                except Exception as exc:  # a surprise must not end the stream for good
                    reason = f"FetchJWTBundles failed: {describe_error(exc)}"
                self.problem = reason
                self._rejections.reject(("stream", reason), f"jwt: {self.address}: {reason}; keeping the JWT "
                                        "bundles in use and reconnecting")
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 1.0)

    def _take(self, raw: Mapping[str, bytes]) -> None:
        """One response: every trust domain's bundle; runs on the stream's thread."""
        bundles: dict[str, JwtBundle] = {}
        for name, data in raw.items():
            try:
                td = str(parse_trust_domain(name))
            except InvalidSpiffeIdError as exc:
                self._rejections.reject(("name", name), f"jwt: {self.address} sent a JWT bundle under "
                                        f"{name[:80]!r}, which is not a trust domain ({exc.reason}); ignored")
                continue
            try:
                bundles[td] = parse_jwks(data, td)
            except InvalidBundleError as exc:
                kept = self._set.bundles.get(td)
                self._rejections.reject(("bundle", td, data), f"jwt: {self.address} sent a JWT bundle for '{td}' "
                                        f"that cannot be used: {exc.reason}; "
                                        + ("keeping the last good one" if kept else "its tokens are not accepted"))
                if kept is not None:
                    bundles[td] = kept
        prints = {td: _fingerprint(b) for td, b in bundles.items()}
        self.problem = ""
        if prints != self._prints:
            self._prints = prints
            self._set = JwtBundleSet(bundles, self._set.generation + 1)
            log.info("jwt: JWT bundles from %s for %s (generation %d)", self.address,
                     ", ".join(f"{td} ({len(b.keys)} keys)" for td, b in sorted(bundles.items())) or "no trust domain",
                     self._set.generation)
        self._first.set()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
