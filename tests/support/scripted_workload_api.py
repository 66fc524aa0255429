"""A Workload API server on a unix socket that pushes exactly what a test hands it.

The dev agent only serves well-formed identities; to see what a node does
with a hostile or broken Workload API (malformed DER, a CA with a broken
extension), a test builds the ``X509SVIDResponse`` itself and pushes it.
A new ``FetchX509SVID`` stream starts with the latest response; every open
stream gets every response pushed after that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc


def x509_response(
    spiffe_id: str,
    chain: Sequence[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    bundle: Sequence[x509.Certificate],
) -> pb.X509SVIDResponse:
    """One X509SVIDResponse carrying ``chain`` (leaf first), its key and the trust bundle, as DER."""
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in chain)
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle_der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in bundle)
    svid = pb.X509SVID(spiffe_id=spiffe_id, x509_svid=der, x509_svid_key=key_der, bundle=bundle_der)
    return pb.X509SVIDResponse(svids=[svid])


def x509_svids_response(
    svids: Sequence[tuple[Sequence[x509.Certificate], CertificateIssuerPrivateKeyTypes, str]],
    bundle: Sequence[x509.Certificate],
) -> pb.X509SVIDResponse:
    """One X509SVIDResponse carrying several SVIDs in order: (chain, key, hint) each, with ``bundle``.

    The response's ``spiffe_id`` fields are those of the leaves (the ID meshnode matches is the leaf's).
    """
    messages = []
    for chain, key, hint in svids:
        single = x509_response("", chain, key, bundle).svids[0]
        uri = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        single.spiffe_id = uri.get_values_for_type(x509.UniformResourceIdentifier)[0]
        single.hint = hint
        messages.append(single)
    return pb.X509SVIDResponse(svids=messages)


class _Servicer(pb_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    def __init__(self, api: ScriptedWorkloadApi) -> None:
        self._api = api

    def FetchX509SVID(self, request: Any, context: Any) -> Iterator[pb.X509SVIDResponse]:
        with self._api.changed:
            sent = len(self._api.responses) - 1  # a new stream starts at the current state, as SPIRE's does
        while context.is_active():
            with self._api.changed:
                self._api.changed.wait_for(self._api.has_after(sent), timeout=0.5)
                if self._api.closed:
                    return
                pending = self._api.responses[sent:]
            for response in pending:
                sent += 1
                yield response


class ScriptedWorkloadApi:
    """``with ScriptedWorkloadApi(path, first) as api: api.push(next)``."""

    def __init__(self, path: Path, first: pb.X509SVIDResponse) -> None:
        self.path = path
        self.responses: list[pb.X509SVIDResponse] = [first]
        self.changed = threading.Condition()
        self.closed = False
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(f"unix:{path}")

    def has_after(self, sent: int) -> Callable[[], bool]:
        """A predicate for ``changed.wait_for``: closed, or more than ``sent`` responses pushed."""
        return lambda: self.closed or len(self.responses) > sent

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    def push(self, response: pb.X509SVIDResponse) -> None:
        """Send ``response`` on every open stream; streams opened later start with it."""
        with self.changed:
            self.responses.append(response)
            self.changed.notify_all()

    def __enter__(self) -> ScriptedWorkloadApi:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self._server.stop(0).wait()
