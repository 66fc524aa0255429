"""``meshnode dns-name SPIFFE_ID``: the DNS SAN meshnode expects for an ID."""

from __future__ import annotations

import argparse

from meshnode.spiffeid import dns_name_for


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dns-name",
        help="print the DNS name a SPIFFE ID maps to (the -dns value for SPIRE entries)",
        description="Print the DNS name meshnode derives from a SPIFFE ID. Give it to SPIRE "
        "as '-dns NAME' on the workload's registration entry so grpcio clients can verify it.",
    )
    p.add_argument("spiffe_id")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(dns_name_for(args.spiffe_id))
    return 0
