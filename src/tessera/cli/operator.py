"""`tessera operator`: run the kopf operator (tessera.operator.handlers) in this process."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("operator", help="run the Kubernetes operator (needs the operator extra)")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf liveness endpoint (default http://0.0.0.0:8080/healthz)",
    )
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import kopf  # imported here: the CLI must start without the operator extra

    import tessera.operator.handlers  # noqa: F401  (registers the handlers)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    kopf.run(
        standalone=True,  # one replica; no peering CRD needed
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    )
    return 0
