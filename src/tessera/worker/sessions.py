"""Sessions of a worker: one KV cache each, admitted by memory, expired when idle.

A KV *slot* is the cache of one block for one session at the worker's maximum length (the unit
of the placement: `cache_bytes_per_token * max_length`). A session over `[a, b)` holds `b - a`
slots for its whole life, so admission is exact: the sum of held slots never exceeds what fits
beside the weights. The clock is passed in (monotonic seconds) so that expiry is testable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.errors import Busy, InvalidInput, NotFound


@dataclass
class Session:
    session_id: str
    start_block: int
    end_block: int
    max_length: int
    slots: int
    cache: Any  # the engine's KV cache object
    length: int = 0  # tokens in the cache
    last_used_s: float = 0.0


class SessionTable:
    def __init__(
        self,
        *,
        start_block: int,
        end_block: int,
        max_length: int,
        total_slots: int,
        decode_s_per_block: Callable[[], float],
    ) -> None:
        self.start_block = start_block
        self.end_block = end_block
        self.max_length = max_length
        self.total_slots = total_slots
        self._decode_s_per_block = decode_s_per_block
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # steps run on a compute thread, opens on the event loop

    @property
    def used_slots(self) -> int:
        return sum(s.slots for s in self._sessions.values())

    @property
    def free_slots(self) -> int:
        return self.total_slots - self.used_slots

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self,
        session_id: str,
        start_block: int,
        end_block: int,
        max_length: int,
        new_cache: Callable[[], Any],
        now_s: float,
    ) -> Session:
        if not self.start_block <= start_block < end_block <= self.end_block:
            raise InvalidInput(
                "start_block",
                f"[{start_block}, {end_block}) is not inside this worker's blocks "
                f"[{self.start_block}, {self.end_block})",
            )
        if max_length > self.max_length:
            raise InvalidInput(
                "max_length", f"{max_length} exceeds this worker's maximum of {self.max_length}"
            )
        slots = end_block - start_block
        with self._lock:
            if session_id in self._sessions:
                raise InvalidInput("session_id", f"session {session_id!r} is already open")
            if slots > self.free_slots:
                raise Busy(
                    f"no room: {self.free_slots} free KV slots, the session needs {slots}",
                    retry_after_s=self._retry_after_s(),
                )
            session = Session(
                session_id, start_block, end_block, max_length, slots, new_cache(), 0, now_s
            )
            self._sessions[session_id] = session
            return session

    def get(self, session_id: str, now_s: float) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r} (closed, expired or never opened)")
        session.last_used_s = now_s
        return session

    def close(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def expire(self, now_s: float, idle_timeout_s: float) -> list[str]:
        with self._lock:
            old = [
                sid for sid, s in self._sessions.items() if now_s - s.last_used_s > idle_timeout_s
            ]
            for sid in old:
                del self._sessions[sid]
        return old

    def _retry_after_s(self) -> float:
        """When the soonest session could finish if it ran to its declared length."""
        tau = self._decode_s_per_block()
        left = [
            (s.max_length - s.length) * tau * (s.end_block - s.start_block)
            for s in self._sessions.values()
        ]
        return round(max(min(left, default=1.0), 0.1), 3)
