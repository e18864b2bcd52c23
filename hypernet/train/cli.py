"""``t2l train sft``: wiring settings, models and data into the trainer."""

import argparse
import shutil
from pathlib import Path
from typing import Any

from hypernet.base import load_base, spec_of
from hypernet.checkpoint import check_compatible, default_checkpoint, load_checkpoint
from hypernet.data.sni import load_tasks
from hypernet.embed import Embedder
from hypernet.settings import Settings
from hypernet.train.plot import plot_losses
from hypernet.train.sft import SFTConfig, SFTTrainer


def cmd_train_sft(args: argparse.Namespace, settings: Settings) -> None:
    out: Path = args.out
    resumed_from = out / "state" / "checkpoint"
    start = (
        resumed_from if resumed_from.is_dir() else (args.init or default_checkpoint(settings.checkpoints_dir))
    )
    device = settings.torch_device()
    hypernet, config = load_checkpoint(start, device=device)
    base, tokenizer = load_base(settings.base_model, settings.checkpoints_dir, device=device)
    check_compatible(config, start, base=spec_of(base, settings.base_model, list(config.base.modules)))
    embedder = Embedder(
        config.embedder.name, config.embedder.pooling, device, trust_remote_code=settings.trust_remote_code
    )
    fields = {k: v for k, v in vars(args).items() if k in SFTConfig.model_fields and v is not None}
    trainer = SFTTrainer(
        base,
        tokenizer,
        hypernet,
        config,
        embedder,
        load_tasks(settings.data_dir, "train"),
        load_tasks(settings.data_dir, "eval"),
        SFTConfig(**fields),
        out,
    )
    if trainer.load():
        print(f"resuming {out} at step {trainer.step}")
    last = trainer.run()
    final = out / "checkpoint"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(out / "state" / "checkpoint", final)
    plot_losses(out / "metrics.jsonl", out / "loss.png")
    print(f"checkpoint: {final} (step {trainer.step}, loss {last.get('loss', float('nan')):.4f})")


def add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train the hypernetwork").add_subparsers(dest="mode", required=True)
    p = train.add_parser("sft", help="SFT through the frozen base on the SNI training tasks (resumable)")
    p.add_argument("--out", type=Path, required=True, help="run folder: state, metrics, final checkpoint")
    p.add_argument("--init", type=Path, help="starting checkpoint (default: the default checkpoint)")
    for name, field in SFTConfig.model_fields.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", type=type(field.default), help=f"default {field.default}"
        )
    p.set_defaults(run=cmd_train_sft)
