"""An admitted server stream costs nothing per message: grpc.aio iterates the handler's own generator.

grpc.aio drives a streaming behaviour as an async generator only when
``inspect.isasyncgenfunction`` says so; the pipeline's gate is a plain
callable shaped like one, so it decides the call and returns the handler's
generator itself instead of re-yielding every message through a wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshnode.pipeline import admit


class _Admitted:
    code = None
    details = ""
    series = None

    def __init__(self) -> None:
        self.entered = 0

    def enter(self) -> None:
        self.entered += 1


class _Refused(_Admitted):
    code = grpc.StatusCode.PERMISSION_DENIED
    details = "authz: no"


class _Context:
    def __init__(self) -> None:
        self.status: tuple[Any, str] | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = (code, self.status[1] if self.status else "")

    def set_details(self, details: str) -> None:
        self.status = (self.status[0] if self.status else None, details)


def _stream_handler() -> grpc.RpcMethodHandler:
    async def words(request: str, context: Any) -> AsyncIterator[str]:
        for word in request.split():
            yield word

    return grpc.unary_stream_rpc_method_handler(words)


async def test_an_admitted_stream_is_the_handlers_own_generator() -> None:
    handler = _stream_handler()
    admission = _Admitted()
    prepared = admit(lambda context, method: admission, "/pkg.Svc/Words", handler)
    behaviour = prepared.unary_stream
    assert inspect.isasyncgenfunction(behaviour) and not inspect.iscoroutinefunction(behaviour)
    responses = behaviour("a b c", _Context())
    assert inspect.isasyncgen(responses) and responses.ag_code is handler.unary_stream.__code__
    assert [word async for word in responses] == ["a", "b", "c"]
    assert admission.entered == 1


async def test_a_refused_stream_sends_nothing_and_sets_its_status() -> None:
    handler = _stream_handler()
    context = _Context()
    prepared = admit(lambda context, method: _Refused(), "/pkg.Svc/Words", handler)
    assert [word async for word in prepared.unary_stream("a b c", context)] == []
    assert context.status == (grpc.StatusCode.PERMISSION_DENIED, "authz: no")


@pytest.mark.parametrize("refused", [False, True])
async def test_the_gate_runs_when_grpc_calls_the_behaviour_not_before(refused: bool) -> None:
    handler = _stream_handler()
    calls: list[str] = []

    def gate(context: Any, method: str) -> _Admitted:
        calls.append(method)
        return _Refused() if refused else _Admitted()

    prepared = admit(gate, "/pkg.Svc/Words", handler)
    assert calls == []
    prepared.unary_stream("a", _Context())
    assert calls == ["/pkg.Svc/Words"]
