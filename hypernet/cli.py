"""The ``t2l`` command: generate adapters, create/inspect/import checkpoints, fetch the default base."""

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hypernet.errors import T2LError
from hypernet.settings import Settings


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_generate(args: argparse.Namespace, settings: Settings) -> None:
    from hypernet.base import spec_from_config
    from hypernet.checkpoint import check_compatible, default_checkpoint, read_config
    from hypernet.embed import Embedder
    from hypernet.generator import AdapterGenerator

    path = args.checkpoint or settings.checkpoint or default_checkpoint(settings.checkpoints_dir)
    config = read_config(path)
    if args.base:
        spec = spec_from_config(args.base, list(config.base.modules), settings.checkpoints_dir)
        check_compatible(config, path, base=spec)
    device = settings.torch_device()
    remote = settings.trust_remote_code
    runtime, cache = settings.generator_runtime, settings.cache_dir
    embedder = (
        Embedder(
            args.embedder,
            settings.embedder_pooling,
            device,
            trust_remote_code=remote,
            runtime=runtime,
            cache_dir=cache,
        )
        if args.embedder
        else None
    )
    generator = AdapterGenerator.load(path, embedder, device, remote, runtime, cache)
    (adapter,), timings = generator.generate([args.description])
    start = time.perf_counter()
    adapter.save_peft(args.output)
    write_ms = (time.perf_counter() - start) * 1000
    print(f"adapter: {args.output.resolve()}")
    print(f"checkpoint: {path} ({config.id}, {config.status})")
    if config.status == "untrained":
        print("note: this checkpoint is untrained, so the adapter is the identity (B = 0)")
    if adapter.metadata["description_truncated"] == "true":
        print(f"note: the description was truncated to the embedder's {generator.embedder.max_tokens} tokens")
    print(
        f"timings: embed {timings.embed_ms:.1f} ms, hypernet {timings.hypernet_ms:.1f} ms, "
        f"write {write_ms:.1f} ms"
    )


def cmd_init(args: argparse.Namespace, settings: Settings) -> None:
    from hypernet.base import spec_from_config
    from hypernet.checkpoint import EmbedderSpec, initial_checkpoint, save_checkpoint
    from hypernet.embed import Embedder

    base = spec_from_config(args.base or settings.base_model, args.targets, settings.checkpoints_dir)
    embedder = Embedder(
        args.embedder or settings.embedder,
        args.pooling or settings.embedder_pooling,
        trust_remote_code=settings.trust_remote_code,
    )
    spec = EmbedderSpec(name=embedder.name, dim=embedder.dim, pooling=embedder.pooling)
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank
    model, config = initial_checkpoint(base, spec, args.size, args.rank, alpha, args.seed)
    config = save_checkpoint(model, config, args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"checkpoint: {args.output.resolve()} ({config.id})")
    print(f"UNTRAINED hypernetwork (size {args.size}, {params / 1e6:.2f}M parameters) for {base.describe()}")
    print("it emits B = 0 (identity adapters) until trained; see README for training")


def cmd_info(args: argparse.Namespace, settings: Settings) -> None:
    from hypernet.checkpoint import read_config

    path: Path = args.path
    if (path / "adapter_config.json").is_file():
        print(json.dumps(json.loads((path / "adapter_config.json").read_text()), indent=2))
        return
    config = read_config(path)
    hyper = config.hypernet
    print(f"checkpoint: {path} ({config.id})")
    print(f"status: {config.status}")
    print(f"base: {config.base.describe()}")
    print(f"embedder: {config.embedder.name} (dim {config.embedder.dim}, pooling {config.embedder.pooling})")
    print(
        f"hypernet: size {hyper.size}, latent {hyper.latent_size}, head input {hyper.head_in_size}, "
        f"rank {hyper.rank}, alpha {hyper.alpha:g}, rsLoRA {hyper.use_rslora}, "
        f"targets {', '.join(hyper.target_modules)}"
    )
    print(f"training: {json.dumps(config.training)}")


def cmd_export(args: argparse.Namespace, settings: Settings) -> None:
    import torch

    from hypernet.card import model_card
    from hypernet.checkpoint import load_checkpoint, save_checkpoint

    if (args.source / "adapter_config.json").is_file():
        _export_baseline(args, settings)
        return
    model, config = load_checkpoint(args.source)
    results = []
    for file in args.result or []:
        if not file.is_file():
            raise T2LError(f"no evaluation result at {file}")
        results.append(json.loads(file.read_text()))
    fresh = config.model_copy(update={"created": ""})
    config = save_checkpoint(model, fresh, args.output, getattr(torch, args.dtype))
    (args.output / "README.md").write_text(model_card(config, results))
    size = (args.output / "model.safetensors").stat().st_size / 2**20
    print(f"checkpoint: {args.output.resolve()} ({config.id}, {config.status}, {args.dtype}, {size:.1f} MiB)")


def _export_baseline(args: argparse.Namespace, settings: Settings) -> None:
    """A LoRA baseline's PEFT folder in ``--dtype``, its training provenance kept beside it."""
    import shutil

    import torch

    from hypernet.checkpoint import default_checkpoint, read_config
    from hypernet.train.lora_baseline import export_peft, load_fixed

    config = read_config(settings.checkpoint or default_checkpoint(settings.checkpoints_dir))
    model, training = load_fixed(args.source, config.base, config.hypernet.rank)
    training = training or {"status": "lora baseline"}
    staging = args.output.with_name(args.output.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    export_peft(model, config.model_copy(update={"training": training}), staging, getattr(torch, args.dtype))
    shutil.rmtree(args.output, ignore_errors=True)
    (staging / "adapter").rename(args.output)
    shutil.rmtree(staging)
    size = (args.output / "adapter_model.safetensors").stat().st_size / 2**20
    print(f"adapter: {args.output.resolve()} ({training.get('status')}, {args.dtype}, {size:.1f} MiB)")


def cmd_import_official(args: argparse.Namespace, settings: Settings) -> None:
    from hypernet.official import import_official

    config = import_official(args.source, args.output, settings.checkpoints_dir, base=args.base)
    print(f"checkpoint: {args.output.resolve()} ({config.id}) imported from {args.source}")
    print(f"base: {config.base.describe()}; embedder: {config.embedder.name} (dim {config.embedder.dim})")


def cmd_fetch_base(args: argparse.Namespace, settings: Settings) -> None:
    from hypernet.mirrors import fetch_default_base

    print(f"base: {fetch_default_base(settings.checkpoints_dir, force=args.force)}")


def cmd_convert_gguf(args: argparse.Namespace, settings: Settings) -> None:
    from hypernet.base import convert_gguf

    print(f"base: {convert_gguf(args.gguf, args.output)}")


def build_parser(extend: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The ``t2l`` parser; ``extend`` may add subcommands (the server adds ``serve``)."""
    parser = argparse.ArgumentParser(prog="t2l", description="Text-to-LoRA: task description → LoRA adapter")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a PEFT adapter for a task description")
    p.add_argument("description")
    p.add_argument("-o", "--output", type=Path, required=True, help="adapter folder to write")
    p.add_argument("--checkpoint", type=Path, help="hypernetwork checkpoint folder (default: T2L_CHECKPOINT)")
    p.add_argument("--embedder", help="override the checkpoint's embedder (must match it)")
    p.add_argument("--base", help="check that the checkpoint fits this base model")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("init", help="create an UNTRAINED checkpoint for a base (the start of training)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--base", help="base model id, folder or .gguf (default: T2L_BASE_MODEL)")
    p.add_argument("--embedder", help="sentence-transformers model (default: T2L_EMBEDDER)")
    p.add_argument("--pooling", choices=["model", "cls", "mean", "lasttoken", "max"])
    p.add_argument("--size", choices=["S", "M", "L"], default="M")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: 2 x rank)")
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("info", help="describe a checkpoint or adapter folder")
    p.add_argument("path", type=Path)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser(
        "export", help="a trained checkpoint (or LoRA baseline) to ship: compact weights and a model card"
    )
    p.add_argument(
        "source",
        type=Path,
        help="a run's OUT/checkpoint (or OUT/best/checkpoint), or a LoRA baseline's PEFT folder",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--result", type=Path, action="append", help="an eval result.json for the card")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("import-official", help="convert a reference T2L release folder to our format")
    p.add_argument("source", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--base", help="base model (default: args.yaml's model_dir)")
    p.set_defaults(run=cmd_import_official)

    p = sub.add_parser("fetch-base", help="download and convert the default base (SmolLM2-135M-Instruct)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=cmd_fetch_base)

    p = sub.add_parser("convert-gguf", help="convert a GGUF model to a safetensors folder")
    p.add_argument("gguf", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(run=cmd_convert_gguf)
    from hypernet.eval.cli import add_eval
    from hypernet.train.cli import add_train

    add_train(sub)
    add_eval(sub)
    if extend is not None:
        extend(sub)
    return parser


def main(argv: list[str] | None = None, extend: Callable[[Any], None] | None = None) -> int:
    args = build_parser(extend).parse_args(argv)
    args.command_line = shlex.join(["t2l", *(sys.argv[1:] if argv is None else argv)])  # for provenance
    try:
        settings = Settings()
    except ValidationError as err:
        first = err.errors()[0]
        name = "T2L_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        print(f"t2l: error: invalid setting {name}: {first['msg']}", file=sys.stderr)
        return 2
    try:
        _quiet_libraries()
        args.run(args, settings)
    except T2LError as err:
        print(f"t2l: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
