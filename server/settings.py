"""Server settings: the library's settings plus the service's, one class, environment prefix ``T2L_``."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from hypernet.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    import torch


class ServerSettings(Settings):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    state_dir: Path = Field(REPO_ROOT / "var", description="embedded Redis socket and data live here")
    redis_url: str | None = Field(None, description="redis://host:port/db; unset = embedded private Redis")
    adapter_ttl_s: int | None = Field(None, gt=0, description="Redis expiry of stored adapters; unset = keep")
    adapter_dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="dtype adapters are kept and stored in (Redis bytes, L1 memory)"
    )
    base_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the resident base model (local engine); auto: bfloat16 on a CPU with bf16 "
        "instructions (AVX512-BF16 or AMX), float32 elsewhere. Adapter slots and their products stay float32 "
        "on a CPU, take this dtype elsewhere",
    )
    packed_weights: bool = Field(
        True,
        description="reorder the base model's linear weights once for oneDNN (CPU, float32/bfloat16), the "
        "projections that read one input (q/k/v, gate/up) joined into one product: about half the time of a "
        "decode step's matrix products, for one more copy of those weights in memory",
    )
    l1_max_adapters: int = Field(256, ge=1)
    l1_max_mb: float = Field(512.0, gt=0)
    slots: int = Field(8, ge=1, description="adapter slots resident in the model")
    slot_rank: int | None = Field(
        None,
        ge=1,
        description="rank a slot holds; unset = the checkpoint's (a weights blend of k needs k x r)",
    )
    max_batch: int = Field(8, ge=1, description="sequences decoded together")
    batch_window_ms: float = Field(
        5.0,
        ge=0,
        description="how long a new batch waits for company, counted from its first request's arrival "
        "(time spent making the request's adapter counts)",
    )
    max_queue: int = Field(64, ge=1, description="queued requests before 429")
    engine_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="added to the nice value of the engine's threads (Linux): generating a newcomer's "
        "adapter and serving HTTP take the cores first, decoding takes the rest; 0 = same priority",
    )
    prefill_chunk_tokens: int = Field(
        256,
        ge=1,
        description="a longer prompt is prefilled this many tokens between two decode steps, so running "
        "streams keep a pace while it goes in; T2L_MAX_PROMPT_TOKENS or more = every prompt whole",
    )
    max_tokens_cap: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request names none")
    max_prompt_tokens: int = Field(2048, ge=1)
    max_description_chars: int = Field(4000, ge=1)
    api_keys: list[SecretStr] = Field(default_factory=list, description="JSON list; empty = no auth")
    api_keys_file: Path | None = Field(None, description="more API keys, one per line ('#' comments)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body; larger gets 413")
    rate_limit: int | None = Field(
        None, ge=1, description="requests a minute per API key or client; unset = off"
    )
    generation_timeout_s: float | None = Field(
        300.0, gt=0, description="a generation running longer ends as if it reached max_tokens; unset = none"
    )
    metrics_public: bool = Field(
        False, description="serve /metrics without an API key even when keys are set"
    )
    engine: Literal["local", "vllm"] = Field(
        "local", description="'local': our engine in this process; 'vllm': the vLLM servers of T2L_VLLM_URL"
    )
    vllm_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="vLLM server URLs, comma-separated (T2L_ENGINE=vllm)"
    )
    vllm_api_key: SecretStr | None = Field(None, description="the key the vLLM servers were started with")
    vllm_adapter_dir: Path | None = Field(
        None, description="where adapters are written for vLLM to read; unset = <state_dir>/vllm-adapters"
    )
    vllm_max_adapters: int = Field(
        64, ge=1, description="adapters kept registered per vLLM server; the least recently used go first"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"T2L_REDIS_URL={value!r} must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("vllm_url", mode="before")
    @classmethod
    def _vllm_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [u.strip() for u in value.split(",") if u.strip()]
        for url in value if isinstance(value, list) else []:
            if not str(url).startswith(("http://", "https://")):
                raise ValueError(f"T2L_VLLM_URL entry {url!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _engine_has_servers(self) -> "ServerSettings":
        if self.engine == "vllm" and not self.vllm_url:
            raise ValueError(
                "T2L_ENGINE=vllm needs T2L_VLLM_URL (one or more vLLM server URLs, comma-separated)"
            )
        return self

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"T2L_API_KEYS_FILE={str(value)!r} is not a readable file")
        return value

    def all_api_keys(self) -> list[SecretStr]:
        """The keys of ``T2L_API_KEYS`` and of ``T2L_API_KEYS_FILE`` (read once, at start-up)."""
        lines = self.api_keys_file.read_text().splitlines() if self.api_keys_file else []
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return [*self.api_keys, *map(SecretStr, from_file)]

    def torch_base_dtype(self) -> "torch.dtype":
        """``base_dtype`` as a torch dtype, ``auto`` resolved for this machine: bfloat16 where the CPU
        computes it natively (there our server streamed 1.3x float32's tokens/s, and the checkpoint's
        scores moved within noise: README), float32 elsewhere (a CPU without those instructions emulates
        bfloat16; on a GPU we have not measured it)."""
        import torch

        if self.base_dtype != "auto":
            return getattr(torch, self.base_dtype)
        native = (
            getattr(torch.cpu, "_is_avx512_bf16_supported", bool)()
            or getattr(torch.cpu, "_is_amx_tile_supported", bool)()
        )
        return torch.bfloat16 if self.torch_device() == "cpu" and native else torch.float32

    @property
    def vllm_adapters(self) -> Path:
        return self.vllm_adapter_dir or self.state_dir / "vllm-adapters"

    @property
    def l1_max_bytes(self) -> int:
        return int(self.l1_max_mb * 2**20)
