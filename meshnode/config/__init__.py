"""Configuration: frozen, validated dataclasses; the only reader of config files."""

from meshnode.config.agent import AgentConfig, EntryConfig, load_agent_config

__all__ = ["AgentConfig", "EntryConfig", "load_agent_config"]
