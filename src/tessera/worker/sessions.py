"""Sessions of a worker: one KV cache each, admitted by memory, expired when idle.

A KV *slot* is one page of one block: `page_tokens` tokens of keys and values
(`cache_bytes_per_token * page_tokens` bytes). A session over `[a, b)` that declares
`max_length` tokens (its prompt plus max_tokens) reserves `(b - a) * ceil(max_length /
page_tokens)` slots at open and keeps them for its life, so admission is exact and a session
never runs out of memory mid-answer: when slots run out, the *open* is refused (429 `Busy`,
with a retry hint) and the router queues the request; nothing is preempted. The cache itself
is allocated page by page as the session grows (`batch.SessionKV`), so a short answer never
touches most of its reservation. The clock is passed in (monotonic seconds) so that expiry is
testable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.api.stage import pages_for
from tessera.errors import Busy, InvalidInput, NotFound


@dataclass
class Session:
    session_id: str
    start_block: int
    end_block: int
    max_length: int
    slots: int
    cache: Any  # the engine's KV cache object (`batch.SessionKV`: its `length` is the truth)
    last_used_s: float = 0.0
    closed: bool = False  # set on close or expiry; a queued step of it then fails NotFound

    @property
    def length(self) -> int:
        """Tokens in the cache."""
        return int(self.cache.length)


class SessionTable:
    def __init__(
        self,
        *,
        start_block: int,
        end_block: int,
        max_length: int,
        total_slots: int,
        decode_s_per_block: Callable[[], float],
        page_tokens: int,
    ) -> None:
        self.start_block = start_block
        self.end_block = end_block
        self.max_length = max_length
        self.total_slots = total_slots
        self.page_tokens = page_tokens
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
        new_cache: Callable[[int, int, int], Any],
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
        slots = (end_block - start_block) * pages_for(max_length, self.page_tokens)
        with self._lock:
            if session_id in self._sessions:
                raise InvalidInput("session_id", f"session {session_id!r} is already open")
            if slots > self.free_slots:
                raise Busy(
                    f"no room: {self.free_slots} free KV pages, the session needs {slots} "
                    f"({end_block - start_block} blocks x {max_length} tokens)",
                    retry_after_s=self._retry_after_s(),
                )
            cache = new_cache(max_length, start_block, end_block)
            session = Session(session_id, start_block, end_block, max_length, slots, cache, now_s)
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
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        return True

    def pages_allocated(self) -> int:
        """KV pages actually allocated (times blocks), at most what is reserved."""
        return sum(
            int(s.cache.pages_allocated) * (s.end_block - s.start_block)
            for s in list(self._sessions.values())
        )

    def expire(self, now_s: float, idle_timeout_s: float) -> list[str]:
        with self._lock:
            old = [
                sid for sid, s in self._sessions.items() if now_s - s.last_used_s > idle_timeout_s
            ]
            for sid in old:
                self._sessions.pop(sid).closed = True
        return old

    def _retry_after_s(self) -> float:
        """When the soonest session could finish if it ran to its declared length."""
        tau = self._decode_s_per_block()
        left = [
            (s.max_length - s.length) * tau * (s.end_block - s.start_block)
            for s in self._sessions.values()
        ]
        return round(max(min(left, default=1.0), 0.1), 3)
