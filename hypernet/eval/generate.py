"""Greedy generation for a batch of chats, each row under its own adapter (or none)."""

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.adapter import LoraAdapter
from hypernet.chat import chat_ids
from hypernet.lora import LoraLayers

PerRow = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]  # per-row A, B and the LoRA scale


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layers: LoraLayers,
    chats: list[list[dict[str, str]]],
    adapters: PerRow | None,
    max_new_tokens: int,
    prefill: str = "",
    stop: list[str] | None = None,
) -> list[str]:
    """Answers to ``chats``; ``adapters``: per-row A [rows, L, r, in], B [rows, L, out, r], and the scale."""
    prefilled = tokenizer(prefill, add_special_tokens=False)["input_ids"] if prefill else []
    prompts = [chat_ids(tokenizer, chat, generation_prompt=True) + prefilled for chat in chats]
    longest = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding, so every row continues from its last token
        ids[row, longest - len(prompt) :] = torch.tensor(prompt)
        mask[row, longest - len(prompt) :] = 1
    if adapters is not None:
        layers.set(*adapters)
    try:
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            **({"stop_strings": stop, "tokenizer": tokenizer} if stop else {}),
        )
    finally:
        layers.clear()
    texts = [tokenizer.decode(row[longest:], skip_special_tokens=True) for row in out]
    if stop:  # rows that stopped before the batch did kept going: cut each at its first stop string
        texts = [min((t.split(s)[0] for s in stop), key=len) for t in texts]
    return [t.strip() for t in texts]


def per_row(adapters: list[LoraAdapter] | None, rows: list[int], scaling: float) -> PerRow | None:
    """Each batch row's adapter (``adapters[rows[i]]``), stacked for ``LoraLayers.set``; None for none."""
    if adapters is None:
        return None
    A = {m: torch.stack([adapters[r].A[m] for r in rows]) for m in adapters[0].A}
    B = {m: torch.stack([adapters[r].B[m] for r in rows]) for m in adapters[0].B}
    return A, B, scaling
