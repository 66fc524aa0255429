"""Configuration of a node (``node.toml``): frozen, validated dataclasses; the only reader of its files.

The dev agent's ``agent.toml`` is read by :mod:`meshnode.devagent.config`.
"""

from meshnode.config.node import NodeConfig, PeerConfig, load_node_config

__all__ = ["NodeConfig", "PeerConfig", "load_node_config"]
