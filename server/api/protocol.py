"""Request and response bodies, following OpenAI's conventions (and vLLM's ``parent`` for adapters)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BlendPart(BaseModel):
    description: str = Field(description="one task of the mix")
    weight: float = Field(ge=0, allow_inf_nan=False, description="its share; weights are normalised to sum 1")


class BlendSpec(BaseModel):
    blend: list[BlendPart] = Field(min_length=1, max_length=8)
    mode: Literal["embedding", "weights"] = Field(
        "embedding",
        description="embedding: mix the embeddings, one hypernetwork pass, rank r; weights: the exact "
        "mix of the weight updates at rank k x r",
    )


class AdapterCreate(BaseModel):
    description: str | None = Field(None, description="plain-language description of the task")
    blend: list[BlendPart] | None = Field(
        None, min_length=1, max_length=8, description="instead of description: a weighted mix of tasks"
    )
    mode: Literal["embedding", "weights"] = Field("embedding", description="how a blend is mixed")


class AdapterTimings(BaseModel):
    """Server-side ms: embed and hypernet when the adapter was generated, the Redis read and the
    check-and-decode of its entry when it came from Redis, and the store's total either way."""

    embed: float | None = None
    hypernet: float | None = None
    redis_read: float | None = None
    decode: float | None = None
    total: float


class AdapterObject(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    description: str
    created: int
    base_model: str
    checkpoint: str
    checkpoint_status: str
    checkpoint_trained: bool
    rank: int
    target_modules: list[str]
    description_truncated: bool
    cached: Literal["l1", "redis", False]
    timings_ms: AdapterTimings | None = None


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterObject]
    has_more: bool
    last_id: str | None


class Deleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    task_description: str | list[BlendPart] | BlendSpec | None = Field(
        None,
        description="generate (or reuse) an adapter for this task; a list of {description, weight} (or "
        "{blend, mode}) blends tasks",
    )
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = Field(False, description="generate max_tokens even past end-of-turn (as vLLM's)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class AdapterRef(BaseModel):
    id: str
    cached: Literal["l1", "redis", False]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    adapter: AdapterRef | None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    adapter: AdapterRef | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "t2l"
    root: str
    parent: str | None
    checkpoint: str | None = None
    checkpoint_status: str | None = None
    checkpoint_trained: bool | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
