"""Names meshnode puts on spans, span events, log records and metrics.

Everything meshnode adds lives under the ``meshnode.`` prefix; what
OpenTelemetry's RPC semantic conventions already name (``rpc.system``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``) is left to
opentelemetry-instrumentation-grpc and used as is.

Span attributes
===============

=============================== ========== ====================================================
name                            type       meaning
=============================== ========== ====================================================
meshnode.node.name              string     the node's configured name
meshnode.local.spiffe_id        string     this node's SPIFFE ID (server and client spans)
meshnode.peer.spiffe_id         string     server span: the caller's verified SPIFFE ID;
                                           client span: the ID the server must present (the
                                           handshake enforces it; grpcio shows clients no cert)
meshnode.peer.name              string     client span: the configured peer name
meshnode.peer.mtls_spiffe_id    string     server span, with ``[authz] jwt``: the mTLS peer (a proxy
                                           when one carries another workload's JWT-SVID)
meshnode.peer.jwt_subject       string     server span: the ``sub`` of the call's validated JWT-SVID
meshnode.authz.decision         string     ``allow``, ``deny`` or ``unauthenticated``
meshnode.authz.rule             string     the rule that decided (or the default)
meshnode.authz.reason           string     why, in one line for people
meshnode.authz.policy_version   string     the policy version that decided
meshnode.authz.dry_run          bool       the decision was logged, not enforced
=============================== ========== ====================================================

Identity and policy events
==========================

Span events (on the current span, when one is recording) and log records
(``meshnode.identity`` / ``meshnode.authz`` loggers) with these attributes.
They carry serial numbers and dates, never key material.

=============================== ========== ====================================================
meshnode.svid.serial            string     the X.509-SVID serial number, hex
meshnode.svid.not_after         string     the SVID's expiry, ISO 8601 UTC
meshnode.identity.generation    int        the snapshot generation
meshnode.bundle.trust_domains   string[]   trust domains whose bundles are held
meshnode.error                  string     what went wrong (loss, reload failure)
meshnode.policy.source          string     where a policy was loaded from
=============================== ========== ====================================================

Metrics (OpenTelemetry metrics API, meter ``meshnode``)
=======================================================

====================================== ================= =====================================
meshnode.authz.decisions               counter           by meshnode.authz.decision,
                                                         rpc.service, rpc.method
meshnode.identity.rotations            counter           SVID rotations taken in
meshnode.identity.seconds_to_expiry    observable gauge  seconds until the SVID expires, by
                                                         meshnode.local.spiffe_id
meshnode.identity.bundle_seconds_to_expiry  observable    seconds until a trust domain's earliest CA
                                       gauge             expires, by meshnode.local.spiffe_id and
                                                         meshnode.bundle.trust_domain
meshnode.identity.source_errors        counter           errors from the identity source
meshnode.identity.updates_refused      counter           identity updates the node refused
                                                         (another trust domain or SPIFFE ID),
                                                         by error.type
meshnode.authz.policy_reload_failures  counter           policy reloads refused
meshnode.server.handshake_failures     counter           TLS handshakes the node's server failed
                                                         (``meshnode run``), by error.type: the
                                                         OpenSSL reason (HTTP_REQUEST...)
meshnode.peer.endpoint_rejected        counter           peer endpoints whose identity gRPC
                                                         refused, once per endpoint and presented
                                                         identity, by meshnode.peer.name and
                                                         error.type (spiffe_id, dns_name, chain)
====================================== ================= =====================================

The RPC duration histograms (``rpc.server.call.duration``,
``rpc.client.call.duration``, by rpc.* and meshnode.peer.spiffe_id) are kept
by :mod:`meshnode.telemetry.rpcmetrics` and served by the node's Prometheus
endpoint (:mod:`meshnode.telemetry.prometheus`), which serves the counters
and gauges above too, under Prometheus names (``.`` -> ``_``, counters with
``_total``).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AUTHZ_DECISION",
    "AUTHZ_DECISIONS",
    "AUTHZ_DECISION_VALUES",
    "AUTHZ_DRY_RUN",
    "AUTHZ_POLICY_RELOAD_FAILURES",
    "AUTHZ_POLICY_VERSION",
    "AUTHZ_REASON",
    "AUTHZ_RULE",
    "BUNDLE_TRUST_DOMAIN",
    "BUNDLE_TRUST_DOMAINS",
    "ERROR",
    "IDENTITY_BUNDLE_SECONDS_TO_EXPIRY",
    "IDENTITY_GENERATION",
    "IDENTITY_ROTATIONS",
    "IDENTITY_SECONDS_TO_EXPIRY",
    "IDENTITY_SOURCE_ERRORS",
    "IDENTITY_UPDATES_REFUSED",
    "LOCAL_SPIFFE_ID",
    "NODE_NAME",
    "PEER_ENDPOINT_REJECTED",
    "PEER_JWT_SUBJECT",
    "PEER_MTLS_SPIFFE_ID",
    "PEER_NAME",
    "PEER_SPIFFE_ID",
    "POLICY_SOURCE",
    "PREFIX",
    "RPC_METHOD",
    "RPC_SERVICE",
    "RPC_SYSTEM",
    "SERVER_HANDSHAKE_FAILURES",
    "SVID_NOT_AFTER",
    "SVID_SERIAL",
]

PREFIX: Final = "meshnode."

# Span attributes.
NODE_NAME: Final = "meshnode.node.name"
LOCAL_SPIFFE_ID: Final = "meshnode.local.spiffe_id"
PEER_SPIFFE_ID: Final = "meshnode.peer.spiffe_id"
PEER_NAME: Final = "meshnode.peer.name"
PEER_MTLS_SPIFFE_ID: Final = "meshnode.peer.mtls_spiffe_id"
PEER_JWT_SUBJECT: Final = "meshnode.peer.jwt_subject"
AUTHZ_DECISION: Final = "meshnode.authz.decision"
AUTHZ_RULE: Final = "meshnode.authz.rule"
AUTHZ_REASON: Final = "meshnode.authz.reason"
AUTHZ_POLICY_VERSION: Final = "meshnode.authz.policy_version"
AUTHZ_DRY_RUN: Final = "meshnode.authz.dry_run"

#: The values :data:`AUTHZ_DECISION` takes.
AUTHZ_DECISION_VALUES: Final = ("allow", "deny", "unauthenticated")

# Event attributes.
SVID_SERIAL: Final = "meshnode.svid.serial"
SVID_NOT_AFTER: Final = "meshnode.svid.not_after"
IDENTITY_GENERATION: Final = "meshnode.identity.generation"
BUNDLE_TRUST_DOMAINS: Final = "meshnode.bundle.trust_domains"
BUNDLE_TRUST_DOMAIN: Final = "meshnode.bundle.trust_domain"
ERROR: Final = "meshnode.error"
POLICY_SOURCE: Final = "meshnode.policy.source"

# OpenTelemetry RPC semantic conventions, as opentelemetry-instrumentation-grpc
# writes them (rpc.method is the bare method name, rpc.service the full service).
RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"

# Metric names.
AUTHZ_DECISIONS: Final = "meshnode.authz.decisions"
AUTHZ_POLICY_RELOAD_FAILURES: Final = "meshnode.authz.policy_reload_failures"
IDENTITY_ROTATIONS: Final = "meshnode.identity.rotations"
IDENTITY_SECONDS_TO_EXPIRY: Final = "meshnode.identity.seconds_to_expiry"
IDENTITY_BUNDLE_SECONDS_TO_EXPIRY: Final = "meshnode.identity.bundle_seconds_to_expiry"
IDENTITY_SOURCE_ERRORS: Final = "meshnode.identity.source_errors"
SERVER_HANDSHAKE_FAILURES: Final = "meshnode.server.handshake_failures"
IDENTITY_UPDATES_REFUSED: Final = "meshnode.identity.updates_refused"
PEER_ENDPOINT_REJECTED: Final = "meshnode.peer.endpoint_rejected"
