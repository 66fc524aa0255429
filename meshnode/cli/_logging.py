"""Logging set-up for the command line (the library never configures logging)."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    level_name = os.environ.get("MESHNODE_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level_name, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # grpc and py-spiffe are chatty at INFO about their own retries
    logging.getLogger("spiffe").setLevel(logging.WARNING)
    # py-spiffe's X509Source logs every failed (re)connection attempt, every few seconds while a
    # Workload API keeps sending something unusable; meshnode's source reports each cause once itself
    logging.getLogger("spiffe.workloadapi.x509_source").setLevel(logging.CRITICAL)
