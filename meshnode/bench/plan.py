"""What the benchmark runs: the variants, the workloads and the settings of a run.

Every variant is a (server, client channel) pair. ``B`` is the baseline the
others are divided by; ``E`` and ``F`` call the ``C`` server, so their
difference to ``C`` is the cost of meshnode's client side; ``M`` is ``C``
with RPC metrics and the Prometheus endpoint on, so ``M``/``C`` is what
metrics cost. ``E3`` and ``F3`` call three ``C`` servers as one peer with
three endpoints (balanced per call): their client CPU next to ``E`` and
``F`` is what balancing over several endpoints costs a caller. ``P`` and ``Q``
(not in a default run: ``--variants B,C,P,Q``) are the policy-scale
scenario: their difference is what one header rule costs. ``J`` is ``E``
with JWT-SVIDs (client ``jwt = true``, server ``jwt = "required"``): J/E is
what validating a token on every call costs the server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from meshnode.bench.service import LONG_STREAM_MESSAGES
from meshnode.errors import ConfigError

__all__ = ["BASELINE", "VARIANTS", "BenchSettings", "Variant", "Workload", "spiffe_id_unavailable"]

BASELINE = "B"


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    server: str  # the server process variant (meshnode.bench.server)
    kind: str  # the client target kind (meshnode.bench.client)
    own_process: bool = False  # the client channel needs a process of its own


VARIANTS: tuple[Variant, ...] = (
    Variant("A", "bare grpcio, insecure", "A", "insecure"),
    Variant("B", "bare grpcio, mTLS with static ssl_server_credentials (baseline)", "B", "mtls"),
    Variant("G", "hand-written grpc.aio mTLS server: B + peer_identities() checked against an allowlist in the "
            "servicer (the limit)", "G", "mtls"),
    Variant("K", "G keyed on the caller's certificate (auth_context(), X509-SVID checked once per certificate), not "
            "on its untyped SAN strings: the limit for a hand-written server without the SAN bypass", "K", "mtls"),
    Variant("N", "`meshnode run` serving meshnode.demo:EchoService (replies carry caller and server IDs)", "N", "mtls"),
    Variant("C", "meshnode Node server: dynamic credentials + authorization (bare mTLS client)", "C", "mtls"),
    Variant("D", "C + tracing (SDK TracerProvider, BatchSpanProcessor, no-op exporter)", "D", "mtls"),
    Variant("M", "C + metrics: RPC metrics per peer and the Prometheus endpoint on (no traces)", "M", "mtls"),
    Variant("E", "C server; client through a meshnode Node peer channel, verify=dns", "C", "node-dns"),
    Variant("F", "C server; client through a meshnode Node peer channel, verify=spiffe-id (xDS)", "C",
            "node-spiffe-id", own_process=True),
    Variant("E3", "three C servers as one peer: a meshnode peer channel with 3 endpoints (round robin), "
            "verify=dns", "C3", "node-dns"),
    Variant("F3", "three C servers as one peer: a meshnode peer channel with 3 endpoints (round robin, EDS), "
            "verify=spiffe-id", "C3", "node-spiffe-id", own_process=True),
    Variant("J", 'C + [authz] jwt = "required"; client through a meshnode Node peer channel, verify=dns, jwt = true',
            "J", "node-dns-jwt"),
    Variant("P", "C with a policy file of 10,001 allow rules, the caller's last", "P", "mtls"),
    Variant("Q", "P + one deny rule with a header condition on the called service", "Q", "mtls"),
)


@dataclass(frozen=True)
class Workload:
    name: str
    unary: int
    stream: int
    long: bool = False  # streams of LONG_STREAM_MESSAGES: what a message costs

    @property
    def callers(self) -> int:
        return self.unary + self.stream


def spiffe_id_unavailable() -> str | None:
    """Why spiffe-id peer channels cannot run in this tree (None: they can)."""
    if importlib.util.find_spec("meshnode.xds") is None or importlib.util.find_spec("meshnode.xds.node") is None:
        return "meshnode.xds.node (the node's spiffe-id channel integration) is not in this tree"
    return None


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run; ``quick()`` is the CI smoke run (well under a minute)."""

    out: Path = Path("bench-results")
    rounds: int = 12
    duration: float = 0.6  # seconds per (variant, workload) cell
    warmup: float = 0.3  # seconds per cell before the first round (not recorded)
    callers: int = 16  # "many" concurrent callers
    first_calls: int = 10  # fresh channels per client kind, timed to their first reply
    handshake_rounds: int = 6
    handshakes: int = 100  # new connections per batch
    rotations: int = 24
    ca_rotations: int = 2  # of which CA rotations
    rotation_interval: float = 0.5
    rotation_callers: int = 8
    spiffe_id_rotations: int = 4  # through a spiffe-id channel (only when F runs)
    spiffe_id_rotation_interval: float = 1.5  # gRPC's file_watcher re-reads every second
    pin: bool = True
    variants: tuple[str, ...] = ("A", "B", "G", "K", "C", "N", "D", "M", "E", "F", "J", "E3", "F3")
    quick: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, f"--rounds must be at least 1, not {self.rounds}"),
            (self.duration >= 0.05, f"--duration must be at least 0.05 s, not {self.duration}"),
            (self.warmup >= 0, "warmup must not be negative"),
            (self.callers >= 2, f"--callers must be at least 2 (1 is the other workload), not {self.callers}"),
            (self.handshake_rounds >= 1 and self.handshakes >= 1, "handshake rounds and batches must not be empty"),
            (self.first_calls >= 1, "first_calls must be at least 1"),
            (self.rotations >= 1, f"--rotations must be at least 1, not {self.rotations}"),
            (self.spiffe_id_rotations >= 1, "spiffe_id_rotations must be at least 1"),
            (0 <= self.ca_rotations <= self.rotations, "ca_rotations must be between 0 and rotations"),
            (self.rotation_interval >= 0.3, "rotation_interval must be at least 0.3 s (a CA rotation takes 0.2 s)"),
            (BASELINE in self.variants, f"the variants must include the baseline {BASELINE}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"bench: {message}")
        known = {v.name for v in VARIANTS}
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise ConfigError(f"bench: unknown variant(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    @classmethod
    def quick_run(cls, out: Path = Path("bench-results")) -> BenchSettings:
        return cls(
            out=out, rounds=2, duration=0.25, warmup=0.1, callers=8, first_calls=3, handshake_rounds=2, handshakes=20,
            rotations=4, ca_rotations=1, rotation_interval=0.4, rotation_callers=4, spiffe_id_rotations=1,
            quick=True,
        )

    def replace(self, **changes: object) -> BenchSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def workloads(self) -> tuple[Workload, ...]:
        n = self.callers
        return (
            Workload("unary, 1 caller", 1, 0),
            Workload(f"unary, {n} callers", n, 0),
            Workload("server stream, 1 caller", 0, 1),
            Workload(f"server stream, {n} callers", 0, n),
            Workload(f"long server stream ({LONG_STREAM_MESSAGES} messages), {n} callers", 0, n, long=True),
        )

    def selected(self) -> tuple[Variant, ...]:
        return tuple(v for v in VARIANTS if v.name in self.variants)
