"""``t2l train sft`` and ``t2l train lora``: wiring settings, models and data into the trainer."""

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hypernet.base import load_base, spec_of
from hypernet.checkpoint import check_compatible, default_checkpoint, load_checkpoint
from hypernet.data.sni import load_tasks
from hypernet.embed import Embedder
from hypernet.errors import T2LError
from hypernet.settings import Settings
from hypernet.train.loop import LoopConfig
from hypernet.train.lora_baseline import FixedLoRA, export_peft, load_fixed
from hypernet.train.plot import plot_losses
from hypernet.train.recon import ReconConfig, ReconTrainer, load_library, with_output_scale
from hypernet.train.sft import SFTConfig, SFTTrainer


def _distributed(device: str) -> str:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPUs); this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda") and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def _trainer(args: argparse.Namespace, settings: Settings, lora: bool) -> SFTTrainer:
    out: Path = args.out
    resumed = out / "state" / "checkpoint"
    start = (
        resumed
        if resumed.is_dir() and not lora
        else (args.init or default_checkpoint(settings.checkpoints_dir))
    )
    device = _distributed(settings.torch_device())
    hypernet, config = load_checkpoint(start, device=device)
    # on a GPU the frozen base runs in bf16; the hypernetwork and its gradients stay fp32
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base, tokenizer = load_base(settings.base_model, settings.checkpoints_dir, dtype=dtype, device=device)
    check_compatible(config, start, base=spec_of(base, settings.base_model, list(config.base.modules)))
    embedder = Embedder(
        config.embedder.name, config.embedder.pooling, device, trust_remote_code=settings.trust_remote_code
    )
    # the protocol: train tasks (first descriptions, test instances held back); val tasks select models
    train, val = load_tasks(settings.data_dir, "train"), load_tasks(settings.data_dir, "val")
    if lora and args.task:  # an oracle LoRA: one task, validated on its own examples
        everything = train + val + load_tasks(settings.data_dir, "eval")
        chosen = [t for t in everything if t.name == args.task]
        if not chosen:
            raise T2LError(f"no SNI task named {args.task!r} in {settings.data_dir / 'sni'}")
        train = val = chosen
    fields = {k: v for k, v in vars(args).items() if k in SFTConfig.model_fields and v is not None}
    if lora and args.from_adapter:
        model, continues = load_fixed(args.from_adapter, config.base, config.hypernet.rank)
    elif lora:
        model, continues = FixedLoRA(config.base, config.hypernet.rank), None
    else:
        model, continues = hypernet, _earlier_training(config.training, start == resumed)
    status = ("oracle-lora" if args.task else "multi-task-lora") if lora else "sft"
    return SFTTrainer(
        base,
        tokenizer,
        model.to(device),
        config,
        embedder,
        train,
        val,
        SFTConfig(**fields),
        out,
        export_peft if lora else None,
        status,
        vector_cache=settings.cache_dir / "vectors.sqlite",
        continues=continues,
    )


def _earlier_training(training: dict, resumed: bool) -> dict | None:
    """The provenance a run adds up with: its own start's when resumed, else its trained starting point's."""
    if resumed:
        return training.get("continues")
    return training if training.get("status") == "sft" else None


def _run(trainer: SFTTrainer, result: str) -> None:
    if trainer.load() and trainer.rank == 0:
        print(f"resuming {trainer.out} at step {trainer.step}")
    last = trainer.run()
    if trainer.rank > 0:
        return
    final = trainer.out / result
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(trainer.out / "state" / result, final)
    plot_losses(trainer.out / "metrics.jsonl", trainer.out / "loss.png")
    print(f"{result}: {final} (step {trainer.step}, loss {last.get('loss', float('nan')):.4f})")


def cmd_train_recon(args: argparse.Namespace, settings: Settings) -> None:
    out: Path = args.out
    resumed = out / "state" / "checkpoint"
    start = resumed if resumed.is_dir() else (args.init or default_checkpoint(settings.checkpoints_dir))
    device = _distributed(settings.torch_device())
    hypernet, config = load_checkpoint(start, device=device)
    cfg = ReconConfig(
        **{k: v for k, v in vars(args).items() if k in ReconConfig.model_fields and v is not None}
    )
    if cfg.z_score and not config.hypernet.output_scale:
        hypernet, config = with_output_scale(hypernet, config)
    tasks, library = load_library(args.library, load_tasks(settings.data_dir, "train"), config)
    embedder = Embedder(
        config.embedder.name, config.embedder.pooling, device, trust_remote_code=settings.trust_remote_code
    )
    trainer = ReconTrainer(
        hypernet.to(device), config, embedder, tasks, library, cfg, out, settings.cache_dir / "vectors.sqlite"
    )
    _run(trainer, "checkpoint")


def cmd_train_sft(args: argparse.Namespace, settings: Settings) -> None:
    trainer = _trainer(args, settings, lora=False)
    if args.validate_only:  # the starting checkpoint's validation figures, nothing trained or written
        print(json.dumps({"checkpoint": trainer.config.id, **trainer.validation()}))
        return
    _run(trainer, "checkpoint")


def cmd_train_lora(args: argparse.Namespace, settings: Settings) -> None:
    _run(_trainer(args, settings, lora=True), "adapter")


def _options(p: argparse.ArgumentParser, config: type[LoopConfig]) -> None:
    p.add_argument("--out", type=Path, required=True, help="run folder: state, metrics, result")
    p.add_argument("--init", type=Path, help="starting checkpoint (default: the default checkpoint)")
    for name, field in config.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(field.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"default {field.default}")
        else:
            p.add_argument(flag, type=type(field.default), help=f"default {field.default}")


def add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train the hypernetwork or a baseline").add_subparsers(
        dest="mode", required=True
    )
    p = train.add_parser("sft", help="SFT through the frozen base on the SNI training tasks (resumable)")
    _options(p, SFTConfig)
    p.add_argument(
        "--validate-only", action="store_true", help="print --init's val_loss and val_mismatch_gap, then exit"
    )
    p.set_defaults(run=cmd_train_sft)
    p = train.add_parser(
        "lora", help="a multi-task LoRA on the same data and budget, or --task for an oracle"
    )
    _options(p, SFTConfig)
    p.add_argument("--task", help="train an oracle LoRA on this one SNI task")
    p.add_argument(
        "--from-adapter", type=Path, help="go on training this baseline (a PEFT folder; fresh optimizer)"
    )
    p.set_defaults(run=cmd_train_lora)
    p = train.add_parser("recon", help="reconstruct a library of task LoRAs from their descriptions")
    _options(p, ReconConfig)
    p.add_argument("--library", type=Path, required=True, help="folder of <task>/ PEFT LoRAs")
    p.set_defaults(run=cmd_train_recon)
