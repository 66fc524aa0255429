"""The meshnode error tree.

Every error meshnode raises on purpose is a :class:`MeshnodeError`. Errors
from grpc, cryptography and py-spiffe are translated at the boundary
(``raise IdentityUnavailableError(...) from exc``), so callers need to know
only this tree::

    MeshnodeError
     +-- ConfigError                 bad configuration: fix the file/env (exit 2)
     |    +-- InvalidSpiffeIdError   a SPIFFE ID or trust domain breaks the spec
     |    +-- PolicyError            an authorization policy is invalid
     +-- IdentityError               identity problems (exit 3)
     |    +-- IdentityUnavailableError  no SVID could be obtained in time
     |    |    +-- SvidNotDeliveredError  SVIDs came, none that [identity] spiffe_id / hint asks for
     |    +-- InvalidIdentityError      an SVID/bundle exists but is unusable
     |         +-- InvalidBundleError     a federated bundle file is refused (path, trust_domain, reason)
     |    +-- JwtSvidError              a JWT-SVID cannot be obtained (client) or is not valid (server) (reason)
     +-- PeerError                   unknown peer, or a channel cannot be built
     +-- ServeError                  the server cannot start (port in use...) (exit 4)
     +-- ScrapeError                 a metrics endpoint cannot be read or is not a meshnode node's (meshnode top)
     +-- LifecycleError              an object was used in the wrong state
          +-- NotStartedError        used before start()
          +-- AlreadyStartedError    start() called twice
          +-- ClosedError            used after close()

     +-- NoPeerIdentityError         peer_id() outside an authorized call (also a LookupError)

Errors carry fields, and their message is built from them:

* ``reason``: what is wrong, without the component prefix or the location,
  so a caller that adds its own context uses ``exc.reason`` instead of
  cutting up ``str(exc)``;
* where they apply: ``key`` (a config key such as ``identity.timeout``),
  ``path`` (a file), ``line``/``column`` (in that file), ``spiffe_id``,
  ``trust_domain``, ``value`` (the offending text).

Messages start with the component (``"identity: ..."``) and say what to do
next. ``exit_code`` is the process exit status ``meshnode`` uses for the
error; the codes are documented in the README.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "EXIT_IDENTITY",
    "EXIT_SERVE",
    "AlreadyStartedError",
    "ClosedError",
    "ConfigError",
    "IdentityError",
    "IdentityUnavailableError",
    "InvalidBundleError",
    "InvalidIdentityError",
    "InvalidSpiffeIdError",
    "JwtSvidError",
    "LifecycleError",
    "MeshnodeError",
    "NoPeerIdentityError",
    "NotStartedError",
    "PeerError",
    "PolicyError",
    "ScrapeError",
    "ServeError",
    "SvidNotDeliveredError",
]

#: Exit status for an invalid configuration (file, env, policy, CLI usage).
EXIT_CONFIG = 2
#: Exit status when no usable identity could be obtained.
EXIT_IDENTITY = 3
#: Exit status when the server cannot start serving (e.g. port in use).
EXIT_SERVE = 4


class MeshnodeError(Exception):
    """Root of every error meshnode raises on purpose.

    ``MeshnodeError(message)`` keeps a message as written (its ``reason`` is
    the message); ``MeshnodeError(reason=..., component="identity", ...)``
    builds ``"identity: <reason>"``. Either way the fields are attributes.
    """

    exit_code: int = 1

    def __init__(
        self,
        message: str = "",
        *,
        reason: str = "",
        component: str = "",
        key: str | None = None,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        spiffe_id: str | None = None,
        trust_domain: str | None = None,
        value: str | None = None,
    ) -> None:
        if not message:
            message = f"{component}: {reason}" if component else reason
        super().__init__(message)
        self.reason = reason or message
        self.key = key
        self.path = path
        self.line = line
        self.column = column
        self.spiffe_id = spiffe_id
        self.trust_domain = trust_domain
        self.value = value


class ConfigError(MeshnodeError, ValueError):
    """A configuration value is missing, malformed or contradictory."""

    exit_code = EXIT_CONFIG


class InvalidSpiffeIdError(ConfigError):
    """A string is not a valid SPIFFE ID or trust domain name.

    ``reason`` says what is wrong (without the value); ``value`` is the text given.
    """


class PolicyError(ConfigError):
    """An authorization policy (config, code or file) is invalid."""


class IdentityError(MeshnodeError):
    """The node's identity cannot be obtained or used."""

    exit_code = EXIT_IDENTITY


class IdentityUnavailableError(IdentityError):
    """No SVID arrived from the configured source (in time)."""


#: How many delivered SVIDs an error message lists (the ``delivered`` field holds them all).
_MAX_LISTED = 8


class SvidNotDeliveredError(IdentityUnavailableError):
    """The Workload API delivered SVIDs, but none that ``[identity] spiffe_id`` / ``hint`` selects.

    ``wanted``: what the configuration asks for; ``delivered``: one description
    per SVID that came, in order; ``source``: where they came from. ``reason``
    is the message without the source, for an update that is rejected later.
    """

    def __init__(self, wanted: str, delivered: tuple[str, ...], source: str) -> None:
        self.wanted = wanted
        self.delivered = delivered
        self.source = source
        shown = ", ".join(delivered[:_MAX_LISTED]) + (
            f" and {len(delivered) - _MAX_LISTED} more" if len(delivered) > _MAX_LISTED else ""
        )  # a hostile agent may send thousands: the message stays one bounded line
        came = f"{len(delivered)} SVID{'s' if len(delivered) != 1 else ''}: {shown}"
        super().__init__(
            f"identity: {source} delivered no SVID for {wanted}; it delivered {came}. To fix: register the "
            "workload with that SPIFFE ID or hint (spire-server entry create -spiffeID ... -hint ...), or "
            "change [identity] spiffe_id / hint to one the agent delivers",
            reason=f"no SVID for {wanted}; it delivered {came}",
        )


class InvalidIdentityError(IdentityError):
    """An SVID or bundle was obtained but cannot be used.

    ``reason`` says what is wrong, without the ``identity:`` component prefix
    (e.g. the chain verifier's own words for the link that failed), so a
    caller adds its context without re-parsing the message.
    """


class InvalidBundleError(InvalidIdentityError):
    """A federated bundle (file or document) cannot be used.

    ``reason`` says what is wrong with it, ``trust_domain`` is the trust domain
    it is for, ``path`` the file it came from (None for a document given as bytes).
    """

    def __init__(self, reason: str, *, trust_domain: str, path: str | None = None) -> None:
        where = path if path is not None else f"for '{trust_domain}'"
        super().__init__(
            f"identity: federated bundle {where}: {reason}", reason=reason, trust_domain=trust_domain, path=path
        )


class JwtSvidError(IdentityError):
    """A JWT-SVID cannot be obtained (client side) or is not valid (server side).

    ``reason`` says why in one line, never with the token itself (a bearer
    credential must not reach logs or status details).
    """


class PeerError(MeshnodeError):
    """A peer is unknown or a channel to it cannot be built."""

    exit_code = EXIT_CONFIG


class ServeError(MeshnodeError):
    """The server could not start serving."""

    exit_code = EXIT_SERVE


class ScrapeError(MeshnodeError):
    """A metrics endpoint could not be read, or is not a meshnode node's: ``value`` is its URL,
    ``reason`` why, and the message ``<url>: <reason>``."""


class NoPeerIdentityError(MeshnodeError, LookupError):
    """``peer_id()`` was called outside an RPC authorized by meshnode.authz."""


class LifecycleError(MeshnodeError, RuntimeError):
    """An object was used in a state that does not allow it."""


class NotStartedError(LifecycleError):
    """An object was used before it was started."""


class AlreadyStartedError(LifecycleError):
    """An object that starts once was started again."""


class ClosedError(LifecycleError):
    """An object was used after it was closed."""
