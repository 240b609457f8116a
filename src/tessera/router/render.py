"""Response renderers: the OpenAI objects of one answer, for chat and for completions.

One renderer per answer (the serving layer picks its class per endpoint, as vLLM's
`serving_chat` and `serving_completion` do): the whole answer, or its stream of chunks. A chat
stream names the role on its first chunk; a completions stream carries `text_offset` across
chunks for its logprobs. Usage is built once, by `usage`, for both.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel

from tessera.api import openai as oa
from tessera.api.stage import StepToken

from .logprobs import TokenPieces, chat_logprobs, completion_logprobs


def usage(prompt_tokens: int, completion_tokens: int) -> oa.Usage:
    return oa.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


class Renderer(ABC):
    id_prefix: ClassVar[str]

    def __init__(
        self, pieces: TokenPieces, model: str, rid: str, created: int, *, logprobs: bool
    ) -> None:
        self.pieces, self.model, self.rid, self.created = pieces, model, rid, created
        self.logprobs = logprobs  # asked for: every choice carries them

    @classmethod
    def new_id(cls) -> str:
        return cls.id_prefix + uuid.uuid4().hex[:24]

    @abstractmethod
    def whole(self, text: str, finish: str, outs: Sequence[StepToken], used: oa.Usage) -> BaseModel:
        """The whole answer; `outs`: the tokens of its text (not the EOS), for logprobs."""

    @abstractmethod
    def chunk(self, text: str | None, finish: str | None, outs: Sequence[StepToken]) -> BaseModel:
        """One chunk of a stream: new text (None: none), the finish reason on the last one."""

    @abstractmethod
    def usage_chunk(self, used: oa.Usage) -> BaseModel:
        """The chunk after the last, when the client asked for usage (`include_usage`)."""


class ChatRenderer(Renderer):
    id_prefix = "chatcmpl-"
    _role_due = True  # the role goes on the first chunk sent (then False on the instance)

    def whole(self, text: str, finish: str, outs: Sequence[StepToken], used: oa.Usage) -> BaseModel:
        return oa.ChatCompletion(
            id=self.rid,
            created=self.created,
            model=self.model,
            choices=[
                oa.ChatChoice(
                    message=oa.AssistantMessage(content=text),
                    finish_reason=finish,
                    logprobs=chat_logprobs(self.pieces, outs) if self.logprobs else None,
                )
            ],
            usage=used,
        )

    def chunk(self, text: str | None, finish: str | None, outs: Sequence[StepToken]) -> BaseModel:
        delta = oa.Delta(role="assistant" if self._role_due else None, content=text)
        self._role_due = False
        logprobs = chat_logprobs(self.pieces, outs) if self.logprobs and outs else None
        return oa.ChatCompletionChunk(
            id=self.rid,
            created=self.created,
            model=self.model,
            choices=[oa.ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)],
        )

    def usage_chunk(self, used: oa.Usage) -> BaseModel:
        return oa.ChatCompletionChunk(
            id=self.rid, created=self.created, model=self.model, choices=[], usage=used
        )


class CompletionRenderer(Renderer):
    id_prefix = "cmpl-"
    _offset = 0  # text_offset of the next token (set on the instance as chunks go out)

    def whole(self, text: str, finish: str, outs: Sequence[StepToken], used: oa.Usage) -> BaseModel:
        logprobs = completion_logprobs(self.pieces, outs, 0)[0] if self.logprobs else None
        return oa.Completion(
            id=self.rid,
            created=self.created,
            model=self.model,
            choices=[oa.TextChoice(text=text, finish_reason=finish, logprobs=logprobs)],
            usage=used,
        )

    def chunk(self, text: str | None, finish: str | None, outs: Sequence[StepToken]) -> BaseModel:
        logprobs = None
        if self.logprobs and outs:
            logprobs, self._offset = completion_logprobs(self.pieces, outs, self._offset)
        return oa.Completion(
            id=self.rid,
            created=self.created,
            model=self.model,
            choices=[oa.TextChoice(text=text or "", finish_reason=finish, logprobs=logprobs)],
        )

    def usage_chunk(self, used: oa.Usage) -> BaseModel:
        return oa.Completion(
            id=self.rid, created=self.created, model=self.model, choices=[], usage=used
        )
