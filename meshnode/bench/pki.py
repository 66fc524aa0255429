"""The benchmark's identities: one dev CA shared by every process.

The runner creates the CA in a state directory; each server and client
process loads it from there (:class:`~meshnode.devagent.ca.DevCA` with
``state_dir``) and issues its own SVID, so no key crosses a process
boundary. The rotation scenario does not use this CA: its processes get
their SVIDs from a dev Workload API agent.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import grpc

from meshnode.credentials import channel_credentials
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.spiffeid import dns_name_for
from meshnode.testing import issue_snapshot

__all__ = ["CLIENT_ID", "SERVER_ID", "SERVER_NAME", "TRUST_DOMAIN", "BenchPKI", "client_options"]

TRUST_DOMAIN = "example.org"
SERVER_ID = "spiffe://example.org/bench/server"
CLIENT_ID = "spiffe://example.org/bench/client"
#: the DNS SAN a grpcio client verifies (meshnode's ID -> DNS mapping)
SERVER_NAME = dns_name_for(SERVER_ID)

_SVID_TTL = dt.timedelta(hours=2)


class BenchPKI:
    """The shared dev CA (created in ``state_dir`` on first use) and SVIDs issued from it."""

    def __init__(self, state_dir: Path) -> None:
        self.ca = DevCA(TRUST_DOMAIN, state_dir=state_dir)
        self.ttl = _SVID_TTL

    def snapshot(self, spiffe_id: str) -> IdentitySnapshot:
        return issue_snapshot(self.ca, spiffe_id, ttl=_SVID_TTL)

    def static_server_credentials(self) -> grpc.ServerCredentials:
        """What a bare grpcio server would use: fixed ``ssl_server_credentials``, client certs required."""
        snapshot = self.snapshot(SERVER_ID)
        return grpc.ssl_server_credentials(
            [(snapshot.key_pem, snapshot.chain_pem)],
            root_certificates=snapshot.bundle_pem(TRUST_DOMAIN),
            require_client_auth=True,
        )

    def client_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.snapshot(CLIENT_ID), TRUST_DOMAIN)


def client_options() -> list[tuple[str, Any]]:
    """Channel options of a bare mTLS client: the server is checked by its DNS SAN."""
    return [("grpc.ssl_target_name_override", SERVER_NAME)]
