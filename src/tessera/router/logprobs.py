"""OpenAI's `logprobs` objects from the last stage's tokens: each chosen token's logprob and,
when asked, the most likely tokens at its position, all under the model's distribution (before
temperature and top-p, as vLLM reports them by default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tessera.api import openai as oa
from tessera.api.stage import StepToken


class TokenPieces(Protocol):
    def token_bytes(self, token: int) -> bytes: ...

    def token_text(self, token: int) -> str: ...


def chat_logprobs(pieces: TokenPieces, outs: Sequence[StepToken]) -> oa.ChatLogprobs:
    def top(token: int, logprob: float) -> oa.TopLogprob:
        return oa.TopLogprob(
            token=pieces.token_text(token),
            logprob=logprob,
            bytes=list(pieces.token_bytes(token)),
        )

    return oa.ChatLogprobs(
        content=[
            oa.ChatTokenLogprob(
                **top(out.token, out.logprob).model_dump(),
                top_logprobs=[top(t.token, t.logprob) for t in out.top_logprobs or []],
            )
            for out in outs
        ]
    )


def completion_logprobs(
    pieces: TokenPieces, outs: Sequence[StepToken], offset: int
) -> tuple[oa.CompletionLogprobs, int]:
    """The tokens' logprobs, their text offsets counted from `offset`; and the next offset."""
    texts = [pieces.token_text(out.token) for out in outs]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    tops = []
    for out, text in zip(outs, texts, strict=True):
        top = {pieces.token_text(t.token): t.logprob for t in out.top_logprobs or []}
        top.setdefault(text, out.logprob)  # OpenAI lists the chosen token too
        tops.append(top)
    body = oa.CompletionLogprobs(
        tokens=texts,
        token_logprobs=[out.logprob for out in outs],
        top_logprobs=tops,
        text_offset=offsets,
    )
    return body, offset
