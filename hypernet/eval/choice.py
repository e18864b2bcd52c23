"""Multiple-choice accuracy by log-likelihood of each option, as lm-evaluation-harness scores it.

Every (question, option) pair is one row; its score is the summed log-probability of the option's
tokens after the prompt (``acc``), and that sum divided by the option's length in characters
(``acc_norm``). Rows of one batch may each run under their own adapter.
"""

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.adapter import LoraAdapter
from hypernet.data.choice import Question
from hypernet.eval.generate import PerRow, per_row
from hypernet.eval.sni import garbage
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype

CONDITIONS = ("base", "base+description", "t2l", "t2l-garbage")


@torch.no_grad()
def option_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layers: LoraLayers,
    pairs: list[tuple[str, str]],
    adapters: PerRow | None = None,
) -> list[float]:
    """Summed log-probability of each continuation given its prompt."""
    encoded = []
    for prompt, option in pairs:
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        continuation = tokenizer(option, add_special_tokens=False)["input_ids"]
        encoded.append((context + continuation, len(context)))
    longest = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(encoded), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)  # the positions that predict an option token
    for row, (tokens, start) in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        keep[row, start - 1 : len(tokens) - 1] = True
    targets = ids[:, 1:][keep[:, :-1]].to(device)
    if adapters is not None:
        layers.set(*adapters)
    try:
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device)
        ).logits.float()
    finally:
        layers.clear()
    logprobs = torch.log_softmax(logits.reshape(len(targets), -1), dim=-1).gather(-1, targets[:, None])[:, 0]
    return [float(part.sum()) for part in logprobs.split(keep.sum(dim=1).tolist())]


def score(questions: list[Question], logprobs: list[float]) -> dict[str, float]:
    """Accuracy (0..100) from the flat per-option log-probabilities of ``questions``, in order."""
    correct = correct_norm = 0
    at = 0
    for q in questions:
        values = logprobs[at : at + len(q.choices)]
        at += len(q.choices)
        normed = [v / max(1, len(c)) for v, c in zip(values, q.choices, strict=True)]
        correct += max(range(len(values)), key=values.__getitem__) == q.answer
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == q.answer
    n = max(1, len(questions))
    return {"acc": 100 * correct / n, "acc_norm": 100 * correct_norm / n, "n": len(questions)}


def evaluate_choice(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generator: AdapterGenerator,
    name: str,
    questions: list[Question],
    descriptions: list[str],
    conditions: tuple[str, ...] = CONDITIONS,
    batch_questions: int = 4,
    seed: int = 0,
    fixed: dict[str, LoraAdapter] | None = None,
) -> dict:
    """Accuracy under each condition; question i uses description i mod len(descriptions); ``fixed`` adds
    one condition per named adapter (a LoRA baseline)."""
    fixed = fixed or {}
    conditions = (*conditions, *fixed)
    layers = LoraLayers(model, generator.config.base, products_dtype(model.dtype, model.device))  # as served
    scaling = generator.config.hypernet.scaling
    scores = {}
    for condition in conditions:
        texts = garbage(len(descriptions), seed) if condition == "t2l-garbage" else descriptions
        made = generator.generate(texts)[0] if condition.startswith("t2l") else None
        if condition in fixed:
            made = [fixed[condition]] * len(texts)
        logprobs: list[float] = []
        for start in range(0, len(questions), batch_questions):
            batch = list(enumerate(questions[start : start + batch_questions], start))
            rows = [(i % len(texts), q, c) for i, q in batch for c in q.choices]
            prefix = [f"{texts[d]}\n\n" if condition == "base+description" else "" for d, _, _ in rows]
            pairs = [(p + q.prompt, c) for p, (_, q, c) in zip(prefix, rows, strict=True)]
            stacked = per_row(made, [d for d, _, _ in rows], scaling)
            logprobs += option_logprobs(model, tokenizer, layers, pairs, stacked)
        scores[condition] = score(questions, logprobs)
    return {
        "benchmark": name,
        "checkpoint": generator.config.id,
        "checkpoint_status": generator.config.status,
        "metrics": ["acc", "acc_norm"],
        "conditions": list(conditions),
        "tasks": {name: scores},
        "average": {c: {m: scores[c][m] for m in ("acc", "acc_norm")} for c in conditions},
    }
