"""Does a blend mix its tasks? Two SNI tasks, each scored under four adapters: task A's description,
task B's, their even blend in embedding space, and their exact weight-update mix.

A blend that mixes should land between the two single-description adapters on each task: below the
adapter made for that task, above the one made for the other. Every adapter answers the same examples,
so each comparison is paired (difference and 95% bootstrap interval, ``hypernet.eval.paired``).
"""

import random
from dataclasses import asdict

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.adapter import LoraAdapter
from hypernet.blend import Blend
from hypernet.chat import chat_ids
from hypernet.data.sni import Task
from hypernet.eval.generate import generate, per_row
from hypernet.eval.metrics import rouge_l
from hypernet.eval.paired import paired_difference
from hypernet.eval.sni import EvalConfig
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype


def _description(task: Task) -> str:
    return (task.unseen_descriptions or task.descriptions)[0]


def _scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layers: LoraLayers,
    adapter: LoraAdapter,
    examples: list[dict],
    cfg: EvalConfig,
    scaling: float,
) -> list[float]:
    chats = [[{"role": "user", "content": e["input"]}] for e in examples]
    order = sorted(
        range(len(chats)), key=lambda i: len(chat_ids(tokenizer, chats[i], generation_prompt=True))
    )
    scores = [0.0] * len(chats)
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        stacked = per_row([adapter], [0] * len(batch), scaling)
        answers = generate(model, tokenizer, layers, [chats[i] for i in batch], stacked, cfg.max_new_tokens)
        for i, answer in zip(batch, answers, strict=True):
            scores[i] = rouge_l(answer, examples[i]["output"])
    return scores


def evaluate_blend(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generator: AdapterGenerator,
    task_a: Task,
    task_b: Task,
    cfg: EvalConfig,
) -> dict:
    layers = LoraLayers(model, generator.config.base, products_dtype(model.dtype, model.device))  # as served
    rng = random.Random(cfg.seed)
    examples = {
        t.name: rng.sample(t.instances, min(cfg.examples, len(t.instances))) for t in (task_a, task_b)
    }
    a, b = _description(task_a), _description(task_b)
    (only_a, only_b), _ = generator.generate([a, b])
    adapters = {
        "A": only_a,
        "B": only_b,
        "blend (embedding)": generator.generate_blend(Blend.of([(a, 1), (b, 1)], "embedding"))[0],
        "blend (weights)": generator.generate_blend(Blend.of([(a, 1), (b, 1)], "weights"))[0],
    }
    scaling = generator.config.hypernet.scaling  # weights blends keep it (their alpha is set so)
    scores = {
        name: {
            task: _scores(model, tokenizer, layers, adapter, examples[task], cfg, scaling)
            for task in examples
        }
        for name, adapter in adapters.items()
    }
    table = {name: {t: sum(s) / len(s) for t, s in per.items()} for name, per in scores.items()}
    paired, between = {}, {}
    for blend in ("blend (embedding)", "blend (weights)"):
        for task in examples:
            for single in ("A", "B"):
                key = f"{blend} - {single} on {task}"
                paired[key] = paired_difference({task: scores[blend][task]}, {task: scores[single][task]})
            low, high = sorted((table["A"][task], table["B"][task]))
            between[f"{blend} on {task}"] = low <= table[blend][task] <= high
    return {
        "tasks": {"A": task_a.name, "B": task_b.name},
        "descriptions": {"A": a, "B": b},
        "checkpoint": generator.config.id,
        "config": asdict(cfg),
        "rougeL": table,
        "between": between,
        "paired": paired,
        "per_example": scores,
    }


def markdown(result: dict) -> str:
    names = result["tasks"]
    lines = [
        f"| adapter | ROUGE-L on A ({names['A']}) | ROUGE-L on B ({names['B']}) |",
        "| --- | ---: | ---: |",
    ]
    for adapter, row in result["rougeL"].items():
        lines.append(f"| {adapter} | {row[names['A']]:.1f} | {row[names['B']]:.1f} |")
    lines.append("")
    for key, value in result["paired"].items():
        low, high = value["ci95"]
        lines.append(f"- {key}: {value['difference']:+.1f} (95% CI {low:+.1f}..{high:+.1f})")
    for key, value in result["between"].items():
        lines.append(f"- {key}: {'between A and B' if value else 'NOT between A and B'}")
    return "\n".join(lines) + "\n"
