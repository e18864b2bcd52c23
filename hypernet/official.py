"""Import a checkpoint of the reference T2L release (SakanaAI/text-to-lora) into our format.

The release layout is a folder with ``hypermod.pt`` (a state dict), ``args.yaml`` (training arguments)
and ``adapter_config.json`` (the PEFT config of the adapters it writes). The state dict is read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
Supported: the variant the paper calls M (``shared_AB_head``, linear task encoder, not autoregressive).
"""

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from hypernet.base import spec_from_config
from hypernet.checkpoint import CheckpointConfig, EmbedderSpec, now, save_checkpoint
from hypernet.errors import T2LError
from hypernet.model import HyperConfig, HyperLoRA

# reference prefix → our prefix, for every plain module
_RENAMES = {
    "task_encoder.mlp.0.": "task_proj.",
    "task_encoder.mlp.1.": "task_norm.",
    "layer_depth_encoder.0.": "depth_emb.",
    "layer_depth_encoder.1.": "depth_norm.",
    "layer_type_encoder.0.": "module_emb.",
    "layer_type_encoder.1.": "module_norm.",
    "mixer.1.": "mix.fc1.",
    "mixer.4.": "mix.fc2.",
    "mlp1.mlp.0.": "res1.norm.",
    "mlp1.mlp.1.": "res1.fc1.",
    "mlp1.mlp.4.": "res1.fc2.",
    "mlp2.mlp.0.": "res2.norm.",
    "mlp2.mlp.1.": "res2.fc1.",
    "mlp2.mlp.4.": "res2.fc2.",
    "mlp3.0.": "neck.norm.",
    "mlp3.1.": "neck.fc1.",
    "mlp3.4.": "neck.fc2.",
    "out_emb_norm.": "ab_norm.",
    "heads.": "heads.",
}


def _read(src: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    files = {name: src / name for name in ("args.yaml", "adapter_config.json", "hypermod.pt")}
    for path in files.values():
        if not path.is_file():
            raise T2LError(f"{src} is not a reference T2L release folder: missing {path.name}")
    try:
        args = yaml.safe_load(files["args.yaml"].read_text()) or {}
        peft = json.loads(files["adapter_config.json"].read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise T2LError(f"cannot parse {src}'s args.yaml or adapter_config.json: {_first_line(err)}") from err
    if not isinstance(args, dict) or not isinstance(peft, dict):
        raise T2LError(f"{src}'s args.yaml and adapter_config.json must each hold a mapping")
    missing = [key for key in ("r", "lora_alpha", "target_modules") if key not in peft]
    if missing:
        raise T2LError(f"{files['adapter_config.json']} lacks {', '.join(map(repr, missing))}")
    if peft.get("peft_type", "LORA") != "LORA":
        raise T2LError(f"adapter_config.json has peft_type={peft['peft_type']!r}; only LORA is supported")
    try:
        state = torch.load(files["hypermod.pt"], map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a malformed or unsafe file
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise T2LError(
            f"refused {files['hypermod.pt']}: it is not a plain tensor state dict ({detail})"
        ) from err
    if not isinstance(state, dict):
        raise T2LError(f"{files['hypermod.pt']} holds a {type(state).__name__}, not a state dict")
    return args, peft, state


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _check_supported(args: dict[str, Any]) -> None:
    unsupported = {
        "shared_AB_head": (args.get("shared_AB_head", False), True),
        "autoreg_gen": (args.get("autoreg_gen", False), False),
        "encoder_type": (args.get("encoder_type", "linear"), "linear"),
        "use_one_hot_task_emb": (args.get("use_one_hot_task_emb", False), False),
        "factorized": (args.get("factorized", False), False),
    }
    for key, (got, want) in unsupported.items():
        if got != want:
            raise T2LError(
                f"args.yaml has {key}={got!r}; only {key}={want!r} (the paper's M variant) is supported"
            )
    if args.get("training_task", "sft") not in ("sft", "recon"):
        raise T2LError(f"args.yaml has training_task={args['training_task']!r}; expected 'sft' or 'recon'")
    if not args.get("emb_model"):
        raise T2LError(
            "args.yaml names no emb_model: checkpoints that embed with the base LLM are not supported"
        )


def _map_state(
    state: dict[str, torch.Tensor], targets: list[str], task: str, z_score: bool
) -> dict[str, torch.Tensor]:
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in _RENAMES if key.startswith(p)), None)
        if prefix is not None:
            ours[_RENAMES[prefix] + key[len(prefix) :]] = value
    ours["ab_emb"] = torch.stack(
        [torch.stack([state[f"out_emb.{m}.A"], state[f"out_emb.{m}.B"]]) for m in targets]
    )
    for m in targets:
        for ab in ("A", "B"):
            if task == "sft":
                ours[f"shift_{ab}_{m}"] = state[f"AB_offset.{ab}.{m}"]
            elif z_score:
                ours[f"shift_{ab}_{m}"] = state[f"mean_recon_target.{ab}.{m}"]
                ours[f"scale_{ab}_{m}"] = state[f"std_recon_target.{ab}.{m}"]
            else:
                ours[f"shift_{ab}_{m}"] = torch.zeros_like(state[f"AB_offset.{ab}.{m}"])
    return ours


def import_official(src: Path, out: Path, checkpoints_dir: Path, base: str | None = None) -> CheckpointConfig:
    """Convert a reference release folder to our format; ``base`` overrides args.yaml's model_dir."""
    args, peft, state = _read(src)
    _check_supported(args)
    targets = list(peft.get("target_modules") or [])
    if not targets:
        raise T2LError(f"{src / 'adapter_config.json'} lists no target_modules")
    task = args.get("training_task", "sft")
    z_score = bool(args.get("pred_z_score")) and task == "recon"
    base_name = base or args.get("model_dir")
    if not base_name:
        raise T2LError("args.yaml names no model_dir: pass the base model with --base")
    spec = spec_from_config(base_name, targets, checkpoints_dir)
    try:
        embed_dim = state["task_encoder.mlp.0.weight"].shape[1]
        latent = state["mixer.1.weight"].shape[1]
        head_in = state["mlp3.4.weight"].shape[0]
        layers = state["layer_depth_encoder.0.weight"].shape[0]
        ours = _map_state(state, targets, task, z_score)
    except KeyError as err:
        raise T2LError(f"{src / 'hypermod.pt'} lacks the reference parameter {err.args[0]}") from err
    if layers != spec.num_layers:
        raise T2LError(f"the release writes {layers} layers but base {spec.describe()} has {spec.num_layers}")
    hyper = HyperConfig(
        embed_dim=embed_dim,
        num_layers=spec.num_layers,
        target_modules=targets,
        in_features={m: spec.modules[m].in_features for m in targets},
        out_features={m: spec.modules[m].out_features for m in targets},
        rank=int(peft["r"]),
        alpha=float(peft["lora_alpha"]),
        use_rslora=bool(peft.get("use_rslora", False)),
        size="custom",
        latent_size=latent,
        head_in_size=head_in,
        head_bias=any(k.startswith("heads.") and k.endswith(".bias") for k in state),
        output_scale=z_score,
    )
    model = HyperLoRA(hyper)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise T2LError(f"{src / 'hypermod.pt'} does not fit base {spec.describe()}: {detail}") from err
    embedder = EmbedderSpec(name=args["emb_model"], dim=embed_dim, pooling="cls")
    training = {
        "status": "imported",
        "source": str(src),
        "training_task": task,
        "reference_args": {k: v for k, v in args.items() if isinstance(v, str | int | float | bool)},
        "imported": now(),
    }
    config = CheckpointConfig(hypernet=hyper, base=spec, embedder=embedder, training=training)
    return save_checkpoint(model, config, out)
