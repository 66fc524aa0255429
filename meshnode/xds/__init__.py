"""The embedded xDS control plane behind ``verify = "spiffe-id"`` peer channels.

With ``ssl_channel_credentials`` a grpcio client verifies a server only by a
DNS name. gRPC's xDS security verifies the server's certificate against a
SAN matcher sent by an xDS control plane, with stock grpcio, so each node
runs a small one (:class:`XdsControlPlane`): an ADS server on a unix socket
in a private runtime directory, serving per peer a Listener and a Cluster
whose TLS config takes the node's certificate and the peer trust domain's
roots from ``file_watcher`` files and pins the peer's SPIFFE ID.

Modules: :mod:`~meshnode.xds.resources` (Listener/Cluster builders),
:mod:`~meshnode.xds.ads` (the ADS server), :mod:`~meshnode.xds.bootstrap`
(the process-wide bootstrap), :mod:`~meshnode.xds.files` (the runtime
directory), :mod:`~meshnode.xds.credentials` (fail-closed channel
credentials), :mod:`~meshnode.xds.rpc_errors` (meshnode's error wording),
:mod:`~meshnode.xds.a87` (does gRPC apply SPIFFE bundle maps? the probe).

Security notes
--------------
* The peer's SPIFFE ID is matched with an anchored, case-sensitive regex:
  gRPC's ``exact`` SAN matcher follows DNS rules (ignores case and a
  trailing dot, expands ``*.`` wildcards), and gRPC ignores
  ``match_typed_subject_alt_names`` altogether.
* No gRPC setting makes the client check the SAN *type*: a DNS SAN spelled
  like the expected SPIFFE ID passes as well as the URI SAN. Every CA the
  node trusts for a trust domain must refuse such DNS SANs; meshnode's own
  issuers do (:func:`meshnode.devagent.ca.validate_dns_name`), SPIRE
  accepts only DNS names for ``-dns``. A test pins gRPC's behaviour.
* Roots are scoped per trust domain: a peer is verified only with its own
  trust domain's bundle (one provider per trust domain; for nodes each reads
  a gRFC A87 bundle map of that trust domain alone, checked at start by
  :mod:`~meshnode.xds.a87`'s probe).
* Channel credentials fall back to TLS that verifies nothing, never to
  plaintext, should a Cluster ever come without TLS config.
* One process, one bootstrap: two nodes with spiffe-id peers need two
  processes; the second gets a :class:`~meshnode.errors.PeerError`.
"""

from meshnode.xds.ads import AdsServer, Nack
from meshnode.xds.bootstrap import REFRESH_INTERVAL_SECONDS, Bootstrap
from meshnode.xds.control_plane import XdsControlPlane
from meshnode.xds.credentials import channel_credentials
from meshnode.xds.resources import PeerSpec, PeerTarget
from meshnode.xds.rpc_errors import explain_rpc_error

__all__ = [
    "REFRESH_INTERVAL_SECONDS",
    "AdsServer",
    "Bootstrap",
    "Nack",
    "PeerSpec",
    "PeerTarget",
    "XdsControlPlane",
    "channel_credentials",
    "explain_rpc_error",
]
