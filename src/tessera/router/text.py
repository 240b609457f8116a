"""Token ids to streamed text: incremental detokenization and stop sequences.

Text is released only when it is final: an incomplete UTF-8 character (decoded as U+FFFD) or a
tail that could still become a stop sequence is held back until the next token decides it.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


class TextStream:
    def __init__(self, decoder: Decoder, stops: list[str]) -> None:
        self._decoder = decoder
        self._stops = [s for s in stops if s]
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, token: int) -> str:
        """The new final text after `token`; sets `stopped` when a stop sequence appeared."""
        if self.stopped:
            return ""
        self._ids.append(token)
        self._text = self._decoder.decode(self._ids)
        hit = self._first_stop()
        if hit is not None:
            self.stopped = True
            return self._release(hit)
        safe = len(self._text.rstrip("\ufffd"))
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if self._text[:safe].endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return self._release(safe - hold)

    def finish(self) -> str:
        """Whatever is still held back, at the end of generation."""
        if self.stopped:
            return ""
        return self._release(len(self._text))

    @property
    def text(self) -> str:
        return self._text[: self._emitted]

    def _first_stop(self) -> int | None:
        found = [i for i in (self._text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _release(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self._text[self._emitted : upto]
        self._emitted = upto
        return delta
