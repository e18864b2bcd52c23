"""``t2l eval sni``: score a checkpoint on the held-out SNI tasks under every condition."""

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from hypernet.adapter import LoraAdapter
from hypernet.base import load_base, spec_of
from hypernet.checkpoint import check_compatible, default_checkpoint
from hypernet.data.choice import KNOWN, benchmark_descriptions, load_questions
from hypernet.data.sni import load_tasks, sample_tasks
from hypernet.errors import T2LError
from hypernet.eval.blend import evaluate_blend
from hypernet.eval.blend import markdown as blend_markdown
from hypernet.eval.choice import CONDITIONS as CHOICE
from hypernet.eval.choice import evaluate_choice
from hypernet.eval.compare import compare_runs
from hypernet.eval.generative import BENCHMARKS, evaluate_generative, load_problems
from hypernet.eval.generative import CONDITIONS as GENERATIVE
from hypernet.eval.report import markdown_table, paired_lines, write_report
from hypernet.eval.sni import CONDITIONS, EvalConfig, evaluate_sni
from hypernet.generator import AdapterGenerator
from hypernet.settings import Settings


def _models(args: argparse.Namespace, settings: Settings) -> tuple[AdapterGenerator, PreTrainedModel, Any]:
    """The checkpoint's generator and the base model, checked to belong together."""
    path = args.checkpoint or settings.checkpoint or default_checkpoint(settings.checkpoints_dir)
    device = settings.torch_device()
    generator = AdapterGenerator.load(path, device=device, trust_remote_code=settings.trust_remote_code)
    dtype = getattr(torch, args.base_dtype)
    model, tokenizer = load_base(settings.base_model, settings.checkpoints_dir, dtype, device)
    check_compatible(
        generator.config, path, base=spec_of(model, settings.base_model, list(generator.config.base.modules))
    )
    return generator, model, tokenizer


def _fixed_adapters(args: argparse.Namespace, generator: AdapterGenerator) -> dict[str, LoraAdapter]:
    """The ``--adapter NAME=FOLDER`` baselines, each scored as a condition of its own."""
    fixed = {}
    for spec in args.adapter or []:
        name, _, folder = spec.partition("=")
        if not folder:
            raise T2LError(f"--adapter wants NAME=FOLDER, got {spec!r}")
        fixed[name] = LoraAdapter.from_peft(Path(folder), generator.config.base)
    return fixed


def _report(result: dict, args: argparse.Namespace) -> None:
    out: Path = args.out
    result["command"], result["base_dtype"] = args.command_line, args.base_dtype
    write_report(result, out)
    print(markdown_table(result, result["metrics"][0]))
    print(paired_lines(result), end="")
    print(f"results: {out / 'result.json'}, {out / 'result.md'}, {out / 'result.png'}")


def cmd_eval_sni(args: argparse.Namespace, settings: Settings) -> None:
    generator, model, tokenizer = _models(args, settings)
    # val and train-test are the test views: held-back instances under unseen paraphrases
    split = {"val": "val-test"}.get(args.split, args.split)
    tasks = sample_tasks(load_tasks(settings.data_dir, split), args.tasks, args.seed)
    cfg = EvalConfig(args.examples, args.descriptions, args.max_new_tokens, args.batch_size, args.seed)
    fixed = _fixed_adapters(args, generator)
    # t2l-shuffled draws from the training tasks' unseen paraphrases, like t2l's own descriptions
    others = load_tasks(settings.data_dir, "train-test") if "t2l-shuffled" in args.conditions else []
    result = evaluate_sni(
        model, tokenizer, generator, tasks, tuple(args.conditions), cfg, fixed, others, args.split
    )
    _report(result, args)


def cmd_eval_blend(args: argparse.Namespace, settings: Settings) -> None:
    generator, model, tokenizer = _models(args, settings)
    tasks = {t.name: t for t in load_tasks(settings.data_dir, args.split)}
    missing = [name for name in args.tasks if name not in tasks]
    if missing:
        raise T2LError(f"no task {missing[0]!r} in the {args.split} split of {settings.data_dir / 'sni'}")
    cfg = EvalConfig(args.examples, 1, args.max_new_tokens, args.batch_size, args.seed)
    result = evaluate_blend(model, tokenizer, generator, tasks[args.tasks[0]], tasks[args.tasks[1]], cfg)
    result["command"], result["base_dtype"] = args.command_line, args.base_dtype
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "result.md").write_text(blend_markdown(result))
    print(blend_markdown(result), end="")
    print(f"results: {args.out / 'result.json'}, {args.out / 'result.md'}")


def cmd_eval_compare(args: argparse.Namespace, settings: Settings) -> None:
    runs = []
    for path in (args.a, args.b):
        file = path / "result.json" if path.is_dir() else path
        if not file.is_file():
            raise T2LError(f"no evaluation result at {file}")
        runs.append(json.loads(file.read_text()))
    print(f"B = {args.b}, A = {args.a}: ROUGE-L points, B - A (95% paired bootstrap interval)")
    for condition, c in compare_runs(*runs).items():
        low, high = c["ci95"]
        print(
            f"  {condition}: {c['b']:.2f} - {c['a']:.2f} = {c['difference']:+.2f} "
            f"[{low:+.2f}, {high:+.2f}] ({c['examples']} paired examples)"
        )


def _base_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="dtype of the base model (the adapters' low-rank products on a CPU stay float32, as served)",
    )


def add_eval(sub: Any) -> None:
    evals = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(
        dest="benchmark", required=True
    )
    p = evals.add_parser("compare", help="two `eval sni` runs of the same examples: B - A per condition")
    p.add_argument("a", type=Path, help="result.json (or its folder) of run A")
    p.add_argument("b", type=Path, help="result.json (or its folder) of run B")
    p.set_defaults(run=cmd_eval_compare)
    p = evals.add_parser("sni", help="SNI tasks: ROUGE-L and exact match under each condition")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument(
        "--split",
        default="eval",
        choices=["eval", "train-test", "val"],
        help="eval: the held-out tasks; train-test / val: the train / val tasks' held-back instances "
        "under unseen paraphrases",
    )
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--examples", type=int, default=30, help="examples per task (at most what it has)")
    p.add_argument("--descriptions", type=int, default=3, help="descriptions per task for t2l")
    p.add_argument("--tasks", type=int, help="a fixed sample of N tasks (seeded by --seed)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", action="append", help="NAME=PEFT_FOLDER: also score this fixed adapter")
    _base_dtype(p)
    p.set_defaults(run=cmd_eval_sni)

    p = evals.add_parser("blend", help="two SNI tasks under each one's adapter and their even blends")
    p.add_argument("--tasks", nargs=2, required=True, metavar="TASK", help="the two SNI task names")
    p.add_argument("--split", default="eval", choices=["eval", "train-test", "val-test"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--examples", type=int, default=30, help="examples per task (at most what it has)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    _base_dtype(p)
    p.set_defaults(run=cmd_eval_blend)

    p = evals.add_parser("mc", help="multiple choice by option log-likelihood (ARC, BoolQ, OBQA, or a JSONL)")
    p.add_argument(
        "benchmark", help=f"one of {', '.join(KNOWN)}, or a JSONL file {{question, choices, answer}}"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--conditions", nargs="+", default=list(CHOICE), choices=CHOICE)
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--descriptions", type=int, default=3, help="how many of T2L's descriptions to use")
    p.add_argument("--description", action="append", help="a task description to use (repeatable)")
    p.add_argument("--adapter", action="append", help="NAME=PEFT_FOLDER: also score this fixed adapter")
    _base_dtype(p)
    p.set_defaults(run=cmd_eval_choice)

    p = evals.add_parser("gen", help="GSM8K accuracy, HumanEval / MBPP pass@1 (greedy, code run sandboxed)")
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--conditions", nargs="+", default=list(GENERATIVE), choices=GENERATIVE)
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--descriptions", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=8)
    _base_dtype(p)
    p.set_defaults(run=cmd_eval_generative)


def cmd_eval_choice(args: argparse.Namespace, settings: Settings) -> None:
    generator, model, tokenizer = _models(args, settings)
    name, questions = load_questions(args.benchmark, settings.data_dir, args.limit)
    descriptions = args.description or benchmark_descriptions(settings.data_dir, name)[: args.descriptions]
    if not descriptions and any(c != "base" for c in args.conditions):
        raise T2LError(f"no task descriptions for {name!r}: pass --description TEXT")
    result = evaluate_choice(
        model,
        tokenizer,
        generator,
        name,
        questions,
        descriptions,
        tuple(args.conditions),
        fixed=_fixed_adapters(args, generator),
    )
    _report(result, args)


def cmd_eval_generative(args: argparse.Namespace, settings: Settings) -> None:
    generator, model, tokenizer = _models(args, settings)
    problems, meta = load_problems(args.benchmark, settings.data_dir, args.limit)
    descriptions = meta["descriptions"][: args.descriptions]
    result = evaluate_generative(
        model,
        tokenizer,
        generator,
        args.benchmark,
        problems,
        meta,
        descriptions,
        tuple(args.conditions),
        args.max_new_tokens,
        args.batch_size,
    )
    _report(result, args)
