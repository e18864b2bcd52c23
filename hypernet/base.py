"""The base LLM: loading it (HF id, folder or GGUF), converting a GGUF once, and its fingerprint.

A *base spec* records what a hypernetwork needs to know about a base without its weights: architecture,
layer count, and for each target module its in/out features and module path. Its *fingerprint* ties
checkpoints and adapters to the base they were made for. Both come from the model's config alone
(the model is built on the meta device), so no weights are read to check a match.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from hypernet.errors import T2LError
from hypernet.mirrors import resolve_base


class TargetModule(BaseModel):
    """One kind of target linear, present once in every layer."""

    in_features: int
    out_features: int
    path: str  # module path with the layer index as "{layer}", e.g. "model.layers.{layer}.self_attn.q_proj"

    def at(self, layer: int) -> str:
        return self.path.format(layer=layer)


class BaseSpec(BaseModel):
    """What a hypernetwork must know about its base LLM."""

    name: str
    architecture: str
    num_layers: int
    modules: dict[str, TargetModule]
    param_hash: str

    @property
    def fingerprint(self) -> str:
        body = self.model_dump(exclude={"name"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"{self.name!r} ({self.architecture}, {self.num_layers} layers, fingerprint {self.fingerprint})"
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or os.path.exists(name)


def _load_error(kind: str, name: str, err: Exception) -> T2LError:
    if _looks_like_path(name):
        return T2LError(f"cannot load {kind} {name!r}: {str(err).splitlines()[0]}")
    return T2LError(
        f"cannot load {kind} {name!r}: it is not a local folder, and the Hugging Face Hub does not have it "
        f"or cannot be reached ({str(err).splitlines()[0][:160]})"
    )


def _gguf_parts(path: str) -> tuple[str, dict]:
    """Split a ``.gguf`` file path into (folder, loader kwargs) as transformers expects."""
    if path.endswith(".gguf"):
        file = Path(path).expanduser()
        if not file.is_file():
            raise T2LError(f"no GGUF file at {path}")
        return str(file.parent), {"gguf_file": file.name}
    return path, {}


def load_base_config(name: str, checkpoints_dir: Path) -> PretrainedConfig:
    source, extra = _gguf_parts(resolve_base(name, checkpoints_dir))
    try:
        return AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError) as err:
        raise _load_error("base model", name, err) from err


def load_base(
    name: str, checkpoints_dir: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, AutoTokenizer]:
    """Load a causal LM and its tokenizer, frozen and in eval mode."""
    source, extra = _gguf_parts(resolve_base(name, checkpoints_dir))
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except (OSError, ValueError) as err:
        raise _load_error("base model", name, err) from err
    model.requires_grad_(False)
    return model.to(device).eval(), load_tokenizer(name, checkpoints_dir)


def load_tokenizer(name: str, checkpoints_dir: Path) -> AutoTokenizer:
    """The base model's tokenizer alone (a server whose generation runs elsewhere needs no weights)."""
    source, extra = _gguf_parts(resolve_base(name, checkpoints_dir))
    try:
        return AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError) as err:
        raise _load_error("tokenizer of base model", name, err) from err


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a plain safetensors folder with tokenizer and chat template."""
    model, tokenizer = load_base(str(gguf), Path("."))
    # transformers refuses to save a model it still considers quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _target_modules(model: nn.Module, num_layers: int, targets: list[str]) -> dict[str, TargetModule]:
    """Find every target linear, check there is exactly one per layer, and describe it."""
    found: dict[str, dict[int, tuple[str, nn.Linear]]] = {t: {} for t in targets}
    for path, module in model.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if leaf not in found or not isinstance(module, nn.Linear):
            continue
        parts = path.split(".")
        layer_at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if layer_at is None:
            continue
        template = ".".join([*parts[:layer_at], "{layer}", *parts[layer_at + 1 :]])
        found[leaf][int(parts[layer_at])] = (template, module)
    specs = {}
    for target, per_layer in found.items():
        if sorted(per_layer) != list(range(num_layers)):
            raise T2LError(
                f"target module {target!r} appears in layers {sorted(per_layer)}, "
                f"expected one linear in each of the {num_layers} layers"
            )
        templates = {t for t, _ in per_layer.values()}
        shapes = {(m.in_features, m.out_features) for _, m in per_layer.values()}
        if len(templates) != 1 or len(shapes) != 1:
            raise T2LError(f"target module {target!r} differs between layers: {sorted(shapes)}")
        (template,), ((fan_in, fan_out),) = templates, shapes
        specs[target] = TargetModule(in_features=fan_in, out_features=fan_out, path=template)
    return specs


def spec_of(model: nn.Module, name: str, targets: list[str]) -> BaseSpec:
    """The base spec of a loaded (or meta) model."""
    config = model.config
    num_layers = config.num_hidden_layers
    names = json.dumps([(n, list(p.shape)) for n, p in model.named_parameters()])
    return BaseSpec(
        name=name,
        architecture=type(model).__name__,
        num_layers=num_layers,
        modules=_target_modules(model, num_layers, targets),
        param_hash=hashlib.sha256(names.encode()).hexdigest()[:16],
    )


def spec_from_config(name: str, targets: list[str], checkpoints_dir: Path) -> BaseSpec:
    """The base spec from the config alone: the model is built on the meta device, no weights read."""
    config = load_base_config(name, checkpoints_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return spec_of(model, name, targets)
