"""What one federated re-verification costs (an authorizer cache miss), across source trees.

``python -m tests.support.chain_cost --before /path/to/older/checkout [--rounds 7] [--calls 400]``

No test here, no timing asserts: it prints figures for a report. A
federated node re-verifies a caller's chain against the caller's own trust
domain's bundle once per (leaf, intermediates, bundle generation); this
times that call, :func:`meshnode.authz.identity.resolve_peer` with
``bundles``, for chains made here once (P-256, as SPIRE's default): a leaf
signed by the root, one intermediate, two intermediates given in reverse
order. Each tree runs in its own process with the tree first on
``PYTHONPATH`` (so an older checkout runs its own code), rounds interleaved
and the order shifted each round. Prints the median and quartiles of the
per-call wall time over rounds, and for this tree the parts of one call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from meshnode.identity.snapshot import certs_pem
from tests.support.pki import CA, SPIRE_SUBJECT

CHILD = r"""
import json, sys, time, datetime as dt
from cryptography import x509
from meshnode.authz.identity import resolve_peer
cases = json.loads(open(sys.argv[1]).read())
calls = int(sys.argv[2])
out = {}
for name, case in cases.items():
    auth = {"x509_pem_cert": [case["leaf"].encode()]}
    if case["chain"]:
        auth["x509_pem_cert_chain"] = [case["chain"].encode()]
    bundles = {td: tuple(x509.load_pem_x509_certificates(pem.encode())) for td, pem in case["bundles"].items()}
    accepted = frozenset(bundles)
    got = resolve_peer(auth, accepted=accepted, bundles=bundles)
    assert got.spiffe_id is not None, (name, got.problem)
    start = time.perf_counter()
    for _ in range(calls):
        resolve_peer(auth, accepted=accepted, bundles=bundles)
    out[name] = (time.perf_counter() - start) / calls * 1e6
print(json.dumps(out))
"""

PARTS = r"""
import json, sys, time, datetime as dt
from cryptography import x509
from cryptography.x509 import verification as xv
from meshnode.identity import x509chain
case = json.loads(open(sys.argv[1]).read())["one intermediate"]
calls = int(sys.argv[2])
roots = x509.load_pem_x509_certificates(case["bundles"]["partner.org"].encode())
leaf = x509.load_pem_x509_certificate(case["leaf"].encode())
inter = x509.load_pem_x509_certificates(case["chain"].encode())
now = dt.datetime.now(dt.UTC)
ca_policy, ee_policy = x509chain._extension_policies("client")
store = xv.Store(roots)
verifier = (xv.PolicyBuilder().store(store).time(now).extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier())
def timed(f):
    start = time.perf_counter()
    for _ in range(calls):
        f()
    return (time.perf_counter() - start) / calls * 1e6
print(json.dumps({
    "parse the PEMs from auth_context": timed(lambda: (x509.load_pem_x509_certificate(case["leaf"].encode()),
                                                      x509.load_pem_x509_certificates(case["chain"].encode()))),
    "Store(bundle)": timed(lambda: xv.Store(roots)),
    "build the verifier (policies cached)": timed(lambda: xv.PolicyBuilder().store(store).time(now)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy).build_client_verifier()),
    "verifier.verify (2 signatures)": timed(lambda: verifier.verify(leaf, inter)),
    "verify_chain, all of it": timed(lambda: x509chain.verify_chain([leaf, *inter], roots, now, usage="client")),
}))
"""


def make_cases(workdir: Path) -> Path:
    partner = CA.root("partner.org")
    pid = "spiffe://partner.org/billing"
    one = partner.intermediate("partner.org", name="one")
    upper = partner.intermediate("partner.org", name="upper")
    lower = upper.intermediate("partner.org", name="lower")
    direct, via_one, via_two = (ca.leaf(pid, subject=SPIRE_SUBJECT) for ca in (partner, one, lower))
    roots = {"partner.org": partner, "example.org": CA.root("example.org")}
    bundles = {td: certs_pem([ca.cert]).decode() for td, ca in roots.items()}
    cases = {
        "root-signed leaf": {"leaf": certs_pem([direct.cert]).decode(), "chain": "", "bundles": bundles},
        "one intermediate": {"leaf": certs_pem([via_one.cert]).decode(), "chain": certs_pem([one.cert]).decode(),
                             "bundles": bundles},
        "two intermediates, reversed": {"leaf": certs_pem([via_two.cert]).decode(),
                                        "chain": certs_pem([upper.cert, lower.cert]).decode(), "bundles": bundles},
    }
    path = workdir / "cases.json"
    path.write_text(json.dumps(cases))
    return path


def run(tree: Path, script: str, cases: Path, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", script, str(cases), str(calls)], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="an older checkout to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[2]
    trees = {"before": args.before.resolve(), "after": here}
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(Path(tmp))
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        order = list(trees)
        for r in range(args.rounds):
            for name in order[r % 2:] + order[: r % 2]:
                for case, us in run(trees[name], CHILD, cases, args.calls).items():
                    samples[name].setdefault(case, []).append(us)
        parts = run(here, PARTS, cases, args.calls * 5)
    print(f"resolve_peer with bundles, per call (us), median [q1..q3] of {args.rounds} rounds x {args.calls} calls")
    print("| chain | before | after |")
    print("|---|---|---|")
    for case in samples["after"]:
        cells = []
        for name in trees:
            q = statistics.quantiles(samples[name][case], n=4)
            cells.append(f"{statistics.median(samples[name][case]):.0f} [{q[0]:.0f}..{q[2]:.0f}]")
        print(f"| {case} | {' | '.join(cells)} |")
    print("\nparts of one call in this tree (us):")
    for part, us in parts.items():
        print(f"- {part}: {us:.1f}")


if __name__ == "__main__":
    main()
