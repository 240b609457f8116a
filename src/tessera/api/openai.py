"""The OpenAI-compatible surface of the router, as wire models (requests in, responses out).

Requests ignore fields this server does not implement (clients send many optional ones) but
validate the ones it uses; the router maps validation errors to 400 bodies naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

MAX_STOP_SEQUENCES = 4


def _number(value: Any) -> Any:
    """JSON Schema's numbers: 3 and 3.0 are integers, but "3" and true are not numbers."""
    if isinstance(value, str | bytes | bool):
        raise ValueError("must be a JSON number")  # noqa: TRY004 - pydantic wants ValueError
    return value


_NUMBER = BeforeValidator(_number)  # after the constraints, so that the schema keeps them
Tokens = Annotated[int, Field(ge=1), _NUMBER]
Temperature = Annotated[float, Field(ge=0.0, le=2.0), _NUMBER]
TopP = Annotated[float, Field(gt=0.0, le=1.0), _NUMBER]
OnlyOne = Annotated[int, Field(ge=1, le=1), _NUMBER]
Seed = Annotated[int, _NUMBER]
TokenId = Annotated[int, Field(ge=0), _NUMBER]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_In):
    type: Literal["text"]
    text: str


class ChatMessage(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_In):
    include_usage: StrictBool = False


class _Generate(_In):
    model: str = Field(min_length=1)
    max_tokens: Tokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: OnlyOne | None = Field(default=None, description="only 1 is supported")
    seed: Seed | None = Field(default=None, description="any integer (used modulo 2**63)")
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


class ChatCompletionRequest(_Generate):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Tokens | None = None


class CompletionRequest(_Generate):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
    ) = Field(description="text, [text] or token ids; one prompt per request")
    echo: Literal[False] | None = Field(default=False, description="not supported")


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Out):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Out):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextChoice(_Out):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(_Out):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tessera"


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(_Out):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Out):
    error: ErrorDetail
