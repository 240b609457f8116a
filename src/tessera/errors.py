"""One error vocabulary for every layer.

Each edge maps these in one place: the CLI to exit codes, the router to OpenAI error bodies
(`tessera.router.errors`), the operator to kopf Permanent/Temporary errors. Messages name what
is wrong and what to do about it. This module imports nothing so that every layer may use it.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base class. `message` says what is wrong; `hint` what to do."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message} ({hint})")
        self.message = message
        self.hint = hint


class InvalidInput(TesseraError):
    """The caller's input is wrong: a field, a parameter, a file. Never retried."""

    def __init__(self, field: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message, hint=hint)
        self.field = field


class Infeasible(TesseraError):
    """The input is well formed but no plan exists (the pool is too small)."""

    def __init__(self, message: str, *, max_concurrent_requests: int = 0) -> None:
        super().__init__(message)
        self.max_concurrent_requests = max_concurrent_requests


class NotFound(TesseraError):
    """A named thing (model, session, server) does not exist."""


class Busy(TesseraError):
    """No room now; retrying later can succeed."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(TesseraError):
    """A dependency is down (no complete chain, a stage unreachable); retrying later can succeed."""
