"""Our checkpoint format: a folder with ``config.json`` and ``model.safetensors``. No pickle.

``config.json`` holds the hypernetwork's hyperparameters, the spec and fingerprint of the base it writes
for, the embedder it reads from, training provenance (``training.status`` is ``untrained`` for a
freshly initialised network) and the SHA-256 of the weights, which doubles as the checkpoint id.
"""

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file

from hypernet.base import BaseSpec
from hypernet.errors import T2LError
from hypernet.model import HyperConfig, HyperLoRA

SHIPPED = "t2l-smollm2-135m"
UNTRAINED = "untrained-smollm2-135m"


class EmbedderSpec(BaseModel):
    name: str
    dim: int
    pooling: str = "model"


class CheckpointConfig(BaseModel):
    format: Literal["t2l-hypernet"] = "t2l-hypernet"
    version: Literal[1] = 1
    hypernet: HyperConfig
    base: BaseSpec
    embedder: EmbedderSpec
    training: dict[str, Any]
    weights_sha256: str = ""
    created: str = ""

    @property
    def id(self) -> str:
        return f"ck-{self.weights_sha256[:12]}"

    @property
    def status(self) -> str:
        return str(self.training.get("status", "unknown"))

    @property
    def trained(self) -> bool:
        """Whether the weights came out of training (SFT or reconstruction), not out of ``t2l init``."""
        return self.status not in ("untrained", "unknown")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(
    model: HyperLoRA, config: CheckpointConfig, out: Path, dtype: torch.dtype | None = None
) -> CheckpointConfig:
    """Write ``out/model.safetensors`` (in ``dtype`` when given: a shipped checkpoint is stored in half
    precision to stay small; loading casts back to the network's float32) and ``out/config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    tensors = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights))
    config = config.model_copy(
        update={"weights_sha256": _sha256(weights), "created": config.created or now()}
    )
    (out / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    return config


def read_config(path: Path) -> CheckpointConfig:
    file = path / "config.json"
    if not file.is_file():
        raise T2LError(f"no T2L checkpoint at {path} (missing {file.name})")
    try:
        return CheckpointConfig.model_validate_json(file.read_text())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise T2LError(f"{file} is not a valid T2L checkpoint config: {where}: {first['msg']}") from err


def check_compatible(
    config: CheckpointConfig, where: Path, base: BaseSpec | None = None, embedder: EmbedderSpec | None = None
) -> None:
    """Refuse a checkpoint made for another base or embedder, naming both sides."""
    if base is not None and base.fingerprint != config.base.fingerprint:
        raise T2LError(
            f"checkpoint {where} was made for base {config.base.describe()}, "
            f"but the base in use is {base.describe()}"
        )
    if embedder is not None and (embedder.name, embedder.dim) != (config.embedder.name, config.embedder.dim):
        raise T2LError(
            f"checkpoint {where} was made for embedder {config.embedder.name!r} (dim {config.embedder.dim}), "
            f"but the embedder in use is {embedder.name!r} (dim {embedder.dim})"
        )


def load_checkpoint(
    path: Path,
    device: str = "cpu",
    base: BaseSpec | None = None,
    embedder: EmbedderSpec | None = None,
) -> tuple[HyperLoRA, CheckpointConfig]:
    """Load a checkpoint after checking its integrity and that it fits ``base`` and ``embedder``."""
    config = read_config(path)
    check_compatible(config, path, base, embedder)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise T2LError(f"checkpoint {path} has no {weights.name}")
    if _sha256(weights) != config.weights_sha256:
        raise T2LError(
            f"{weights} does not match the checksum in its config.json: the file is corrupt or replaced"
        )
    model = HyperLoRA(config.hypernet)
    result = model.load_state_dict(load_file(str(weights)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise T2LError(
            f"{weights} does not fit its config: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model.to(device).eval(), config


def default_checkpoint(checkpoints_dir: Path) -> Path:
    """The shipped trained checkpoint when present, else the local untrained one ``make setup`` creates."""
    for name in (SHIPPED, UNTRAINED):
        if (checkpoints_dir / name / "config.json").is_file():
            return checkpoints_dir / name
    raise T2LError(
        f"no hypernetwork checkpoint in {checkpoints_dir}: run `make setup` (or `t2l init -o "
        f"{checkpoints_dir / UNTRAINED}`) to create an untrained one, or set T2L_CHECKPOINT"
    )


def initial_checkpoint(
    base: BaseSpec, embedder: EmbedderSpec, size: str, rank: int, alpha: float, seed: int, **extra: Any
) -> tuple[HyperLoRA, CheckpointConfig]:
    """A freshly initialised (untrained) hypernetwork for ``base``; deterministic for a given seed."""
    hyper = HyperConfig.sized(
        size,
        embed_dim=embedder.dim,
        num_layers=base.num_layers,
        target_modules=list(base.modules),
        in_features={m: s.in_features for m, s in base.modules.items()},
        out_features={m: s.out_features for m, s in base.modules.items()},
        rank=rank,
        alpha=alpha,
        **extra,
    )
    torch.manual_seed(seed)
    model = HyperLoRA(hyper)
    training = {"status": "untrained", "seed": seed, "note": "initialised, never trained: emits B = 0"}
    return model, CheckpointConfig(hypernet=hyper, base=base, embedder=embedder, training=training)
