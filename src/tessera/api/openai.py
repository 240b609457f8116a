"""The OpenAI-compatible surface of the router, as wire models (requests in, responses out).

Every request field is either implemented or refused by name: an unknown field is refused like
OpenAI refuses it ("Unrecognized request argument supplied"), and the OpenAI parameters this
server does not implement (tools, structured output, penalties, ...) are accepted only at their
no-op value (`tools: []`, `response_format: {"type": "text"}`, `best_of: 1`, ...) and otherwise
refused with an `unsupported_parameter` error naming them. The router maps validation errors to
400 bodies naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20  # chat's `top_logprobs`, as OpenAI
MAX_COMPLETION_LOGPROBS = 5  # completions' `logprobs`, as OpenAI
UNSUPPORTED = "unsupported_parameter"  # the pydantic error type of a refused parameter


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


def _only(neutral: Callable[[Any], bool], message: str) -> BeforeValidator:
    """Accept a value only when `neutral` (it asks for nothing this server lacks), else refuse
    it with `message`. The field's type says the neutral values, so the schema says them too."""

    def check(value: Any) -> Any:
        if neutral(value):
            return value
        raise PydanticCustomError(UNSUPPORTED, message)

    return BeforeValidator(check)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _none_choice(value: Any) -> bool:
    return value is None or value == "none"


NO_TOOLS = "not supported: this server generates text and does not call tools or functions"
EmptyList = Annotated[Annotated[list[Any], Field(max_length=0)] | None, _only(_empty, NO_TOOLS)]
ToolChoice = Annotated[Literal["none"] | None, _only(_none_choice, NO_TOOLS)]
ParallelToolCalls = Annotated[
    Literal[False] | None, _only(lambda v: v is None or v is False, NO_TOOLS)
]
LogitBias = Annotated[
    Annotated[dict[str, Any], Field(max_length=0)] | None,
    _only(_empty, "not supported by this server"),
]
Penalty = Annotated[
    Annotated[float, Field(ge=0, le=0), _NUMBER] | None,
    _only(
        lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v == 0),
        "not supported by this server (only 0)",
    ),
]
BestOf = Annotated[
    OnlyOne | None,
    _only(lambda v: v is None or (type(v) in (int, float) and v == 1), "only 1 is supported"),
]
Suffix = Annotated[
    Literal[""] | None,
    _only(lambda v: v is None or v == "", "not supported by this server (text insertion)"),
]


def _text_part_type(value: Any) -> Any:
    if value != "text" and isinstance(value, str):
        raise PydanticCustomError(
            UNSUPPORTED,
            "'{kind}' content parts are not supported: this model reads text only",
            {"kind": value},
        )
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_In):
    type: Annotated[Literal["text"], BeforeValidator(_text_part_type)]
    text: str


class ChatMessage(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, description="passed to the model's chat template")

    def template_fields(self) -> dict[str, str]:
        """The message as the chat template reads it (`name` only when given)."""
        fields = {"role": self.role, "content": self.text()}
        if self.name is not None:
            fields["name"] = self.name
        return fields

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_In):
    include_usage: StrictBool = False


class ResponseFormatText(_In):
    type: Literal["text"]


ResponseFormat = Annotated[
    ResponseFormatText | None,
    _only(
        lambda v: v is None or v == {"type": "text"},
        'only type "text" is supported: this server does not constrain output to JSON',
    ),
]


class _Generate(_In):
    model: str = Field(min_length=1)
    max_tokens: Tokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[
        OnlyOne | None,
        _only(
            lambda v: v is None or (type(v) in (int, float) and v == 1),
            "only n=1 is supported: send separate requests for more choices",
        ),
    ] = None
    seed: Seed | None = Field(default=None, description="any integer (used modulo 2**63)")
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="an end-user id, as OpenAI's (not used)")
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    logit_bias: LogitBias = None

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; else how many alternatives per position (0: only the chosen)."""
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


class ChatCompletionRequest(_Generate):
    # `top_logprobs` only with `logprobs: true` (the router refuses it otherwise, as OpenAI).
    model_config = ConfigDict(
        json_schema_extra={
            "dependentSchemas": {
                "top_logprobs": {
                    "properties": {"logprobs": {"const": True}},
                    "required": ["logprobs"],
                }
            }
        }
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Tokens | None = None
    logprobs: StrictBool | None = Field(default=None, description="the chosen tokens' logprobs")
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), _NUMBER] | None = Field(
        default=None, description="with `logprobs`: this many most likely tokens per position"
    )
    response_format: ResponseFormat = None
    tools: EmptyList = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: ParallelToolCalls = None
    functions: EmptyList = None
    function_call: ToolChoice = None

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Generate):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
    ) = Field(description="text, [text] or token ids; one prompt per request")
    echo: Annotated[
        Literal[False] | None,
        _only(lambda v: v is None or v is False, "not supported by this server"),
    ] = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS), _NUMBER] | None = Field(
        default=None, description="the chosen tokens' logprobs and this many alternatives"
    )
    best_of: BestOf = None
    suffix: Suffix = None

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Out):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(_Out):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]  # the `logprobs` most likely, and the chosen token
    text_offset: list[int]


class ChatChoice(_Out):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


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
    logprobs: ChatLogprobs | None = None


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
    logprobs: CompletionLogprobs | None = None


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
