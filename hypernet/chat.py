"""Chat messages → token ids through the base model's own chat template."""

from transformers import PreTrainedTokenizerBase


def chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool
) -> list[int]:
    """Token ids of ``messages``; with ``generation_prompt``, ending where the assistant's answer starts."""
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])
