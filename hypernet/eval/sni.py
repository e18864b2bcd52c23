"""SNI tasks under several conditions, scored by ROUGE-L and exact match.

Conditions: ``base`` (no adapter), ``base+description`` (the description as the system prompt), ``t2l``
(an adapter generated from one of the task's descriptions, which the hypernetwork never saw),
``t2l-garbage`` (adapters from random letter strings) and ``t2l-shuffled`` (each example under the
description of another, random training task). The last two are controls: an adapter that helps as much
whatever its description says has learned a generic format, not the task it was asked for.
Examples are fixed by the seed, so conditions and checkpoints are compared on the same inputs.
"""

import random
import string
from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.adapter import LoraAdapter
from hypernet.chat import chat_ids
from hypernet.data.sni import Task
from hypernet.errors import T2LError
from hypernet.eval.generate import generate, per_row
from hypernet.eval.metrics import exact_match, rouge_l
from hypernet.eval.paired import paired_difference
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype

CONDITIONS = ("base", "base+description", "t2l", "t2l-garbage", "t2l-shuffled")


@dataclass
class EvalConfig:
    examples: int = 30
    descriptions: int = 3
    max_new_tokens: int = 64
    batch_size: int = 8
    seed: int = 0


@dataclass
class Row:
    """One example to answer under one condition: its task, its instance and the text that conditions it
    (the system prompt for base+description, the adapter's description for t2l conditions)."""

    task: str
    example: dict[str, str]
    text: str


def garbage(n: int, seed: int) -> list[str]:
    """Random strings of letter groups, as long as a typical description."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))

    return [" ".join(word() for _ in range(20)) for _ in range(n)]


def _task_descriptions(task: Task, k: int) -> list[str]:
    return (task.unseen_descriptions or task.descriptions)[:k]


def _rows(
    tasks: list[Task], examples: dict[str, list[dict]], condition: str, cfg: EvalConfig, others: list[Task]
) -> list[Row]:
    """Every example of every task, each with the text its condition gives it."""
    rows = []
    for t, task in enumerate(tasks):
        descriptions = _task_descriptions(task, cfg.descriptions)
        if condition == "t2l-garbage":
            descriptions = garbage(len(descriptions), cfg.seed + t)
        shuffle = random.Random(f"{cfg.seed}-shuffled-{task.name}")
        for i, example in enumerate(examples[task.name]):
            text = descriptions[i % len(descriptions)]
            if condition == "t2l-shuffled":  # a random other training task's description
                other = shuffle.choice([o for o in others if o.name != task.name])
                text = other.descriptions[shuffle.randrange(len(other.descriptions))]
            rows.append(Row(task.name, example, text))
    return rows


def _answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generator: AdapterGenerator,
    layers: LoraLayers,
    rows: list[Row],
    condition: str,
    fixed: dict[str, LoraAdapter],
    cfg: EvalConfig,
) -> list[str]:
    """Greedy answers to ``rows``, batched across tasks by prompt length (short prompts pad together)."""

    def chat(row: Row) -> list[dict[str, str]]:
        system = [{"role": "system", "content": row.text}] if condition == "base+description" else []
        return [*system, {"role": "user", "content": row.example["input"]}]

    chats = [chat(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(chat_ids(tokenizer, chats[i], generation_prompt=True)))
    answers: list[str] = [""] * len(rows)
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        adapters = None
        if condition in fixed:
            adapters = [fixed[condition]] * len(batch)
        elif condition.startswith("t2l"):
            adapters, _ = generator.generate([rows[i].text for i in batch])
        stacked = per_row(adapters, list(range(len(batch))), generator.config.hypernet.scaling)
        outputs = generate(model, tokenizer, layers, [chats[i] for i in batch], stacked, cfg.max_new_tokens)
        for i, text in zip(batch, outputs, strict=True):
            answers[i] = text
    return answers


def evaluate_sni(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generator: AdapterGenerator,
    tasks: list[Task],
    conditions: tuple[str, ...] = CONDITIONS,
    cfg: EvalConfig | None = None,
    fixed: dict[str, LoraAdapter] | None = None,
    others: list[Task] | None = None,
    split: str = "eval",
) -> dict:
    """Scores per task and condition; ``fixed`` adds one condition per named adapter (a LoRA baseline);
    ``others`` are the training tasks whose descriptions ``t2l-shuffled`` draws from."""
    fixed = fixed or {}
    conditions = (*conditions, *fixed)
    cfg = cfg or EvalConfig()
    if "t2l-shuffled" in conditions and len({o.name for o in others or []}) < 2:
        raise T2LError("t2l-shuffled needs the training tasks to draw other tasks' descriptions from")
    layers = LoraLayers(model, generator.config.base, products_dtype(model.dtype, model.device))  # as served
    rng = random.Random(cfg.seed)
    examples = {t.name: rng.sample(t.instances, min(cfg.examples, len(t.instances))) for t in tasks}
    per_task: dict[str, dict[str, dict]] = {t.name: {} for t in tasks}
    for condition in conditions:
        rows = _rows(tasks, examples, condition, cfg, others or [])
        answers = _answer(model, tokenizer, generator, layers, rows, condition, fixed, cfg)
        for task in tasks:
            mine = [(r, a) for r, a in zip(rows, answers, strict=True) if r.task == task.name]
            refs, predictions = [r.example["output"] for r, _ in mine], [a for _, a in mine]
            rouge = list(map(rouge_l, predictions, refs))
            per_task[task.name][condition] = {
                "rougeL": sum(rouge) / len(refs),
                "exact_match": sum(map(exact_match, predictions, refs)) / len(refs),
                "n": len(refs),
                "rougeL_per_example": rouge,
                "predictions": predictions,
                "descriptions": [r.text for r, _ in mine] if condition != "base" else [],
            }
    average = {
        c: {m: sum(per_task[t][c][m] for t in per_task) / len(per_task) for m in ("rougeL", "exact_match")}
        for c in conditions
    }
    return {
        "benchmark": f"sni-{split}",
        "checkpoint": generator.config.id,
        "checkpoint_status": generator.config.status,
        "config": asdict(cfg),
        "split": split,
        "examples": sum(per_task[t][conditions[0]]["n"] for t in per_task),
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
