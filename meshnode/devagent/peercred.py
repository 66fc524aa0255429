"""Unix socket front doors for the dev agent: who is calling, and who may.

grpc does not tell a handler who connected, so every entry is served
through a :class:`UidGate`: an asyncio unix server that reads each
caller's ``SO_PEERCRED`` (pid, uid, gid, fixed when it connected) and
splices the connection to the entry's private grpc socket when the uid
matches (or the entry has no ``uid``), or to a socket that answers
PERMISSION_DENIED when it does not. Knowing the uid before any work is done
is also what bounds connections per uid
(:class:`~meshnode.devagent.limits.ConnectionLedger`).

:func:`claim_socket_path` makes a socket path free to bind without ever
stealing it: grpc and asyncio both unlink an existing socket file when they
bind, which would silently cut off a live agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from meshnode.devagent.limits import ConnectionLedger
from meshnode.errors import ConfigError, ServeError

__all__ = ["PeerCredentials", "UidGate", "claim_socket_path", "peer_credentials"]

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials the peer of a connected unix socket had when it connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free to bind: remove a stale socket of a dead agent, refuse a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"agent: {path} exists and is not a socket; remove it or choose another socket_dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("agent: removing stale socket %s (left by an agent that is gone)", path)
        path.unlink(missing_ok=True)
        return
    except TimeoutError:
        pass  # someone listens but does not accept: still live
    except OSError as exc:
        raise ServeError(reason=f"cannot check whether {path} is in use: {exc.strerror}", component="agent") from None
    finally:
        probe.close()
    raise ServeError(
        reason=f"another agent is already serving {path} (it accepts connections); "
        "stop it first, or give this agent another socket_dir", component="agent"
    )


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


class UidGate:
    """A public unix socket that admits one uid (or, with ``uid=None``, every uid) to ``allowed``
    and routes others elsewhere.

    ``denied(credentials)`` returns the socket a refused caller is spliced to
    (the agent's PERMISSION_DENIED server for that uid). With a ``ledger``, a
    connection over its limits is closed at once, before anything is opened
    for it.
    """

    def __init__(
        self,
        path: Path,
        uid: int | None,
        allowed: Path,
        denied: Callable[[PeerCredentials], Awaitable[Path]],
        ledger: ConnectionLedger | None = None,
    ) -> None:
        self.path = path
        self.uid = uid
        self._allowed = allowed
        self._denied = denied
        self._ledger = ledger
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        ticket = None
        try:
            creds = peer_credentials(writer.get_extra_info("socket"))
            if self._ledger is not None:
                ticket = self._ledger.admit(self.path.name, creds.uid)
                if ticket is None:
                    return  # over a limit: closed below, counted and summarised by the ledger
            if self.uid is None or creds.uid == self.uid:
                target = self._allowed
            else:
                self._log_denied(creds)
                target = await self._denied(creds)
            up_reader, up_writer = await asyncio.open_unix_connection(str(target))
            try:
                if self._server is not None:  # not closing
                    await self._splice(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        except OSError as exc:
            log.debug("agent: %s: connection ended: %s", self.path.name, exc)
        except Exception as exc:  # fail closed: the caller loses this connection, the gate keeps serving
            log.warning("agent: %s: dropped a connection: %s", self.path.name, exc)
        finally:
            writer.close()
            if ticket is not None and self._ledger is not None:
                self._ledger.release(ticket)
            self._handlers.discard(task)

    def _log_denied(self, creds: PeerCredentials) -> None:
        if self._ledger is not None:  # one summary line per interval, not one line per connection
            self._ledger.denied.add(f"uid {creds.uid} on {self.path.name}")
        else:
            log.info("agent: %s: caller pid %d uid %d is not uid %s: permission denied",
                     self.path.name, creds.pid, creds.uid, self.uid)

    async def _splice(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy bytes both ways until either side closes (or close() cancels the pumps)."""
        pumps = {asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))}
        self._pumps |= pumps
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps -= pumps

    async def close(self) -> None:
        """Stop accepting and cut every spliced connection; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Cancel the pumps, never the handler tasks: asyncio reports a cancelled handler as an error.
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*list(self._handlers), return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> UidGate:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
