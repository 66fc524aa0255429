"""The SPIFFE Workload API served by the dev agent, one servicer per entry.

The agent swaps its whole state (every entry's X509-SVID, the trust bundle,
federated bundles, the JWT bundle) as one immutable :class:`AgentState` in a
:class:`StateFeed`; each open stream sends the full state for its socket
whenever the part it carries changes, as the Workload API spec asks. A
socket serves every entry of its name: one X509-SVID each, in config order
(the first is the default), each with its hint; FetchJWTSVID without a
``spiffe_id`` returns one JWT-SVID per entry, as the spec asks.

Like SPIRE, every call must carry the ``workload.spiffe.io: true`` header
(else INVALID_ARGUMENT, "security header missing from request"). A caller
that a socket's uid gate turned away reaches a :class:`DenyHandler`, which
answers every method PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc

from meshnode.devagent.ca import DevCA, IssuedSVID
from meshnode.devagent.config import EntryConfig
from meshnode.errors import ConfigError, InvalidSpiffeIdError
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["HEADER_KEY", "AgentState", "DenyHandler", "ServedSVID", "StateFeed", "WorkloadAPIServicer"]

log = logging.getLogger(__name__)

HEADER_KEY = "workload.spiffe.io"
HEADER_VALUE = "true"
_M = TypeVar("_M", bound=Message)
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"  # grpcio ships no type hints: Any to mypy


@dataclass(frozen=True)
class ServedSVID:
    """One X509-SVID a socket hands out, with its hint (None: none)."""

    svid: IssuedSVID
    hint: str | None = None


@dataclass(frozen=True, eq=False)
class AgentState:
    """Everything the agent serves, at one generation."""

    generation: int
    trust_domain: str
    svids: Mapping[str, tuple[ServedSVID, ...]]  # by socket (entry name), in config order
    bundle: tuple[x509.Certificate, ...]
    federated: Mapping[str, tuple[x509.Certificate, ...]]
    jwks: bytes


class StateFeed:
    """Published :class:`AgentState` values in order, and a way to wait for the next (one event loop).

    Every stream gets every generation in order (unless it falls more than
    ``history`` behind): a CA rotation's "new CA in the bundle" state must
    reach a client before the state whose SVID the new CA signed.
    """

    def __init__(self, first: AgentState, history: int = 32) -> None:
        self._states: deque[AgentState] = deque([first], maxlen=history)
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def current(self) -> AgentState:
        return self._states[-1]

    def publish(self, state: AgentState) -> None:
        self._states.append(state)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def next(self, generation: int) -> AgentState | None:
        """The state after ``generation`` (the oldest kept if it fell behind); None once closed."""
        while not self._closed and self.current.generation <= generation:
            await self._changed.wait()
        if self._closed:
            return None
        return next(state for state in self._states if state.generation > generation)


def _der(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


def _td_key(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}"  # bundle maps are keyed by the trust domain's SPIFFE ID


def _federated(state: AgentState) -> dict[str, bytes]:
    return {_td_key(td): _der(certs) for td, certs in state.federated.items()}


def _x509_svid(served: ServedSVID, bundle: bytes) -> pb.X509SVID:
    svid = served.svid
    key = svid.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pb.X509SVID(spiffe_id=str(svid.spiffe_id), x509_svid=_der(svid.chain), x509_svid_key=key,
                       bundle=bundle, hint=served.hint or "")


def x509_svid_response(state: AgentState, socket: str) -> pb.X509SVIDResponse:
    """Every X509-SVID of the socket called ``socket``, in order, with the bundles."""
    bundle = _der(state.bundle)
    svids = [_x509_svid(served, bundle) for served in state.svids[socket]]
    return pb.X509SVIDResponse(svids=svids, federated_bundles=_federated(state))


def x509_bundles_response(state: AgentState) -> pb.X509BundlesResponse:
    bundles = {_td_key(state.trust_domain): _der(state.bundle), **_federated(state)}
    return pb.X509BundlesResponse(bundles=bundles)


def jwt_bundles_response(state: AgentState) -> pb.JWTBundlesResponse:
    return pb.JWTBundlesResponse(bundles={_td_key(state.trust_domain): state.jwks})


async def _abort(context: Context, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("unreachable: abort() raises")


async def check_header(context: Context) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get(HEADER_KEY) != HEADER_VALUE:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")


class WorkloadAPIServicer(pb_grpc.SpiffeWorkloadAPIServicer):
    """The Workload API for one socket: the identities of the entries of its name."""

    def __init__(
        self, feed: StateFeed, entries: Sequence[EntryConfig], ca: DevCA, jwt_ttl: dt.timedelta
    ) -> None:
        if not entries or len({e.name for e in entries}) != 1:
            raise ConfigError("agent: a socket serves the entries of exactly one name")
        self._feed = feed
        self._entries = tuple(entries)
        self._name = entries[0].name
        self._ca = ca
        self._jwt_ttl = jwt_ttl

    async def _stream(self, context: Context, build: Callable[[AgentState], _M]) -> AsyncIterator[_M]:
        await check_header(context)
        last = b""
        state: AgentState | None = self._feed.current
        while state is not None:
            message = build(state)
            wire = message.SerializeToString(deterministic=True)
            if wire != last:  # full state every time, but only when something in it changed
                last = wire
                yield message
            state = await self._feed.next(state.generation)
        await _abort(context, grpc.StatusCode.UNAVAILABLE, "agent: shutting down; reconnect when it is back")

    # grpc.aio wants the stream methods themselves to be async generator functions.
    async def FetchX509SVID(self, request: pb.X509SVIDRequest, context: Context) -> AsyncIterator[Any]:
        async for message in self._stream(context, lambda state: x509_svid_response(state, self._name)):
            yield message

    async def FetchX509Bundles(self, request: pb.X509BundlesRequest, context: Context) -> AsyncIterator[Any]:
        async for message in self._stream(context, x509_bundles_response):
            yield message

    async def FetchJWTBundles(self, request: pb.JWTBundlesRequest, context: Context) -> AsyncIterator[Any]:
        async for message in self._stream(context, jwt_bundles_response):
            yield message

    async def FetchJWTSVID(self, request: pb.JWTSVIDRequest, context: Context) -> pb.JWTSVIDResponse:
        await check_header(context)
        if not request.audience:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        entries = self._entries
        if request.spiffe_id:
            try:
                wanted = parse_spiffe_id(request.spiffe_id)
            except InvalidSpiffeIdError as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"agent: {exc}")
            entries = tuple(e for e in entries if e.spiffe_id == wanted)
            if not entries:
                await _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"agent: no identity issued for {wanted}")
        audience = list(request.audience)
        svids = []
        for entry in entries:  # no spiffe_id asked: one JWT-SVID per identity, as the spec says
            kid = self._ca.jwt_key_id
            token = self._ca.sign_jwt(entry.spiffe_id, audience, self._jwt_ttl)
            log.info("agent: issued JWT-SVID for %s (entry %s) audience %s, key %s, valid %d s",
                     entry.spiffe_id, entry.name, audience, kid, self._jwt_ttl.total_seconds())
            svids.append(pb.JWTSVID(spiffe_id=str(entry.spiffe_id), svid=token, hint=entry.hint or ""))
        return pb.JWTSVIDResponse(svids=svids)

    async def ValidateJWTSVID(
        self, request: pb.ValidateJWTSVIDRequest, context: Context
    ) -> pb.ValidateJWTSVIDResponse:
        await check_header(context)
        if not request.audience:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        try:
            spiffe_id, claims = self._validate(request.svid, request.audience)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"agent: the JWT-SVID is not valid: {exc}")
        struct = struct_pb2.Struct()
        struct.update(claims)
        return pb.ValidateJWTSVIDResponse(spiffe_id=spiffe_id, claims=struct)

    def _validate(self, token: str, audience: str) -> tuple[str, dict[str, Any]]:
        """Signature (this trust domain's JWT key), audience, expiry, subject; ValueError says why."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._ca.jwt_public_keys().get(kid) if isinstance(kid, str) else None
            if key is None:
                raise ValueError(f"signed by unknown key id {kid!r}")
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["ES256"], audience=audience,
                options={"require": ["sub", "aud", "exp"]},
            )
        except jwt.InvalidTokenError as exc:
            raise ValueError(str(exc) or type(exc).__name__) from None
        try:
            subject = parse_spiffe_id(str(claims["sub"]))
        except InvalidSpiffeIdError as exc:
            raise ValueError(f"subject: {exc}") from None
        if not subject.member_of(self._ca.trust_domain):
            raise ValueError(f"subject {subject} is not in trust domain '{self._ca.trust_domain}'")
        return str(subject), claims


class DenyHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers every call PERMISSION_DENIED: the socket's uid gate found no entry for the caller."""

    def __init__(self, uid: int) -> None:
        self._details = f"agent: no registration entry for caller uid {uid}"
        # A unary handler answers stream methods as well: the caller only ever sees the status.
        self._handler = grpc.unary_unary_rpc_method_handler(self._deny)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._handler

    async def _deny(self, request: bytes, context: Context) -> bytes:
        await check_header(context)
        await _abort(context, grpc.StatusCode.PERMISSION_DENIED, self._details)
