"""Peer channels: identity-bound, swapped on rotation without failing a call.

``PeerChannel`` looks like a ``grpc.aio.Channel`` to generated stubs. Under
it sits one real channel per *generation* of credentials:

* ``dns`` mode: ``ssl_channel_credentials`` with the node's SVID, roots of
  the peer's trust domain only, and the server name pinned (grpcio checks
  servers by DNS SAN only). Channel credentials are fixed for a channel's
  life, so when the SVID or the peer's bundle changes, a new channel is
  built, warmed (connected and handshaken) and swapped in; the old one is
  closed when its last in-flight call or stream ends, or when its
  certificate expires, whichever comes first.
* ``spiffe-id`` mode: one ``xds:///peer`` channel for good; gRPC's xDS
  security reads rotated files itself (see :mod:`meshnode.xds`).

Stubs made once keep working across swaps: each multicallable looks up the
current generation per call (one attribute read). A call that gives no
deadline gets the peer's ``timeout`` when one is configured. Failed calls whose
details name a TLS identity problem are re-raised with an explanation that
says what to fix. With RPC metrics on, the same wrapper adds each call's
duration and status code to ``rpc.client.call.duration`` when the caller
sees its end (the awaited response, the end of the stream, or its error):
no interceptor.

Per-call credentials (``call_auth``, ``[peers.NAME] jwt = true``): every
call gets the metadata pair the callable returns (``authorization: Bearer
<JWT-SVID>``, from a :class:`~meshnode.jwtsvid.tokens.TokenSlot`: no wait,
no I/O), unless the call's own metadata already has an ``authorization``
entry (a proxy forwarding its caller's token). When it returns a reason
instead, the call is not sent: it fails at once with UNAUTHENTICATED and
that reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import grpc

from meshnode.errors import ClosedError
from meshnode.identity.snapshot import IdentitySnapshot, utcnow
from meshnode.telemetry.rpcmetrics import CallSeries

__all__ = ["CallAuth", "ChannelPlan", "PeerChannel"]

log = logging.getLogger("meshnode.channel")

Explain = Callable[[grpc.aio.AioRpcError], "str | None"]
#: per-call credentials: the metadata pair to add, or why the call must not be sent
CallAuth = Callable[[], "tuple[str, str] | str"]

_OK, _CANCELLED = 0, 1  # grpc.StatusCode numbers

#: channel.close() tasks still running (held so they are not garbage-collected mid-way)
_CLOSING: set[asyncio.Future[Any]] = set()


@dataclass(frozen=True)
class ChannelPlan:
    """How to build one generation's channel from an identity snapshot."""

    key: str  # generations with the same key share a channel
    target: str
    credentials: grpc.ChannelCredentials
    options: tuple[tuple[str, Any], ...]
    not_after: dt.datetime | None  # when this generation's client certificate expires


class _Generation:
    __slots__ = ("callables", "channel", "closing", "inflight", "key", "not_after", "number", "retired")

    def __init__(self, number: int, plan: ChannelPlan, interceptors: Sequence[Any]) -> None:
        self.number = number
        self.key = plan.key
        self.not_after = plan.not_after
        # a pool of its own: a new generation never reuses an old generation's connection (and its certificate)
        options = [("grpc.use_local_subchannel_pool", 1), *plan.options]
        self.channel = grpc.aio.secure_channel(
            plan.target, plan.credentials, options=options, interceptors=list(interceptors) or None
        )
        self.inflight = 0
        self.retired = False
        self.closing = False
        self.callables: dict[tuple[Any, ...], Any] = {}

    def callable(self, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> Any:
        key = (kind, method, ser, deser)
        found = self.callables.get(key)
        if found is None:
            factory = getattr(self.channel, kind)
            found = factory(method, request_serializer=ser, response_deserializer=deser, _registered_method=registered)
            self.callables[key] = found
        return found

    def done(self, _call: Any) -> None:
        self.inflight -= 1
        if self.retired and self.inflight <= 0:
            self.close()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            task = asyncio.ensure_future(self.channel.close())
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)


class _TranslatedCall:
    """Wraps a call so a TLS identity failure carries meshnode's explanation, and (with a
    ``series``) adds the call's duration and status code to the client RPC metrics once it ends."""

    __slots__ = ("_call", "_explain", "_series", "_started")

    def __init__(self, call: Any, explain: Explain, series: CallSeries | None = None) -> None:
        self._call = call
        self._explain = explain
        self._series = series
        self._started = perf_counter() if series is not None else 0.0

    def _ended(self, code: int) -> None:
        series, self._series = self._series, None  # once per call
        if series is not None:
            series.record(code, perf_counter() - self._started)

    def _translate(self, err: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        self._ended(err.code().value[0])
        better = self._explain(err)
        if better is None:
            return err
        return grpc.aio.AioRpcError(
            err.code(), err.initial_metadata(), err.trailing_metadata(), details=better,
            debug_error_string=err.debug_error_string(),
        )

    def __await__(self) -> Any:
        try:
            result = yield from self._call.__await__()
        except grpc.aio.AioRpcError as err:
            raise self._translate(err) from None
        except asyncio.CancelledError:
            self._ended(_CANCELLED)
            raise
        self._ended(_OK)
        return result

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for item in self._call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise self._translate(err) from None
        except (asyncio.CancelledError, GeneratorExit):
            self._ended(_CANCELLED)
            raise
        self._ended(_OK)

    async def read(self) -> Any:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise self._translate(err) from None
        if message is grpc.aio.EOF:
            self._ended(_OK)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _MultiCallable:
    __slots__ = ("_deser", "_gen", "_kind", "_method", "_owner", "_real", "_registered", "_ser", "_series")

    def __init__(self, owner: PeerChannel, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._ser = ser
        self._deser = deser
        self._registered = registered
        self._gen: _Generation | None = None
        self._real: Any = None
        self._series = owner.series(method)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        gen = self._owner._active
        if gen is None:
            raise ClosedError(f"channel: the channel to peer '{self._owner.peer_name}' is closed")
        auth = self._owner._call_auth
        if auth is not None:
            header = auth()
            if isinstance(header, str):  # no usable credential: the call is never sent without it
                return _RefusedCall(grpc.StatusCode.UNAUTHENTICATED,
                                    f"meshnode: call to peer '{self._owner.peer_name}' not sent: {header}")
            args, kwargs = _with_header(args, kwargs, header)
        if gen is not self._gen:
            self._real = gen.callable(self._kind, self._method, self._ser, self._deser, self._registered)
            self._gen = gen
        timeout = self._owner.timeout
        if timeout is not None and len(args) < 2 and kwargs.get("timeout") is None:
            kwargs["timeout"] = timeout  # the peer's deadline for calls that give none
        call = self._real(*args, **kwargs)
        gen.inflight += 1
        call.add_done_callback(gen.done)
        return _TranslatedCall(call, self._owner.explain, self._series)


def _merged(metadata: Any, header: tuple[str, str]) -> Any:
    if metadata is None:
        return (header,)
    items = tuple(metadata)
    if any(key == header[0] for key, _ in items):
        return metadata  # the caller set its own (a proxy forwarding a token): sent as given
    return (*items, header)


def _with_header(args: tuple[Any, ...], kwargs: dict[str, Any], header: tuple[str, str]) -> tuple[Any, Any]:
    """The call's arguments with ``header`` added to its metadata (keyword, or third positional of a stream)."""
    if len(args) > 2:  # stream-request calls take (request_iterator, timeout, metadata, ...) positionally
        return (*args[:2], _merged(args[2], header), *args[3:]), kwargs
    return args, {**kwargs, "metadata": _merged(kwargs.get("metadata"), header)}


class _RefusedCall:
    """A call that was never sent: awaiting, reading or iterating it raises the refusal."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    def __await__(self) -> Any:
        raise self._error
        yield  # a generator: awaitable

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        raise self._error
        yield  # an async generator

    async def read(self) -> Any:
        raise self._error

    async def write(self, request: Any) -> None:
        raise self._error

    async def done_writing(self) -> None:
        return None

    async def wait_for_connection(self) -> None:
        raise self._error

    async def code(self) -> grpc.StatusCode:
        return self._error.code()

    async def details(self) -> str:
        return str(self._error.details())

    async def initial_metadata(self) -> Any:
        return self._error.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)


class PeerChannel:
    """A channel to one configured peer that survives identity rotation.

    ``plan(snapshot)`` returns the :class:`ChannelPlan` for a snapshot;
    call :meth:`update` with every new snapshot (from any thread), and
    when what the plan depends on changed (the peer's endpoints): a plan
    with a new key swaps the channel. ``call_auth``: per-call credentials
    (see the module docstring). ``series(method)``: the client RPC metrics
    series of a method (None: no metrics), resolved once per multicallable.
    """

    def __init__(
        self,
        peer_name: str,
        snapshot: IdentitySnapshot,
        plan: Callable[[IdentitySnapshot], ChannelPlan],
        *,
        interceptors: Sequence[Any] = (),
        explain: Explain | None = None,
        warm_timeout: float = 3.0,
        call_auth: CallAuth | None = None,
        series: Callable[[str], CallSeries] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.peer_name = peer_name
        self._call_auth = call_auth
        self._series = series
        #: The deadline (seconds) of calls that give none; None: no deadline.
        self.timeout = timeout
        self._plan = plan
        self._interceptors = tuple(interceptors)
        self._explain = explain
        self._warm_timeout = warm_timeout
        self._numbers = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._active: _Generation | None = _Generation(next(self._numbers), plan(snapshot), self._interceptors)
        self._latest = self._active.number
        self._pending_key: str | None = None
        self._old: list[_Generation] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self.swaps = 0

    # -- grpc.aio.Channel surface used by stubs ---------------------------

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> Any:
        return _MultiCallable(self, "unary_unary", method, request_serializer, response_deserializer,
                              _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _MultiCallable(self, "unary_stream", method, request_serializer, response_deserializer,
                              _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _MultiCallable(self, "stream_unary", method, request_serializer, response_deserializer,
                              _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> Any:
        return _MultiCallable(self, "stream_stream", method, request_serializer, response_deserializer,
                              _registered_method)

    async def channel_ready(self) -> None:
        gen = self._require()
        await gen.channel.channel_ready()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._require().channel.get_state(try_to_connect)

    @property
    def generation(self) -> int:
        """Which channel generation new calls use (grows on every swap)."""
        return self._require().number

    def explain(self, err: grpc.aio.AioRpcError) -> str | None:
        if self._explain is None:
            return None
        try:
            return self._explain(err)
        except Exception:  # an explanation must never hide the real error
            log.exception("channel: could not explain an error from peer '%s'", self.peer_name)
            return None

    def series(self, method: str) -> CallSeries | None:
        """Where calls of ``method`` record their duration and status (None: RPC metrics are off)."""
        return self._series(method) if self._series is not None else None

    def _require(self) -> _Generation:
        if self._active is None:
            raise ClosedError(f"channel: the channel to peer '{self.peer_name}' is closed")
        return self._active

    # -- rotation ---------------------------------------------------------

    def update(self, snapshot: IdentitySnapshot) -> None:
        """Take a new identity snapshot; thread-safe, returns at once."""
        self._loop.call_soon_threadsafe(self._rebuild, snapshot)

    def _rebuild(self, snapshot: IdentitySnapshot) -> None:
        active = self._active
        if active is None:
            return
        try:
            plan = self._plan(snapshot)
        except Exception as exc:
            log.warning("channel: keeping the current channel to '%s': %s", self.peer_name, exc)
            return
        if plan.key in (active.key, self._pending_key):
            return
        self._pending_key = plan.key
        number = next(self._numbers)
        self._latest = number
        task = asyncio.ensure_future(self._build_and_swap(number, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _build_and_swap(self, number: int, plan: ChannelPlan) -> None:
        if self._active is None or number != self._latest:
            return  # closed meanwhile, or a newer plan superseded this one
        gen = _Generation(number, plan, self._interceptors)
        try:
            await asyncio.wait_for(gen.channel.channel_ready(), self._warm_timeout)
        except (TimeoutError, grpc.aio.UsageError):
            log.debug("channel: '%s' did not become ready in %.1fs; swapping anyway", self.peer_name,
                      self._warm_timeout)
        if self._active is None or gen.number != self._latest:
            gen.close()  # closed meanwhile, or a newer generation superseded this one
            log.debug("channel: '%s' generation %d dropped before use (superseded or closed)", self.peer_name,
                      gen.number)
            return
        old, self._active = self._active, gen
        self._pending_key = None
        self.swaps += 1
        log.debug("channel: '%s' now on generation %d", self.peer_name, gen.number)
        self._retire(old)

    def _retire(self, gen: _Generation) -> None:
        gen.retired = True
        if gen.inflight <= 0:
            gen.close()
            return
        self._old.append(gen)
        if gen.not_after is not None:
            delay = max((gen.not_after - utcnow()).total_seconds(), 0.0)
            self._loop.call_later(delay, gen.close)
        self._old = [g for g in self._old if not g.closing]

    # -- lifecycle --------------------------------------------------------

    async def close(self, grace: float | None = None) -> None:
        """Close every generation; in-flight calls get ``grace`` seconds."""
        active, self._active = self._active, None
        for task in list(self._tasks):
            task.cancel()
        gens = [g for g in [active, *self._old] if g is not None]
        self._old = []
        await asyncio.gather(*(g.channel.close(grace) for g in gens), return_exceptions=True)

    async def __aenter__(self) -> PeerChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
