"""A Workload API server on a unix socket that pushes whatever a test hands it.

The dev agent only ever serves what a correct agent would. Tests of what a
node does with a hostile or broken agent need one that pushes an SVID of
another trust domain, a key that does not match, a bundle without the own
trust domain: :class:`FakeWorkloadApi` streams ``FetchX509SVID`` responses
built by :func:`svid_response`, a new one on every :meth:`FakeWorkloadApi.push`.
It checks the ``workload.spiffe.io`` header like SPIRE, and ends open
streams with UNAVAILABLE when stopped (clients keep their SVID and retry).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc

from meshnode.identity.snapshot import IdentitySnapshot

__all__ = ["FakeWorkloadApi", "snapshot_response", "svid_response"]


def _der(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


def svid_response(
    spiffe_id: str,
    chain: Sequence[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    bundle: Sequence[x509.Certificate],
    federated: Mapping[str, Sequence[x509.Certificate]] | None = None,
) -> pb.X509SVIDResponse:
    """One X509SVIDResponse: ``bundle`` goes with the SVID, ``federated`` is keyed by trust domain name."""
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    svid = pb.X509SVID(spiffe_id=spiffe_id, x509_svid=_der(chain), x509_svid_key=key_der, bundle=_der(bundle))
    return pb.X509SVIDResponse(
        svids=[svid], federated_bundles={f"spiffe://{td}": _der(c) for td, c in (federated or {}).items()}
    )


def snapshot_response(snapshot: IdentitySnapshot) -> pb.X509SVIDResponse:
    """What an agent would send for ``snapshot``: its own bundle, the others as federated."""
    own = snapshot.trust_domain
    return svid_response(
        str(snapshot.spiffe_id), snapshot.chain, snapshot.private_key, snapshot.bundles[own],
        {td: certs for td, certs in snapshot.bundles.items() if td != own},
    )


class _Servicer(pb_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, owner: FakeWorkloadApi) -> None:
        self._owner = owner

    async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[pb.X509SVIDResponse]:
        if ("workload.spiffe.io", "true") not in tuple(context.invocation_metadata()):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        sent = 0
        while True:
            response, version = await self._owner._next(sent)
            if response is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "fake agent: stopping")
                return
            sent = version
            yield response


class FakeWorkloadApi:
    """``with FakeWorkloadApi(path, first_response) as api: ... api.push(other) ...``

    A grpc.aio server on its own event loop in a daemon thread (run like the
    dev agent's :class:`~meshnode.devagent.agent.DevAgentThread`), so it never
    shares a loop with the code under test.
    """

    def __init__(self, path: Path, first: pb.X509SVIDResponse) -> None:
        self.path = path
        self.address = f"unix://{path}"
        self._response = first
        self._version = 1
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fake-workload-api",
                                        daemon=True)

    def start(self) -> FakeWorkloadApi:
        self._thread.start()
        assert self._ready.wait(30), "the fake Workload API did not start"
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed, self._stop = asyncio.Event(), asyncio.Event()
        server = grpc.aio.server()
        pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix:{self.path}")
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await self._set(None)  # open streams end with UNAVAILABLE
        await server.stop(1.0)

    def push(self, response: pb.X509SVIDResponse) -> None:
        """Send ``response`` on every open stream (and to every new one)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._set(response), self._loop).result(30)

    async def _set(self, response: pb.X509SVIDResponse | None) -> None:
        if response is None:
            self._stopped = True
        else:
            self._response = response
            self._version += 1
        assert self._changed is not None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _next(self, sent: int) -> tuple[pb.X509SVIDResponse | None, int]:
        """The response after version ``sent``; None once stopping."""
        while not self._stopped and self._version <= sent:
            assert self._changed is not None
            await self._changed.wait()
        return (None, sent) if self._stopped else (self._response, self._version)

    def stop(self) -> None:
        """End open streams with UNAVAILABLE and stop serving; idempotent."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> FakeWorkloadApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
