"""Held-out SNI tasks under several conditions, scored by ROUGE-L and exact match.

Conditions: ``base`` (no adapter), ``base+description`` (the description as the system prompt), ``t2l``
(an adapter generated from each of the task's descriptions, which the hypernetwork never saw) and
``t2l-garbage`` (adapters from random character strings: a control that should score clearly lower).
Examples are fixed by the seed, so conditions and checkpoints are compared on the same inputs.
"""

import random
import string
from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.adapter import LoraAdapter
from hypernet.data.sni import Task
from hypernet.eval.generate import generate, per_row
from hypernet.eval.metrics import exact_match, rouge_l
from hypernet.eval.paired import paired_difference
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers

CONDITIONS = ("base", "base+description", "t2l", "t2l-garbage")


@dataclass
class EvalConfig:
    examples: int = 10
    descriptions: int = 3
    max_new_tokens: int = 64
    batch_size: int = 8
    seed: int = 0


def garbage(n: int, seed: int) -> list[str]:
    """Random strings of letter groups, as long as a typical description."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))

    return [" ".join(word() for _ in range(20)) for _ in range(n)]


def _task_descriptions(task: Task, k: int) -> list[str]:
    return (task.unseen_descriptions or task.descriptions)[:k]


def evaluate_sni(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generator: AdapterGenerator,
    tasks: list[Task],
    conditions: tuple[str, ...] = CONDITIONS,
    cfg: EvalConfig | None = None,
    fixed: dict[str, LoraAdapter] | None = None,
) -> dict:
    """Scores per task and condition; ``fixed`` adds one condition per named adapter (a LoRA baseline)."""
    fixed = fixed or {}
    conditions = (*conditions, *fixed)
    cfg = cfg or EvalConfig()
    layers = LoraLayers(model, generator.config.base)
    scaling = generator.config.hypernet.scaling
    rng = random.Random(cfg.seed)
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for t, task in enumerate(tasks):
        examples = rng.sample(task.instances, min(cfg.examples, len(task.instances)))
        descriptions = _task_descriptions(task, cfg.descriptions)
        per_task[task.name] = {}
        for condition in conditions:
            texts = garbage(len(descriptions), cfg.seed + t) if condition == "t2l-garbage" else descriptions
            adapters = None
            if condition in fixed:
                adapters = [fixed[condition]] * len(texts)
            elif condition.startswith("t2l"):
                adapters, _ = generator.generate(texts)
            predictions: list[str] = []
            for start in range(0, len(examples), cfg.batch_size):
                batch = examples[start : start + cfg.batch_size]
                rows = [(start + i) % len(texts) for i in range(len(batch))]  # each example, one description
                chats = [
                    ([{"role": "system", "content": texts[r]}] if condition == "base+description" else [])
                    + [{"role": "user", "content": ex["input"]}]
                    for ex, r in zip(batch, rows, strict=True)
                ]
                stacked = per_row(adapters, rows, scaling)
                predictions += generate(model, tokenizer, layers, chats, stacked, cfg.max_new_tokens)
            refs = [ex["output"] for ex in examples]
            rouge = list(map(rouge_l, predictions, refs))
            per_task[task.name][condition] = {
                "rougeL": sum(rouge) / len(refs),
                "exact_match": sum(map(exact_match, predictions, refs)) / len(refs),
                "n": len(refs),
                "rougeL_per_example": rouge,
                "predictions": predictions,
            }
    average = {
        c: {m: sum(per_task[t][c][m] for t in per_task) / len(per_task) for m in ("rougeL", "exact_match")}
        for c in conditions
    }
    return {
        "benchmark": "sni-held-out",
        "checkpoint": generator.config.id,
        "checkpoint_status": generator.config.status,
        "config": asdict(cfg),
        "metrics": ["rougeL", "exact_match"],
        "conditions": list(conditions),
        "tasks": per_task,
        "average": average,
        "paired": _paired(per_task, conditions),
    }


def _paired(per_task: dict, conditions: tuple[str, ...]) -> dict[str, dict]:
    """T2L against every other condition, example by example (ROUGE-L): is a gap more than noise?"""
    if "t2l" not in conditions:
        return {}

    def scores(c: str) -> dict[str, list[float]]:
        return {t: per_task[t][c]["rougeL_per_example"] for t in per_task}

    return {f"t2l - {c}": paired_difference(scores("t2l"), scores(c)) for c in conditions if c != "t2l"}
