"""`tessera` command line: parse once, call the core, map errors to exit codes in one place.

Exit codes: 0 success, 2 invalid input (the message names the field), 3 infeasible problem,
1 anything else (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tessera.errors import Infeasible, InvalidInput, TesseraError

EXIT_INVALID = 2
EXIT_INFEASIBLE = 3

# Each subcommand lives in its own module with `add_parser(subparsers)`; the parser sets `func`.
COMMANDS = ("plan", "simulate", "up", "worker", "router", "operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", description="Serve one LLM over a pool of different GPUs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tessera.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose extra is not installed
            if exc.name and exc.name.startswith("tessera.cli"):
                continue
            stub = sub.add_parser(name, help=f"(needs an extra: {exc.name} is not installed)")
            stub.set_defaults(func=_missing(exc.name or name))
            continue
        module.add_parser(sub)
    return parser


def _missing(package: str):  # type: ignore[no-untyped-def]
    def run(_args: argparse.Namespace) -> int:
        raise InvalidInput(
            "", f"this command needs {package}; install tessera with the matching extra"
        )

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except InvalidInput as exc:
        print(f"tessera: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Infeasible as exc:
        print(f"tessera: infeasible: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
    except TesseraError as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tessera plan ... | head`): not an error of ours; silence the
        # interpreter's second complaint when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())
