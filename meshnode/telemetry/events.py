"""Identity and policy events: span events plus log records, never key material.

:func:`identity_event` adds an event to the current span when one is
recording (a rotation that happens inside a traced call shows up in that
trace) and always emits one log record, on the ``meshnode.identity`` logger
for identity events and ``meshnode.authz`` for policy events. The record's
``extra`` carries the same attributes under their dotted names, so a logging
bridge (OpenTelemetry's LoggingHandler, a JSON formatter) sees them as
fields. From a snapshot only the SPIFFE ID, serial number, not-after and
generation are read.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from meshnode.telemetry import attributes as attr

__all__ = [
    "EVENTS",
    "IDENTITY_BUNDLE_UPDATED",
    "IDENTITY_LOST",
    "IDENTITY_RECOVERED",
    "IDENTITY_ROTATED",
    "IDENTITY_UPDATE_REFUSED",
    "POLICY_RELOADED",
    "POLICY_RELOAD_FAILED",
    "SnapshotView",
    "identity_event",
    "snapshot_attributes",
]

IDENTITY_ROTATED: Final = "meshnode.identity.rotated"
IDENTITY_BUNDLE_UPDATED: Final = "meshnode.identity.bundle_updated"
IDENTITY_LOST: Final = "meshnode.identity.lost"
IDENTITY_RECOVERED: Final = "meshnode.identity.recovered"
IDENTITY_UPDATE_REFUSED: Final = "meshnode.identity.update_refused"
POLICY_RELOADED: Final = "meshnode.authz.policy_reloaded"
POLICY_RELOAD_FAILED: Final = "meshnode.authz.policy_reload_failed"

#: Event name -> (logger name, log level).
EVENTS: Final[Mapping[str, tuple[str, int]]] = {
    IDENTITY_ROTATED: ("meshnode.identity", logging.INFO),
    IDENTITY_BUNDLE_UPDATED: ("meshnode.identity", logging.INFO),
    IDENTITY_LOST: ("meshnode.identity", logging.WARNING),
    IDENTITY_RECOVERED: ("meshnode.identity", logging.INFO),
    IDENTITY_UPDATE_REFUSED: ("meshnode.identity", logging.WARNING),
    POLICY_RELOADED: ("meshnode.authz", logging.INFO),
    POLICY_RELOAD_FAILED: ("meshnode.authz", logging.WARNING),
}


class SnapshotView(Protocol):
    """What telemetry reads from an identity snapshot (an ``IdentitySnapshot`` is one).

    A Protocol rather than the class: telemetry consumes identities, and
    ``meshnode.identity`` reports through telemetry, so neither package
    imports the other both ways.
    """

    @property
    def spiffe_id(self) -> object: ...

    @property
    def serial(self) -> str: ...

    @property
    def not_after(self) -> dt.datetime: ...

    @property
    def generation(self) -> int: ...

    @property
    def bundles(self) -> Iterable[str]: ...

    def seconds_left(self) -> float: ...


def snapshot_attributes(snapshot: SnapshotView) -> dict[str, AttributeValue]:
    """What an event may say about a snapshot: ID, serial, not-after, generation, trust domains."""
    return {
        attr.LOCAL_SPIFFE_ID: str(snapshot.spiffe_id),
        attr.SVID_SERIAL: snapshot.serial,
        attr.SVID_NOT_AFTER: snapshot.not_after.isoformat(),
        attr.IDENTITY_GENERATION: snapshot.generation,
        attr.BUNDLE_TRUST_DOMAINS: tuple(sorted(snapshot.bundles)),
    }


def identity_event(
    name: str,
    snapshot: SnapshotView | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> None:
    """Record an identity or policy event (one of :data:`EVENTS`).

    ``attributes`` use the names in :mod:`meshnode.telemetry.attributes`
    (e.g. ``{attributes.ERROR: "agent unreachable"}``) and override what the
    snapshot gives.
    """
    try:
        logger_name, level = EVENTS[name]
    except KeyError:
        raise ValueError(f"telemetry: unknown event {name!r}; known: {', '.join(EVENTS)}") from None
    values: dict[str, AttributeValue] = snapshot_attributes(snapshot) if snapshot is not None else {}
    values.update(attributes or {})
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, values)
    logger = logging.getLogger(logger_name)
    if logger.isEnabledFor(level):
        text = " ".join(f"{key.removeprefix(attr.PREFIX)}={_text(value)}" for key, value in values.items())
        logger.log(level, "%s %s", name.removeprefix(attr.PREFIX), text, extra=dict(values))


def _text(value: AttributeValue) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
