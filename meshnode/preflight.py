"""What must hold before a node serves: obtaining the identity, and the
production checks.

``production`` refuses to start unless every check passes, before any port
is opened. ``staging`` starts but logs each failing check as a warning.
``development`` falls back to an in-process dev identity when no agent
answers, and says so loudly; it never falls back to plaintext.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from meshnode.config.node import DEFAULT_DEV_TRUST_DOMAIN, NodeConfig
from meshnode.devagent.source import DevSource
from meshnode.errors import (
    ConfigError,
    IdentityError,
    IdentityUnavailableError,
    InvalidIdentityError,
    MeshnodeError,
)
from meshnode.identity.federation import FederatedSource
from meshnode.identity.files import FileSource, SvidFiles
from meshnode.identity.guard import IdentityRules
from meshnode.identity.snapshot import IdentitySnapshot, utcnow
from meshnode.identity.source import IdentitySource
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["Check", "identity_checks", "identity_rules", "missing_bundles", "open_identity", "refusal", "static_checks"]

log = logging.getLogger("meshnode.preflight")


@dataclass(frozen=True)
class Check:
    """One boot requirement and whether it holds.

    ``required``: ``"production"`` checks stop a production node (staging logs
    them); ``"always"`` checks stop a node in every mode. ``error`` is the
    class raised when the check stops a node (its ``exit_code`` is the
    process's); ``message``, when set, is that error's text; ``raised``, when
    set, is the error itself (raised as it is, with its fields).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    error: type[MeshnodeError] = ConfigError
    required: Literal["always", "production"] = "production"
    message: str = ""
    raised: MeshnodeError | None = None

    def exception(self, checks: Sequence[Check] = ()) -> MeshnodeError:
        """The error a node stops with when this check fails (``checks``: the others, to name them)."""
        if self.raised is not None:
            return self.raised
        if self.message:
            return self.error(self.message)
        others = [c.name for c in checks if not c.ok and c is not self]
        also = "; also failing: " + ", ".join(others) if others else ""
        return self.error(f"preflight: production check failed: {self.name} ({self.detail}). Fix: {self.fix}{also}")


def refusal(checks: Sequence[Check], mode: str) -> Check | None:
    """The first failed check that stops a node in ``mode``, or None."""
    for c in checks:
        if not c.ok and (c.required == "always" or mode == "production"):
            return c
    return None


def dev_spiffe_id(config: NodeConfig) -> str:
    if config.identity.spiffe_id is not None:
        return str(config.identity.spiffe_id)
    td = config.identity.trust_domain or DEFAULT_DEV_TRUST_DOMAIN
    return f"spiffe://{td}/node/{config.name}"


def _dev_source(config: NodeConfig) -> DevSource:
    idc = config.identity
    return DevSource(parse_spiffe_id(dev_spiffe_id(config)), state_dir=idc.state_dir, svid_ttl=idc.svid_ttl)


def open_identity(
    config: NodeConfig, *, on_error: Callable[[str], None] | None = None
) -> tuple[IdentitySource, list[str]]:
    """Open the configured identity source; returns it and notes for the operator.

    In production every failure raises (IdentityError: exit 3; ConfigError: 2).
    With ``[identity] federated_bundles_dir`` the source is wrapped in a
    :class:`FederatedSource`, whatever its kind.
    """
    source, notes = _open_source(config, on_error)
    directory = config.identity.federated_bundles_dir
    if directory is None:
        return source, notes
    return FederatedSource(source, directory, on_error=on_error), notes


def _open_source(
    config: NodeConfig, on_error: Callable[[str], None] | None
) -> tuple[IdentitySource, list[str]]:
    idc = config.identity
    if idc.source == "dev":
        if config.mode == "production":
            raise ConfigError(
                "preflight: [identity] source = \"dev\" is refused in production: the dev CA is not a "
                "trust anchor anyone should rely on; use source = \"workload-api\" (SPIRE) or \"files\""
            )
        return _dev_source(config), ["identity from the in-process dev CA (source = \"dev\")"]
    if idc.source == "files":
        assert idc.cert is not None and idc.key is not None and idc.bundle is not None
        files = SvidFiles(idc.cert, idc.key, idc.bundle)
        return FileSource(files, on_error=on_error), []
    try:
        source = WorkloadApiSource(
            idc.socket, timeout=idc.timeout, on_error=on_error, spiffe_id=idc.spiffe_id, hint=idc.hint
        )
        return source, []
    except IdentityError as exc:
        if config.mode == "production":
            raise
        note = (
            f"NO WORKLOAD API IDENTITY ({exc}). Mode is {config.mode}: falling back to the in-process "
            f"dev identity {dev_spiffe_id(config)}. Peers that do not trust this dev CA will refuse it. "
            "This fallback never happens in production."
        )
        log.warning("preflight: %s", note)
        return _dev_source(config), [note]


def static_checks(config: NodeConfig, *, service_policies: bool = False) -> list[Check]:
    """Checks that need only the configuration."""
    idc = config.identity
    checks = [
        Check(
            "identity source is a production source",
            idc.source in ("workload-api", "files"),
            f"source = {idc.source!r}",
            "set [identity] source = \"workload-api\" (SPIRE agent) or \"files\" (spiffe-helper, CSI driver)",
        ),
        Check(
            "trust domain is configured",
            idc.trust_domain is not None,
            f"trust_domain = {idc.trust_domain!r}",
            "set [identity] trust_domain to your SPIRE trust domain",
        ),
        Check(
            "authorization policy is configured",
            config.authz.configured or service_policies or config.listen is None,
            "client-only node (no [node] listen): no server to authorize" if config.listen is None else
            "allow list / policy file / service policies "
            + ("present" if config.authz.configured or service_policies else "missing"),
            "set [authz] allow = [...] or [authz] policy = \"policy.json\", or declare who may call each service",
        ),
        Check("serves mTLS only (no plaintext port)", True, "meshnode never opens a plaintext port"),
    ]
    return checks


def identity_checks(config: NodeConfig, snapshot: IdentitySnapshot | None) -> list[Check]:
    """Checks on the SVID the source delivered."""
    if snapshot is None:
        return [Check("SVID obtained", False, "no SVID", "see the error above", IdentityUnavailableError)]
    now = utcnow()
    want = config.identity.trust_domain
    valid = snapshot.not_before <= now < snapshot.not_after
    checks = [
        Check("SVID obtained", True, f"{snapshot.spiffe_id} serial {snapshot.serial}"),
        Check(
            "SVID is in the configured trust domain",
            want is None or snapshot.trust_domain == want,
            f"SVID trust domain {snapshot.trust_domain!r}, configured {want!r}",
            "register the workload in the configured trust domain, or fix [identity] trust_domain",
            InvalidIdentityError,
        ),
        Check(
            "SVID is within its validity period",
            valid,
            f"valid {snapshot.not_before.isoformat()} .. {snapshot.not_after.isoformat()}",
            "the agent must renew the SVID: check that the SPIRE agent is running and can reach its server",
            InvalidIdentityError,
        ),
    ]
    expected = config.identity.spiffe_id
    if expected is not None and config.identity.source != "dev":
        checks.append(Check(
            "SVID has the configured SPIFFE ID",
            snapshot.spiffe_id == expected,
            f"SVID {snapshot.spiffe_id}, configured [identity] spiffe_id {expected}",
            "fix the workload's registration entry, or [identity] spiffe_id",
            InvalidIdentityError,
        ))
    return checks


def identity_rules(config: NodeConfig, booted: IdentitySnapshot) -> IdentityRules:
    """What every later identity update must keep: the trust domain the node booted in (production:
    the configured one, checked above) and, when ``[identity] spiffe_id`` is set, the SPIFFE ID."""
    pinned_id = booted.spiffe_id if config.identity.spiffe_id is not None else None
    return IdentityRules(trust_domain=booted.trust_domain, spiffe_id=pinned_id)


def missing_bundles(config: NodeConfig, snapshot: IdentitySnapshot) -> list[str]:
    """Trust domains the node accepts or calls but holds no bundle for (their callers/servers fail)."""
    wanted = set(config.identity.federates_with) | {p.spiffe_id.trust_domain for p in config.peers.values()}
    return sorted(td for td in wanted if not snapshot.bundles.get(td))
