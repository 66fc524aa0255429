"""Authorization by the caller's verified SPIFFE ID.

The pieces, in the order a call meets them::

    TLS (gRPC verified the chain) -> Authorizer.check: caller identity
      (re-validated, federated chain check) -> Policy.decide (deny rules,
      then allow rules, else deny) -> span / metric / audit -> handler,
      which reads the caller with peer_id()

In a node (meshnode.boot and meshnode.node_policy do this)::

    source = policy_source(allow=cfg.allow, policy_file=cfg.policy, extra=[service_policy(services)])
    authorizer = Authorizer(source, trust=AcceptedTrust(identity_source, accepted), audit=cfg.audit,
                            dry_run=cfg.dry_run, own_policy=True)
    MeshServer(plan, gate=authorizer.check)         # handlers admitted once, at registration

On any grpc.aio server (the entry points normalise handlers for grpc.aio, see
meshnode.pipeline; a sync grpc.server can call ``authorizer.check(context, method)``
itself and abort with the verdict's code)::

    grpc.aio.server(interceptors=[otel_interceptor, authorizer.interceptor()])
    # or: add_EchoServicer_to_server(servicer, authorizer.registrar(server))

Inside a handler::

    from meshnode.authz import peer_id
    caller = peer_id()        # SpiffeID; NoPeerIdentityError outside an authorized call

With JWT-SVIDs on calls (``JwtAuthn``, see meshnode.authz.jwt), ``peer_id()`` is
the principal; ``peer_mtls_id()`` the TLS peer and ``peer_jwt()`` the validated token.
"""

from meshnode.authz.a43 import load_a43_file, parse_a43
from meshnode.authz.audit import AUDIT_LOGGER, AuditCondition
from meshnode.authz.authorizer import Authorizer, Verdict
from meshnode.authz.config import load_policy_file, policy_source
from meshnode.authz.context import Caller, NoPeerIdentityError, peer_id, peer_jwt, peer_mtls_id
from meshnode.authz.identity import AcceptedTrust, TrustInfo, TrustSnapshot
from meshnode.authz.jwt import JwtAuthn
from meshnode.authz.matchers import (
    AllOf,
    AnyOf,
    AnyPeer,
    ExactID,
    IdPattern,
    Not,
    PathPrefix,
    PeerMatcher,
    TrustDomain,
    parse_peer,
)
from meshnode.authz.policy import (
    Decision,
    Effect,
    Explanation,
    Policy,
    Request,
    Rule,
    allow,
    deny,
    merge_policies,
    policy_from_allowlist,
    restrict,
)
from meshnode.authz.source import ActivePolicy, PolicyFile, PolicySource, StaticPolicy
from meshnode.pipeline import AuthzInterceptor

__all__ = [
    "AUDIT_LOGGER",
    "AcceptedTrust",
    "ActivePolicy",
    "AllOf",
    "AnyOf",
    "AnyPeer",
    "AuditCondition",
    "Authorizer",
    "AuthzInterceptor",
    "Caller",
    "Decision",
    "Effect",
    "ExactID",
    "Explanation",
    "IdPattern",
    "JwtAuthn",
    "NoPeerIdentityError",
    "Not",
    "PathPrefix",
    "PeerMatcher",
    "Policy",
    "PolicyFile",
    "PolicySource",
    "Request",
    "Rule",
    "StaticPolicy",
    "TrustDomain",
    "TrustInfo",
    "TrustSnapshot",
    "Verdict",
    "allow",
    "deny",
    "load_a43_file",
    "load_policy_file",
    "merge_policies",
    "parse_a43",
    "parse_peer",
    "peer_id",
    "peer_jwt",
    "peer_mtls_id",
    "policy_from_allowlist",
    "policy_source",
    "restrict",
]
