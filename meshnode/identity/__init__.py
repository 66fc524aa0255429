"""Identities as a node consumes them: snapshots, the source protocol, and the Workload API, files and guard sources.

The dev CA, the dev agent and the in-process dev source, which produce identities, live in
:mod:`meshnode.devagent`; nothing here imports that package or :mod:`meshnode.config`.
"""

from meshnode.identity.snapshot import Bundles, IdentitySnapshot
from meshnode.identity.source import IdentitySource, Publisher, StaticSource, SvidSource

__all__ = ["Bundles", "IdentitySnapshot", "IdentitySource", "Publisher", "StaticSource", "SvidSource"]
