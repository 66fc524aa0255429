"""meshnode's wording for failed calls on ``xds:///`` peer channels.

gRPC reports every TLS failure of a peer as UNAVAILABLE with a details
string. The ones a person can act on are recognised here and reworded to
name the peer, its address and the identity meshnode expected:

* ``SANs from certificate did not match SANs from xDS control plane``: the
  peer's certificate chains to its trust domain's bundle but is not for the
  expected SPIFFE ID. gRPC does not report the ID it saw;
* ``CERTIFICATE_VERIFY_FAILED``: the certificate does not chain to the
  bundle of the peer's trust domain (another trust domain's CA, expired,
  or a new CA whose bundle has not reached this node);
* ``Failed to create XdsClient``: gRPC refused the bootstrap;
* ``Failed to create security handshaker``: gRPC refused the roots (a bundle
  map it does not take);
* a missing Listener/Cluster: the control plane does not know the peer;
* ``invalid resource``: gRPC refused (NACKed) what the control plane sent.

The original details stay at the end, in brackets.
"""

from __future__ import annotations

import grpc

from meshnode.xds.resources import PeerTarget

__all__ = ["SAN_MISMATCH", "explain_details", "explain_rpc_error"]

#: gRPC's text when the peer certificate's SANs miss the SAN matcher.
SAN_MISMATCH = "SANs from certificate did not match SANs from xDS control plane"


def explain_details(
    name: str, peer: PeerTarget | None, details: str, *, no_bundle: bool = False
) -> str | None:
    """meshnode's explanation of an UNAVAILABLE ``details`` string, or None.

    ``peer`` is None for a peer the control plane no longer serves.
    """
    lowered = details.lower()
    if peer is None:
        if "does not exist" in lowered:
            return (
                f"meshnode: peer '{name}' is no longer configured, so its channel has nothing to "
                f"connect to; add it back to [peers] or stop calling it. [{details}]"
            )
        return None
    where = f"peer '{name}' ({peer.address})"
    td = peer.trust_domain
    if SAN_MISMATCH.lower() in lowered:
        return (
            f"meshnode: {where} presented a certificate of trust domain '{td}' that is not for "
            f"{peer.spiffe_id} (gRPC does not report the SPIFFE ID it presented). Check which workload "
            f"listens on {peer.address}, or fix spiffe_id in [peers.{name}]. [{details}]"
        )
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        if no_bundle:
            cause = f"this node has no trust bundle for '{td}' (configure federation with it)"
        elif "expired" in lowered:
            cause = "the certificate has expired"
        else:
            cause = (
                "its CA is not in the bundle: a certificate of another trust domain, or a new CA whose "
                "bundle has not reached this node yet"
            )
        return (
            f"meshnode: {where} presented a certificate that the bundle of trust domain '{td}' does not "
            f"verify for {peer.spiffe_id}: {cause}. [{details}]"
        )
    if "failed to create security handshaker" in lowered:
        return (
            f"meshnode: gRPC could not set up TLS for {where}: it refused the roots of trust domain '{td}' "
            f"(a SPIFFE bundle map with a key it does not take?). [{details}]"
        )
    if "failed to create xdsclient" in lowered:
        return f"meshnode: gRPC refused meshnode's xDS bootstrap, so {where} cannot be reached. [{details}]"
    if "does not exist" in lowered and ("lds" in lowered or "cds" in lowered or "resource" in lowered):
        return (
            f"meshnode: the node's xDS control plane has no configuration for {where}; is it still "
            f"in [peers]? [{details}]"
        )
    if "invalid resource" in lowered:
        return (
            f"meshnode: gRPC refused the xDS configuration meshnode made for {where} (a meshnode bug or "
            f"an unsupported gRPC version; the node log has the NACK). [{details}]"
        )
    return None


def explain_rpc_error(
    name: str, peer: PeerTarget | None, err: grpc.aio.AioRpcError, *, no_bundle: bool = False
) -> str | None:
    """meshnode's explanation for a failed call to ``peer`` (None: leave the error as it is)."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    return explain_details(name, peer, err.details() or "", no_bundle=no_bundle)
