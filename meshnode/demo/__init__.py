"""The demo services: ``meshnode.demo:EchoService`` and ``meshnode.demo:RelayService``.

They are ordinary node services (see :mod:`meshnode.service`); any
node.toml can list them in ``[node] services``.
"""

from meshnode.demo.services import EchoService, RelayService

__all__ = ["EchoService", "RelayService"]
