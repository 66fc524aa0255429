"""What validating a JWT-SVID costs per call: ``python -m meshnode.bench.jwt_cost [--calls N]``.

Times, in one process, interleaved over several rounds (median of the
rounds, in microseconds per call):

* ``JwtValidator.check`` on a token already verified (a cache hit: a dict
  look-up, one clock read, one identity comparison) and a full validation
  (a miss: parse, header and claim rules, one signature) for ES256, RS256
  and PS256;
* ``Authorizer.check`` on a cached verdict, without ``[authz] jwt``, with
  ``jwt = "required"`` and with ``principal = "jwt"``: what the JWT step
  adds to a call that is already authorized.

The authorizer is fed what a grpc.aio servicer context gives it (the
caller's certificate in ``auth_context()``, the metadata); the whole
server, TLS included, is measured by ``meshnode bench`` (variant J).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshnode.authz.authorizer import Authorizer
from meshnode.authz.jwt import JwtAuthn
from meshnode.authz.policy import policy_from_allowlist
from meshnode.devagent.ca import DevCA
from meshnode.jwtsvid.bundle import JwtBundle
from meshnode.jwtsvid.sources import StaticJwtBundles
from meshnode.jwtsvid.validate import JwtValidator

__all__ = ["main", "measure"]

CLIENT = "spiffe://example.org/bench/client"
SERVER = "spiffe://example.org/bench/server"
METHOD = "/meshnode.demo.v1.Echo/Say"


class _Context:
    """What Authorizer.check reads from a grpc.aio servicer context."""

    def __init__(self, cert_pem: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
        self._auth = {"x509_pem_cert": [cert_pem]}
        self._metadata = metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def _per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def _validate(validator: JwtValidator, token: str) -> Callable[[], Any]:
    return lambda: validator.validate(token)


def measure(calls: int = 20000, rounds: int = 7) -> dict[str, float]:
    """Median µs per call of each case over ``rounds`` interleaved rounds."""
    ca = DevCA("example.org")
    keys: dict[str, Any] = {"es": ec.generate_private_key(ec.SECP256R1()), "rs": rsa.generate_private_key(65537, 2048)}
    bundles = StaticJwtBundles({"example.org": JwtBundle("example.org", {k: v.public_key() for k, v in keys.items()})})
    validator = JwtValidator(bundles, audiences=[SERVER], trust_domains=["example.org"])
    now = int(time.time())
    payload = {"sub": CLIENT, "aud": SERVER, "iat": now, "exp": now + 3600}
    kids = {"ES256": "es", "RS256": "rs", "PS256": "rs"}
    tokens = {alg: jwt.encode(payload, keys[kid], algorithm=alg, headers={"kid": kid}) for alg, kid in kids.items()}
    cert = ca.issue(CLIENT, dt.timedelta(hours=1)).chain[0].public_bytes(serialization.Encoding.PEM)
    policy = policy_from_allowlist([CLIENT])
    plain = Authorizer(policy, audit="none", record_spans=False)
    required = Authorizer(policy, audit="none", record_spans=False, jwt=JwtAuthn(validator, "required"))
    principal = Authorizer(policy, audit="none", record_spans=False, jwt=JwtAuthn(validator, "required", "jwt"))
    with_token = _Context(cert, (("authorization", f"Bearer {tokens['ES256']}"),))
    without = _Context(cert, ())
    cases: dict[str, Callable[[], Any]] = {
        "JwtValidator.check, ES256, cache hit": lambda: validator.check(tokens["ES256"]),
        **{f"JwtValidator.validate, {alg}, full (cache miss)": _validate(validator, t) for alg, t in tokens.items()},
        "Authorizer.check, no [authz] jwt (cached verdict)": lambda: plain.check(without, METHOD),
        "Authorizer.check, jwt = required (cached verdict and token)": lambda: required.check(with_token, METHOD),
        "Authorizer.check, principal = jwt (cached verdict and token)": lambda: principal.check(with_token, METHOD),
    }
    for fn in cases.values():  # warm every cache once
        fn()
    results: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        names = list(cases)
        names = names[r % len(names):] + names[: r % len(names)]
        for name in names:
            n = calls if "full" not in name else max(calls // 50, 50)
            results[name].append(_per_call(cases[name], n))
    return {name: statistics.median(values) for name, values in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.jwt_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000, help="calls per case and round (full validations: /50)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print("| case | µs per call (median of rounds) |")
    print("|---|---:|")
    for name, value in measure(args.calls, args.rounds).items():
        print(f"| {name} | {value:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
