"""Request bodies the simulated engine accepts, how prompts become token ids, and the error
body it answers with.

Field names and defaults follow SGLang's own models
(python/sglang/srt/entrypoints/openai/protocol.py: ChatCompletionRequest, CompletionRequest,
EmbeddingRequest, UsageInfo, PromptTokensDetails; python/sglang/srt/managers/io_struct.py:
GenerateReqInput). Unknown fields are accepted and ignored, as SGLang does for the many
sampling options the simulator has no use for. Type errors answer 400, as SGLang's
RequestValidationError handler does (it turns FastAPI's 422 into 400).
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelserver.sim.perf import CONTEXT_LENGTH
from modelserver.sim.tokenizer import encode

M = TypeVar("M", bound="BaseModel")

# SGLang's CompletionRequest default; the native /generate default is SamplingParams'
# max_new_tokens = 128 (python/sglang/srt/sampling/sampling_params.py). Chat has no default
# in SGLang (it runs to EOS or the context limit); the simulator does not model EOS, so chat
# answers are max_tokens long, 128 when the caller does not say.
DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_CHAT_MAX_TOKENS = 128
DEFAULT_GENERATE_MAX_NEW_TOKENS = 128


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatMessage(_Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None


class _Sampled(_Lenient):
    model: str = "default"
    max_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("max_tokens must be positive")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("the simulator answers one choice per prompt (n must be 1)")
        return value


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    continue_final_message: bool = False
    """SGLang's and vLLM's field: continue a final assistant message instead of answering
    after it (python/sglang/srt/entrypoints/openai/protocol.py, ChatCompletionRequest)."""

    def output_budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_CHAT_MAX_TOKENS


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]

    def output_budget(self) -> int:
        return self.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS


class EmbeddingRequest(_Lenient):
    input: str | list[str] | list[int] | list[list[int]]
    model: str = "default"
    encoding_format: str = "float"
    dimensions: int | None = None


class GenerateRequest(_Lenient):
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | None = None
    stream: bool = False

    def output_budget(self) -> int:
        params = self.sampling_params or {}
        value = params.get("max_new_tokens", DEFAULT_GENERATE_MAX_NEW_TOKENS)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest("sampling_params.max_new_tokens must be a non-negative integer")
        return value


class EngineDied(Exception):
    """The simulated engine crashed (or stopped) while the request was in flight; the
    connection is dropped without an answer, as a dead process would drop it."""


class BadRequest(Exception):
    """The request body is wrong; answered as a 400 in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


_ERROR_TYPES = {
    400: "BadRequestError",  # SGLang's OpenAIServingBase.create_error_response default
    404: "NotFoundError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(message: str, status: int = 400, param: str | None = None) -> web.Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON body; raises BadRequest with a message naming the field."""
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(problems, param=where) from None


def prompts_of(prompt: object, param: str = "prompt") -> list[list[int]]:
    """Token ids of each prompt: a string, token ids, or a list of either."""
    prompts: list[list[int]] = []
    if isinstance(prompt, str):
        prompts = [encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        prompts = [[int(p) for p in prompt]]
    elif isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, str):
                prompts.append(encode(item))
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                prompts.append([int(t) for t in item])
            else:
                raise BadRequest("prompts are strings or lists of token ids", param=param)
    else:
        raise BadRequest("prompts are strings or lists of token ids", param=param)
    if not prompts or any(not p for p in prompts):
        raise BadRequest("the prompt is empty", param=param)
    return prompts


def check_context(prompt_tokens: int, max_new: int) -> None:
    if prompt_tokens + max_new > CONTEXT_LENGTH:
        raise BadRequest(
            f"Requested token count exceeds the model's maximum context length of "
            f"{CONTEXT_LENGTH} tokens. You requested a total of {prompt_tokens + max_new} "
            f"tokens: {prompt_tokens} tokens from the input messages and {max_new} tokens "
            f"for the completion. Please reduce the number of tokens in the input "
            f"messages or the completion to fit within the limit."
        )
