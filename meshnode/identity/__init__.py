"""Identities: snapshots, sources (Workload API, files, dev CA) and the dev agent."""

from meshnode.identity.snapshot import Bundles, IdentitySnapshot
from meshnode.identity.source import IdentitySource, Publisher, StaticSource

__all__ = ["Bundles", "IdentitySnapshot", "IdentitySource", "Publisher", "StaticSource"]
