from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class SayRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: str | None = ...) -> None: ...

class SayReply(_message.Message):
    __slots__ = ("caller", "server", "text")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    text: str
    caller: str
    server: str
    def __init__(self, text: str | None = ..., caller: str | None = ..., server: str | None = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("route", "text")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    text: str
    route: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: str | None = ..., route: _Iterable[str] | None = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("caller", "node", "spiffe_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    node: str
    spiffe_id: str
    caller: str
    def __init__(self, node: str | None = ..., spiffe_id: str | None = ..., caller: str | None = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("hops",)
    HOPS_FIELD_NUMBER: _ClassVar[int]
    hops: _containers.RepeatedCompositeFieldContainer[Hop]
    def __init__(self, hops: _Iterable[Hop | _Mapping] | None = ...) -> None: ...
