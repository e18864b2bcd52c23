"""Super-NaturalInstructions tasks with T2L's paraphrased descriptions, and chat-formatted examples.

Layout (see ``<data_dir>/sni/README.md``): ``sni/tasks/<task>.json`` with ``descriptions`` (about 200
paraphrases of what the task asks) and ``instances`` (``input``/``output``), and ``sni/splits.json``
naming the training and held-out tasks. As in T2L, a training example is the instance input as the
user turn and its output as the assistant turn; the task itself reaches the model only through the
adapter generated from a description.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from hypernet.chat import chat_ids
from hypernet.errors import T2LError

IGNORE = -100  # label of tokens that carry no loss


@dataclass
class Task:
    name: str
    descriptions: list[str]
    instances: list[dict[str, str]]
    unseen_descriptions: list[str] = field(default_factory=list)


def load_tasks(data_dir: Path, split: str) -> list[Task]:
    """The tasks of ``split`` ("train" or "eval"), in the order splits.json lists them."""
    root = data_dir / "sni"
    splits_file = root / "splits.json"
    if not splits_file.is_file():
        raise T2LError(f"no SNI data at {root} (missing splits.json): set T2L_DATA_DIR")
    names = json.loads(splits_file.read_text()).get(split)
    if names is None:
        raise T2LError(f"{splits_file} has no split {split!r}")
    tasks = []
    for name in names:
        raw = json.loads((root / "tasks" / f"{name}.json").read_text())
        tasks.append(
            Task(
                name=name,
                descriptions=list(raw["descriptions"]),
                instances=[{"input": i["input"], "output": i["output"]} for i in raw["instances"]],
                unseen_descriptions=list(raw.get("eval_unseen_descriptions") or []),
            )
        )
    return tasks


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one chat exchange; only the response (and its end-of-turn) carries loss.

    Too long an exchange keeps the start of its response and the end of its prompt.
    """
    chat = [{"role": "user", "content": prompt}]
    prefix = chat_ids(tokenizer, chat, generation_prompt=True)
    full = chat_ids(tokenizer, [*chat, {"role": "assistant", "content": response}], generation_prompt=False)
    answer = full[len(prefix) :]
    answer = answer[: max(max_len // 2, max_len - len(prefix))]
    prefix = prefix[-(max_len - len(answer)) :]
    return prefix + answer, [IGNORE] * len(prefix) + answer
