"""What gRPC's balancers see of each endpoint, read from channelz.

grpcio shows Python nothing of a channel's subchannels (one per endpoint)
except through channelz, which gRPC core keeps for every channel unless
``grpc.enable_channelz`` is 0: per subchannel its address, its
connectivity state and a short trace whose events say why a connection
failed (``Connection refused``, ``SANs from certificate did not match SANs
from xDS control plane``, ``Hostname Verification Check failed``...).

The reading functions live in grpcio's Cython core (``grpc._cython.cygrpc``,
what the ``grpcio-channelz`` service calls too) and return channelz's JSON.
:func:`read_subchannels` returns None when this grpcio has no such functions
or they fail: callers then go without (meshnode's balancing and retries are
gRPC's own and do not depend on it; only re-resolution on failure and the
naming of refused endpoints do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["SubchannelView", "read_subchannels"]

log = logging.getLogger("meshnode.peers")

_FAILURE = "TRANSIENT_FAILURE"


@dataclass(frozen=True)
class SubchannelView:
    """One subchannel of a channel to ``channel_target``: one endpoint as gRPC sees it."""

    channel_target: str
    subchannel_id: int
    address: str  # channelz's form: "ipv4:10.0.0.1:7001", "ipv6:[::1]:7001"
    state: str  # IDLE, CONNECTING, READY, TRANSIENT_FAILURE, SHUTDOWN
    failure: str | None  # why its last connection attempt failed (the newest failure event), if known
    failure_at: str | None  # that event's timestamp: a new value is a new failure


def _functions() -> tuple[Callable[[int], str], Callable[[int], str]] | None:
    try:
        from grpc._cython import cygrpc
    except ImportError:  # pragma: no cover - every grpcio has it
        return None
    top = getattr(cygrpc, "channelz_get_top_channels", None)
    sub = getattr(cygrpc, "channelz_get_subchannel", None)
    if top is None or sub is None:
        return None
    return top, sub


def _last_failure(events: list[Any]) -> tuple[str | None, str | None]:
    for event in reversed(events):
        text = str(event.get("description", ""))
        if _FAILURE in text:
            reason = text.partition(_FAILURE)[2].lstrip(": ").split("\n=== Source Location", 1)[0]
            return reason.strip() or None, str(event.get("timestamp", "")) or None
    return None, None


def _top_channels(top: Callable[[int], str]) -> list[Any]:
    channels: list[Any] = []
    start = 0
    for _ in range(100):  # channelz pages its answer; bounded whatever it says
        page = json.loads(top(start))
        found = page.get("channel", [])
        channels += found
        if page.get("end", True) or not found:
            break
        start = int(found[-1]["ref"]["channelId"]) + 1
    return channels


def read_subchannels(targets: Collection[str]) -> list[SubchannelView] | None:
    """The subchannels of every channel whose target is in ``targets``; None when channelz cannot be read."""
    functions = _functions()
    if functions is None:
        return None
    top, sub = functions
    out: list[SubchannelView] = []
    try:
        for channel in _top_channels(top):
            target = channel.get("data", {}).get("target", "")
            if target not in targets:
                continue
            for ref in channel.get("subchannelRef", []):
                ident = int(ref["subchannelId"])
                try:
                    data = json.loads(sub(ident))["subchannel"]["data"]
                except (ValueError, KeyError):  # gone meanwhile
                    continue
                failure, at = _last_failure(data.get("trace", {}).get("events", []))
                out.append(SubchannelView(target, ident, str(data.get("target", "")),
                                          str(data.get("state", {}).get("state", "")), failure, at))
    except Exception as exc:  # an unexpected shape: go without rather than fail the node
        log.debug("peers: cannot read channelz: %s", exc)
        return None
    return out
