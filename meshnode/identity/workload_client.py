"""py-spiffe's Workload API client, adapted: quick reconnects, and every response kept with its hints.

:class:`WorkloadClient` is the one place meshnode reaches into py-spiffe 0.3
internals (pinned by ``spiffe<0.4`` in pyproject):

* py-spiffe takes no channel options: the method that builds the channel is
  overridden (same target, same security header) to cap gRPC's reconnect
  backoff at a second, and the stream gets a shorter retry policy.
* py-spiffe drops each SVID's ``hint`` and its ``X509Source`` keeps only the
  SVID it picked: the method that parses a response also records it, with
  its hints, as :attr:`WorkloadClient.latest` (a :class:`Delivery`). It runs
  on the stream's thread just before the ``X509Source`` and then its
  subscribers see the response, so a subscriber reads the response it was
  called for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2
from spiffe.workloadapi.grpc.header_manipulator_client_interceptor import header_adder_interceptor
from spiffe.workloadapi.workload_api_client import RetryPolicy, StreamCancelHandler
from spiffe.workloadapi.x509_context import X509Context

from meshnode.identity.selection import Offered, offered

__all__ = ["CHANNEL_OPTIONS", "Delivery", "WorkloadClient", "open_x509_source", "path_of"]


def path_of(address: str) -> str:
    """The file path of a ``unix:`` address (``unix:///p``, ``unix:/p``)."""
    path = address[len("unix:") :]
    return "/" + path.lstrip("/")


#: Reconnect backoff of the Workload API channel (gRPC's default: 1 s growing to 120 s).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
#: py-spiffe's stream retry after the agent went away (its default: 0.1 s doubling up to 5 s).
_RETRY = RetryPolicy(base_backoff_in_seconds=0.1, backoff_factor=2, max_backoff=1.0)


@dataclass(frozen=True)
class Delivery:
    """One FetchX509SVID response as py-spiffe parsed it, with the hints py-spiffe drops (``""``: none)."""

    context: X509Context
    hints: tuple[str, ...]

    def offers(self) -> tuple[Offered, ...]:
        return offered([svid.leaf for svid in self.context.x509_svids], self.hints)


class WorkloadClient(WorkloadApiClient):
    """py-spiffe's Workload API client on a channel that reconnects within about a second,
    keeping the newest response with its hints (see the module docstring)."""

    def __init__(self, address: str) -> None:
        self._meshnode_target = "unix:" + path_of(address)
        #: The newest response parsed; None until the first one.
        self.latest: Delivery | None = None
        super().__init__(address)

    def _get_spiffe_grpc_channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self._meshnode_target, options=CHANNEL_OPTIONS)
        return grpc.intercept_channel(channel, header_adder_interceptor("workload.spiffe.io", "true"))

    def _process_x509_context(self, x509_svid_response: workload_pb2.X509SVIDResponse) -> X509Context:
        context = super()._process_x509_context(x509_svid_response)
        self.latest = Delivery(context, tuple(svid.hint for svid in x509_svid_response.svids))
        return context

    def stream_x509_contexts(
        self,
        on_success: Callable[[X509Context], None],
        on_error: Callable[[Exception], None],
        retry_connect: bool = True,
        retry_policy: RetryPolicy | None = None,
    ) -> StreamCancelHandler:
        return super().stream_x509_contexts(on_success, on_error, retry_connect, retry_policy or _RETRY)


def open_x509_source(address: str, timeout: float) -> tuple[X509Source, WorkloadClient]:
    """An X509Source on a client we own (X509Source does not close a client it was given)."""
    client = WorkloadClient(address)
    try:
        return X509Source(workload_api_client=client, timeout_in_seconds=timeout), client
    except BaseException:
        client.close()
        raise
