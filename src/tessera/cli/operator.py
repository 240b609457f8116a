"""`tessera operator`: run the kopf operator (tessera.operator.handlers) in this process."""

from __future__ import annotations

import argparse
import secrets
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
    p.add_argument(
        "--peering",
        default=None,
        help="kopf peering object shared by the replicas: one operator writes at a time "
        "(default: standalone, for a single replica)",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default: random, so that replicas never tie)",
    )
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import kopf  # imported here: the CLI must start without the operator extra

    import tessera.operator.handlers as handlers  # registers the handlers
    from tessera.operator.peering import MAX_PRIORITY, Peering

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    priority = args.priority
    if args.peering is not None:
        # Random: two replicas with equal priorities would both pause (kopf's rule).
        priority = priority if priority is not None else 1 + secrets.randbelow(MAX_PRIORITY)
        handlers.STATE.peering = Peering(args.peering, priority, tuple(args.namespace))
    kopf.run(
        standalone=args.peering is None,  # no peering: one replica, no peering CRD needed
        peering_name=args.peering,
        priority=priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    )
    return 0
