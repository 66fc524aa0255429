"""NodeService: the base class users subclass to write mesh services.

```python
import meshnode
from meshnode import NodeService, only
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc

class Greeter(NodeService, demo_pb2_grpc.EchoServicer):
    allow = ["spiffe://example.org/node/alpha", "spiffe://example.org/ns/ops/*"]

    @only("spiffe://example.org/node/alpha")           # narrows Say to alpha only
    async def Say(self, request, context):
        return demo_pb2.SayReply(text=request.text, caller=str(meshnode.peer_id()),
                                 server=str(self.node.spiffe_id))
```

* ``allow`` at class level: who may call every method of the service
  (exact IDs, ``spiffe://td`` for a whole trust domain, ``spiffe://td/p/*``
  for a path prefix on segment boundaries).
* ``@only(...)`` on a method narrows it: a caller needs both the class
  rule and the method rule.
* ``self.node`` is the running node, seen through :class:`NodeView` (its
  name, its SPIFFE ID, its peers): peers are reached with
  ``self.node.stub("beta", demo_pb2_grpc.EchoStub)``.
* Methods may be ``async def`` or plain ``def`` (run on a thread pool).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from meshnode.errors import ConfigError, ServeError
from meshnode.spiffeid import SpiffeID

__all__ = [
    "NodeService",
    "NodeView",
    "load_service_class",
    "load_service_classes",
    "make_services",
    "method_allow",
    "only",
]

T = TypeVar("T")

F = TypeVar("F", bound=Callable[..., Any])
_ALLOW_ATTR = "__meshnode_allow__"


class NodeView(Protocol):
    """What a service sees of the node that serves it (a :class:`~meshnode.node.Node` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def spiffe_id(self) -> SpiffeID: ...

    def channel(self, peer: str) -> Any: ...

    def stub(self, peer: str, stub_class: type[T]) -> T: ...


class NodeService:
    """Base class for services a node serves; combine with a generated servicer."""

    #: who may call every method of this service; () = the node-wide policy decides
    allow: ClassVar[Sequence[str]] = ()

    _node: NodeView | None = None

    @property
    def node(self) -> NodeView:
        if self._node is None:
            raise ServeError(
                f"service: {type(self).__name__}.node is set when the service is registered with a node; "
                "it is not available before Node.start() (or in a unit test: use meshnode.testing)"
            )
        return self._node

    def bind(self, node: NodeView) -> None:
        """Called by the node when it registers the service."""
        self._node = node


def only(*spiffe_ids: str) -> Callable[[F], F]:
    """Narrow one method to callers matching any of ``spiffe_ids`` (they must
    also pass the class-level ``allow``)."""
    if not spiffe_ids:
        raise _service("@only() needs at least one SPIFFE ID pattern")

    def mark(fn: F) -> F:
        setattr(fn, _ALLOW_ATTR, tuple(spiffe_ids))
        return fn

    return mark


def method_allow(service: object, method_name: str) -> tuple[str, ...] | None:
    fn = getattr(type(service), method_name, None)
    value = getattr(fn, _ALLOW_ATTR, None)
    return tuple(value) if value is not None else None


def _service(reason: str) -> ConfigError:
    """A service error: ``service: <reason>``, the reason kept as a field."""
    return ConfigError(reason=reason, component="service")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_service_class(spec: str) -> type[Any]:
    """``package.module:ClassName`` -> the class.

    The module is imported from the Python path, then from the current directory (appended
    to the path, so a local file never shadows an installed package), as ``python -m`` would.
    Whatever importing the module raises (ImportError, an error in the module's own code, a
    relative name) becomes one ConfigError line.
    """
    module_name, _, class_name = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _service(f"cannot import module {module_name!r} for {spec!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed while importing: one line, no traceback
        raise _service(
            f"importing module {module_name!r} for {spec!r} failed: {_one_line(exc)}"
        ) from None
    klass = getattr(module, class_name, None)
    if not isinstance(klass, type):
        raise _service(f"module {module_name!r} has no class {class_name!r} (from {spec!r})")
    return klass


def _in_config(exc: ConfigError, where: str, index: int) -> ConfigError:
    return ConfigError(f"config: {where}: 'node.services' item {index}: {exc.reason}", reason=exc.reason,
                       key="node.services", path=where)


def load_service_classes(specs: Sequence[str], where: str = "node.toml") -> list[type[Any]]:
    """The classes ``[node] services`` names; a ConfigError names ``where`` (the file), the key and the item."""
    classes = []
    for i, spec in enumerate(specs):
        try:
            classes.append(load_service_class(spec))
        except ConfigError as exc:
            raise _in_config(exc, where, i) from None
    return classes


def make_services(specs: Sequence[str], where: str = "node.toml") -> list[object]:
    """One instance of each class ``[node] services`` names, made without arguments."""
    services = []
    for i, klass in enumerate(load_service_classes(specs, where)):
        try:
            services.append(klass())
        except Exception as exc:  # needs arguments, or its constructor failed: a config error, in one line
            raise _in_config(
                ConfigError(
                    f"service: {specs[i]!r} could not be made with {klass.__name__}() (services are made "
                    f"without arguments): {_one_line(exc)}"
                ),
                where,
                i,
            ) from None
    return services
