"""The dev identity provider: a dev CA, the dev Workload API agent, and the in-process dev source.

Development and tests only (a production node refuses the ``dev`` source).
``meshnode.identity`` consumes identities and never imports this package;
this package produces them and builds on ``meshnode.identity``'s types::

    ca          DevCA: the dev trust domain's CA (X509-SVIDs, JWT-SVIDs, CA rotation)
    source      DevSource: a node's SVID issued in-process by a DevCA ([identity] source = "dev")
    config      agent.toml as frozen, validated dataclasses
    agent       DevAgent / DevAgentThread: the Workload API agent (`meshnode agent`)
    server      the Workload API servicer of one socket
    sockets     the agent's sockets behind uid gates
    peercred    peer credentials of unix socket callers, the uid gate
    limits      connection bounds per socket and per caller uid
    safe_dir    directories no other user could write (socket_dir, state_dir)
"""

from meshnode.devagent.agent import DevAgent, DevAgentThread
from meshnode.devagent.ca import DevCA, IssuedSVID
from meshnode.devagent.config import AgentConfig, EntryConfig, load_agent_config
from meshnode.devagent.source import DevSource

__all__ = [
    "AgentConfig",
    "DevAgent",
    "DevAgentThread",
    "DevCA",
    "DevSource",
    "EntryConfig",
    "IssuedSVID",
    "load_agent_config",
]
