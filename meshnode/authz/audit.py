"""Audit records: one JSON object per authorization decision.

Records go through :mod:`logging`, logger ``meshnode.audit``, at INFO; the
log message *is* the JSON object (the application decides where it goes,
meshnode never configures handlers). Fields::

    {"time": "2026-01-02T03:04:05.678901Z", "peer_id": "spiffe://td/a",
     "method": "/pkg.Svc/M", "decision": "allow|deny|unauthenticated",
     "rule": "name or null", "policy": "policy name", "policy_version": 3,
     "dry_run": false, "reason": "..."}

The record also carries the same fields as a dict (attribute
:data:`AUDIT_FIELDS`): with ``MESHNODE_LOG_FORMAT=json`` they are top-level
keys of the log line, next to the call's ``trace_id``.

In dry-run mode a call the policy denies still runs; its record says
``"decision": "deny", "dry_run": true``. With JWT-SVIDs (``[authz] jwt``)
records also carry ``"mtls_peer_id"`` (the TLS peer) and ``"jwt_subject"``
(the token's ``sub``, null without a token); ``peer_id`` is the principal. Which decisions are recorded is
an :class:`AuditCondition`; a policy file can ask for more (A59's
``audit_logging_options.audit_condition``), never for less.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
from collections.abc import Mapping

from meshnode.errors import PolicyError
from meshnode.telemetry.jsonlog import AUDIT_FIELDS

__all__ = ["AUDIT_FIELDS", "AUDIT_LOGGER", "AuditCondition", "Auditor"]

AUDIT_LOGGER = "meshnode.audit"

_A59_NAMES = {"NONE": "none", "ON_DENY": "on_deny", "ON_ALLOW": "on_allow", "ON_DENY_AND_ALLOW": "all"}


class AuditCondition(enum.Enum):
    """Which decisions get an audit record. Unauthenticated calls count as denials."""

    NONE = "none"
    ON_DENY = "on_deny"
    ON_ALLOW = "on_allow"
    ALL = "all"

    @classmethod
    def parse(cls, value: str | AuditCondition, where: str = "audit") -> AuditCondition:
        """Accept meshnode names (``on_deny``) and A59 names (``ON_DENY_AND_ALLOW``)."""
        if isinstance(value, AuditCondition):
            return value
        name = _A59_NAMES.get(value, value) if isinstance(value, str) else value
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(c.value for c in cls)
            raise PolicyError(reason=f"{where}: {value!r} is not an audit condition; use one of {choices}",
                              component="authz") from None

    def covers(self, allowed: bool) -> bool:
        if allowed:
            return self in (AuditCondition.ON_ALLOW, AuditCondition.ALL)
        return self in (AuditCondition.ON_DENY, AuditCondition.ALL)

    def union(self, other: AuditCondition | None) -> AuditCondition:
        if other is None:
            return self
        on_allow = self.covers(True) or other.covers(True)
        on_deny = self.covers(False) or other.covers(False)
        if on_allow and on_deny:
            return AuditCondition.ALL
        if on_allow:
            return AuditCondition.ON_ALLOW
        return AuditCondition.ON_DENY if on_deny else AuditCondition.NONE


class Auditor:
    """Writes audit records to the ``meshnode.audit`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(AUDIT_LOGGER)

    def record(
        self,
        *,
        peer_id: str | None,
        method: str,
        decision: str,
        rule: str | None,
        policy: str,
        policy_version: int,
        dry_run: bool,
        reason: str,
        extra: Mapping[str, str | None] | None = None,
    ) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        entry = {
            "time": now,
            "peer_id": peer_id,
            "method": method,
            "decision": decision,
            "rule": rule,
            "policy": policy,
            "policy_version": policy_version,
            "dry_run": dry_run,
            "reason": reason,
        }
        if extra:
            entry.update(extra)
        # The message is the JSON itself; %s keeps logging's lazy formatting contract. The same fields ride
        # along as a dict, so a JSON log formatter puts them at the top level of its line (telemetry.jsonlog).
        self._log.info(
            "%s", json.dumps(entry, separators=(",", ":"), ensure_ascii=False), extra={AUDIT_FIELDS: entry}
        )
