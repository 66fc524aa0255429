from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SayRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class SayReply(_message.Message):
    __slots__ = ("text", "caller", "server")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    text: str
    caller: str
    server: str
    def __init__(self, text: _Optional[str] = ..., caller: _Optional[str] = ..., server: _Optional[str] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("text", "route")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    text: str
    route: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., route: _Optional[_Iterable[str]] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("node", "spiffe_id", "caller")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    node: str
    spiffe_id: str
    caller: str
    def __init__(self, node: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("hops",)
    HOPS_FIELD_NUMBER: _ClassVar[int]
    hops: _containers.RepeatedCompositeFieldContainer[Hop]
    def __init__(self, hops: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ...) -> None: ...
