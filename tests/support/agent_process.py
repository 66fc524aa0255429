"""`meshnode agent` as a child process, and a Workload API fetch as a workload does it."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
from pathlib import Path

import grpc
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc
from spiffe.svid.x509_svid import X509Svid

from tests.support.processes import meshnode_command

HEADER = (("workload.spiffe.io", "true"),)


class AgentProcess:
    """``meshnode agent --config CONFIG``, ready once it printed its ready line."""

    def __init__(self, config: Path, *, soft_nofile: int | None = None) -> None:
        self.stderr_path = config.with_name("agent.stderr")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                meshnode_command("agent", "--config", str(config), soft_nofile=soft_nofile),
                stdout=subprocess.PIPE, stderr=err, text=True,
            )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=60)
        self.ready_line = self.proc.stdout.readline() if ready else ""
        if "ready" not in self.ready_line:
            self.stop()
            raise AssertionError(f"meshnode agent did not become ready: {self.ready_line!r}\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def fetch_spiffe_id(socket_path: Path, timeout: float = 10, *, retry: bool = False) -> str:
    """The SPIFFE ID of the first X509-SVID the socket hands out (raises grpc.RpcError).

    ``retry``: as Workload API clients do (py-spiffe, go-spiffe, SPIRE's), try again when a connection
    is refused, until ``timeout`` (gRPC's wait_for_ready); without it, one attempt.
    """
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stream = pb_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            pb.X509SVIDRequest(), metadata=HEADER, timeout=timeout, wait_for_ready=retry
        )
        first = next(stream)
        stream.cancel()
        return str(first.svids[0].spiffe_id)



def x509_svids(response: pb.X509SVIDResponse) -> list[tuple[str, str, int]]:
    """(spiffe_id, hint, leaf serial) of every X509-SVID in a response, in order."""
    return [(s.spiffe_id, s.hint, X509Svid.parse_raw(s.x509_svid, s.x509_svid_key).leaf.serial_number)
            for s in response.svids]
