"""Benchmarks scored on generated answers: GSM8K (final number), HumanEval and MBPP (pass@1, greedy).

Prompts, assistant prefills and task descriptions are T2L's (``benchmarks/descriptions.json``).
Code is executed by ``hypernet.eval.sandbox`` in a separate interpreter with time and memory limits.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.errors import T2LError
from hypernet.eval.generate import generate, per_row
from hypernet.eval.sandbox import passes
from hypernet.eval.sni import garbage
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype

BENCHMARKS = ("gsm8k", "humaneval", "mbpp")
CONDITIONS = ("base", "base+description", "t2l", "t2l-garbage")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Problem:
    prompt: str
    reference: dict


def final_number(text: str) -> float | None:
    """The last number in a text (commas dropped), e.g. GSM8K's answer after ``####``."""
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def gsm8k_correct(prediction: str, reference: dict) -> bool:
    expected = final_number(reference["answer"].split("####")[-1])
    got = final_number(prediction)
    return got is not None and expected is not None and abs(got - expected) < 1e-6


def program_for(benchmark: str, code: str, reference: dict) -> str:
    if benchmark == "humaneval":
        if f"def {reference['entry_point']}" not in code:  # only a body came back: complete the prompt
            code = reference["prompt"] + code
        return f"{code}\n\n{reference['test']}\n\ncheck({reference['entry_point']})\n"
    return "\n".join([code, reference.get("test_setup_code", ""), *reference["test_list"]]) + "\n"


def load_problems(name: str, data_dir: Path, limit: int | None) -> tuple[list[Problem], dict]:
    root = data_dir / "benchmarks"
    path = root / name / "test.jsonl"
    if not path.is_file():
        raise T2LError(f"no {name} data at {path}")
    meta = json.loads((root / "descriptions.json").read_text())[name]
    template = meta["user_prompt_template"]
    problems = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if name == "gsm8k":
            prompt = template.format(question=row["question"])
        elif name == "humaneval":
            prompt = template.format(prompt=row["prompt"])
        else:
            prompt = template.format(prompt=row["text"], assertions="\n".join(row["test_list"]))
        problems.append(Problem(prompt, row))
        if limit is not None and len(problems) >= limit:
            break
    return problems, meta


def evaluate_generative(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generator: AdapterGenerator,
    name: str,
    problems: list[Problem],
    meta: dict,
    descriptions: list[str],
    conditions: tuple[str, ...] = CONDITIONS,
    max_new_tokens: int = 384,
    batch_size: int = 8,
) -> dict:
    """Accuracy (GSM8K) or pass@1 (code), 0..100, under each condition."""
    layers = LoraLayers(model, generator.config.base, products_dtype(model.dtype, model.device))  # as served
    scaling = generator.config.hypernet.scaling
    prefill, stop = meta.get("assistant_prefill", ""), (["```"] if name != "gsm8k" else None)
    scores = {}
    for condition in conditions:
        texts = garbage(len(descriptions), 0) if condition == "t2l-garbage" else descriptions
        made = generator.generate(texts)[0] if condition.startswith("t2l") else None
        correct = 0
        for start in range(0, len(problems), batch_size):
            batch = problems[start : start + batch_size]
            rows = [(start + i) % len(texts) for i in range(len(batch))]
            chats = [
                ([{"role": "system", "content": texts[r]}] if condition == "base+description" else [])
                + [{"role": "user", "content": p.prompt}]
                for p, r in zip(batch, rows, strict=True)
            ]
            adapters = per_row(made, rows, scaling)
            answers = generate(model, tokenizer, layers, chats, adapters, max_new_tokens, prefill, stop)
            for problem, answer in zip(batch, answers, strict=True):
                if name == "gsm8k":
                    correct += gsm8k_correct(answer, problem.reference)
                else:
                    correct += passes(program_for(name, answer, problem.reference))
        metric = "accuracy" if name == "gsm8k" else "pass@1"
        scores[condition] = {metric: 100 * correct / max(1, len(problems)), "n": len(problems)}
    metric = "accuracy" if name == "gsm8k" else "pass@1"
    return {
        "benchmark": name,
        "checkpoint": generator.config.id,
        "checkpoint_status": generator.config.status,
        "metrics": [metric],
        "conditions": list(conditions),
        "tasks": {name: scores},
        "average": {c: {metric: scores[c][metric]} for c in conditions},
    }
