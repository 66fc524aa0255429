"""The dev agent's listening sockets: one grpc.aio server per entry.

grpc cannot tell which listening socket a call arrived on, so each entry
gets its own server, bound in a private 0700 directory behind a
:class:`~meshnode.devagent.peercred.UidGate` on the public socket. The gate
knows each caller's uid: it enforces the connection bounds
(:mod:`meshnode.devagent.limits`) and, for an entry with ``uid``,
sends other callers to a PERMISSION_DENIED server for their uid. The gRPC
servers close connections that do not start HTTP/2 within
``handshake_timeout`` or carry no call for ``idle_timeout``.

Public sockets are made mode 0777, as SPIRE's agent socket is: anyone on
the host may connect, and the entry's ``uid`` decides who gets an identity.
:meth:`AgentSockets.close` removes exactly the sockets it bound. The private
directory names its owner process; :func:`remove_stale_private_dirs` (run at
agent start) removes the ones agents that were killed left behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from spiffe._proto import workload_pb2_grpc as pb_grpc

from meshnode.devagent.limits import ConnectionLedger, ConnectionLimits
from meshnode.devagent.peercred import PeerCredentials, UidGate, claim_socket_path
from meshnode.devagent.safe_dir import SOCKET_DIR, secure_dir
from meshnode.devagent.server import DenyHandler, WorkloadAPIServicer
from meshnode.errors import ClosedError, ConfigError, ServeError
from meshnode.private_dirs import make_private_dir, remove_stale

__all__ = ["AgentSockets", "remove_stale_private_dirs"]

_STOP_GRACE = 1.0  # seconds in-flight unary calls get at shutdown; streams have ended by then
_PRIVATE_BASE = Path("/tmp")  # short: socket paths are limited to 107 bytes
_PRIVATE_PREFIX = "meshnode-agent-"
_PRIVATE_NAMES = re.compile(r"(entry|deny)-[0-9]{1,10}\.sock")


def remove_stale_private_dirs() -> list[Path]:
    """Remove the private socket directories of agents that were killed (their owner process is dead)."""
    return remove_stale(_PRIVATE_PREFIX, _PRIVATE_BASE, lambda name: bool(_PRIVATE_NAMES.fullmatch(name)))


class AgentSockets:
    """Binds entries' sockets in ``socket_dir``; ``close()`` unbinds and removes them."""

    def __init__(self, socket_dir: Path, limits: ConnectionLimits | None = None) -> None:
        self.socket_dir = socket_dir
        self.limits = limits or ConnectionLimits()
        self.ledger = ConnectionLedger(self.limits)
        self._servers: list[grpc.aio.Server] = []
        self._gates: list[UidGate] = []
        self._deny: dict[int, Path] = {}  # caller uid -> its PERMISSION_DENIED socket
        self._deny_lock = asyncio.Lock()
        self._owned: dict[Path, int] = {}  # public socket -> inode we bound
        self._private_dir: Path | None = None
        self._closed = False

    def claim(self, paths: Sequence[Path]) -> None:
        """Check the directory is safe and writable and every path free (stale sockets removed), binding nothing."""
        secure_dir(self.socket_dir, SOCKET_DIR)  # no other user may be able to swap a socket in it
        if not os.access(self.socket_dir, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            raise ConfigError(
                f"agent: socket_dir {self.socket_dir} is not writable by uid {os.geteuid()}; "
                "fix its permissions or choose another socket_dir"
            )
        for path in paths:
            claim_socket_path(path)

    async def serve(self, public: Path, servicer: WorkloadAPIServicer, uid: int | None = None) -> None:
        """Serve ``servicer`` on ``public`` (through a gate); with ``uid``, only to callers running as that uid."""
        if self._closed:
            raise ClosedError("agent: sockets are closed")

        def add(server: grpc.aio.Server) -> None:
            pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

        private = self._private() / f"entry-{len(self._gates)}.sock"
        await self._grpc_server(private, add)
        gate = UidGate(public, uid, private, self._deny_socket, self.ledger)
        await gate.start()
        self._gates.append(gate)
        os.chmod(public, 0o777)
        self._owned[public] = os.lstat(public).st_ino

    async def close(self) -> None:
        """Stop every server and gate, remove the sockets this object bound; idempotent."""
        if self._closed:
            return
        self._closed = True
        for gate in self._gates:
            await gate.close()
        await asyncio.gather(*(server.stop(_STOP_GRACE) for server in self._servers))
        for path, inode in self._owned.items():
            try:
                if os.lstat(path).st_ino == inode:  # never remove a socket someone bound since
                    path.unlink()
            except FileNotFoundError:
                pass
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    def _private(self) -> Path:
        """A 0700 directory for the grpc sockets behind uid gates (short: socket paths max 107 bytes)."""
        if self._private_dir is None:
            try:
                self._private_dir = make_private_dir(_PRIVATE_PREFIX, _PRIVATE_BASE)
            except OSError as exc:
                raise ServeError(reason=f"cannot create a private socket directory in /tmp: {exc.strerror}",
                                 component="agent") from None
        return self._private_dir

    async def _grpc_server(self, path: Path, add: Callable[[grpc.aio.Server], None]) -> None:
        server = grpc.aio.server(options=self.limits.grpc_options())
        add(server)
        try:
            server.add_insecure_port(f"unix:{path}")
        except RuntimeError as exc:
            raise ServeError(reason=f"cannot bind {path}: {exc}", component="agent") from None
        await server.start()
        self._servers.append(server)

    async def _deny_socket(self, caller: PeerCredentials) -> Path:
        """The private socket answering PERMISSION_DENIED to ``caller.uid``, started on first use."""
        async with self._deny_lock:
            path = self._deny.get(caller.uid)
            if path is None:
                if self._closed:
                    raise ClosedError("agent: sockets are closed")
                path = self._private() / f"deny-{caller.uid}.sock"
                handler = DenyHandler(caller.uid)
                await self._grpc_server(path, lambda server: server.add_generic_rpc_handlers((handler,)))
                self._deny[caller.uid] = path
            return path
