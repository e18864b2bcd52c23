"""Library settings: one pydantic-settings class, environment prefix ``T2L_``, validated when built."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"

Pooling = Literal["model", "cls", "mean", "lasttoken", "max"]
Runtime = Literal["torch", "onnx"]


class Settings(BaseSettings):
    """Where models and data live, and how the library runs. Every field reads ``T2L_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="T2L_", extra="ignore")

    base_model: str = Field(
        DEFAULT_BASE_MODEL, description="HF id, local folder or .gguf file of the base LLM"
    )
    embedder: str = Field(DEFAULT_EMBEDDER, description="sentence-transformers model id or local folder")
    embedder_pooling: Pooling = Field("model", description="'model' keeps the embedder's own pooling")
    generator_runtime: Runtime = Field(
        "onnx",
        description="what runs the embedder's transformer and the hypernetwork when adapters are generated "
        "on a CPU: 'onnx' (ONNX Runtime, graphs exported once into the cache folder) or 'torch'",
    )
    checkpoint: Path | None = Field(None, description="hypernetwork checkpoint folder; unset = the default")
    checkpoints_dir: Path = Field(REPO_ROOT / "checkpoints", description="home of shipped and local models")
    data_dir: Path = Field(REPO_ROOT.parent / "shared" / "data", description="SNI tasks and benchmarks")
    cache_dir: Path = Field(
        REPO_ROOT / ".cache" / "t2l", description="vectors of training descriptions, kept across runs"
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    trust_remote_code: bool = Field(
        False, description="let embedders run their own code (gte-large needs it)"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto" and not (value == "cpu" or value.startswith(("cuda", "mps"))):
            raise ValueError(f"T2L_DEVICE={value!r} is not 'auto', 'cpu', 'cuda[:N]' or 'mps'")
        return value

    @field_validator("base_model", "embedder")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model (an id or a path), got an empty string")
        return value.strip()

    def torch_device(self) -> str:
        """The device to run on: CUDA when present and asked for (or 'auto'), else CPU."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
