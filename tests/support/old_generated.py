"""What stubs from an old grpcio-tools look like: the servicer is added through a generic handler
only (no add_registered_method_handlers), so its methods cannot be listed in advance."""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "old.v1.Greeter"


class OldGreeterServicer:
    def Hello(self, request: bytes, context: Any) -> bytes:
        raise NotImplementedError


def add_OldGreeterServicer_to_server(servicer: OldGreeterServicer, server: Any) -> None:
    handlers = {"Hello": grpc.unary_unary_rpc_method_handler(servicer.Hello)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
