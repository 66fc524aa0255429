"""meshnode: gRPC mesh nodes with SPIFFE identity-bound channels."""

from meshnode.errors import (
    ClosedError,
    ConfigError,
    IdentityError,
    IdentityUnavailableError,
    InvalidIdentityError,
    InvalidSpiffeIdError,
    MeshnodeError,
    PeerError,
    PolicyError,
    ServeError,
)
from meshnode.identity import IdentitySnapshot, IdentitySource, StaticSource
from meshnode.spiffeid import SpiffeID, dns_name_for, parse_spiffe_id

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConfigError",
    "IdentityError",
    "IdentitySnapshot",
    "IdentitySource",
    "IdentityUnavailableError",
    "InvalidIdentityError",
    "InvalidSpiffeIdError",
    "MeshnodeError",
    "PeerError",
    "PolicyError",
    "ServeError",
    "SpiffeID",
    "StaticSource",
    "__version__",
    "dns_name_for",
    "parse_spiffe_id",
]
