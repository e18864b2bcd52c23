"""Super-NaturalInstructions tasks with T2L's paraphrased descriptions, and chat-formatted examples.

Layout (see ``<data_dir>/sni/README.md``): ``sni/tasks/<task>.json`` with ``descriptions`` (about 200
paraphrases of what the task asks) and ``instances`` (``input``/``output``), and ``sni/splits.json``
with the protocol this module enforces:

- ``train`` tasks are trained on, through ``descriptions[:train_descriptions_per_task]`` only and
  without their last ``test_instances[task]`` instances;
- ``val`` tasks (set aside from T2L's training tasks) give the validation loss that selects models;
- ``eval`` tasks (SNI's held-out tasks) are for the final table only;
- ``train-test`` / ``val-test`` are the in-distribution test sets: each task's held-out last instances
  under its unseen paraphrases ``descriptions[train_descriptions_per_task:]``.

As in T2L, a training example is the instance input as the user turn and its output as the assistant
turn; the task itself reaches the model only through the adapter generated from a description.
"""

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from hypernet.chat import chat_ids
from hypernet.errors import T2LError

IGNORE = -100  # label of tokens that carry no loss
SPLITS = ("train", "val", "eval", "train-test", "val-test")


@dataclass
class Task:
    name: str
    descriptions: list[str]
    instances: list[dict[str, str]]
    unseen_descriptions: list[str] = field(default_factory=list)


def _read_splits(root: Path) -> dict:
    splits_file = root / "splits.json"
    if not splits_file.is_file():
        raise T2LError(f"no SNI data at {root} (missing splits.json): set T2L_DATA_DIR")
    return json.loads(splits_file.read_text())


def _read_task(root: Path, name: str) -> Task:
    raw = json.loads((root / "tasks" / f"{name}.json").read_text())
    return Task(
        name=name,
        descriptions=list(raw["descriptions"]),
        instances=[{"input": i["input"], "output": i["output"]} for i in raw["instances"]],
        unseen_descriptions=list(raw.get("eval_unseen_descriptions") or []),
    )


def _held_back(splits: dict, task: Task) -> int:
    """How many of the task's last instances are its test set (0 for a task the protocol has none for)."""
    k = int(splits.get("test_instances", {}).get(task.name, 0))
    if k >= len(task.instances):
        raise T2LError(f"{task.name}: test_instances={k} leaves no instance to train on")
    return k


def training_view(splits: dict, task: Task) -> Task:
    """What training may see of a task: its first descriptions, its instances minus the test ones."""
    seen = int(splits.get("train_descriptions_per_task") or len(task.descriptions))
    k = _held_back(splits, task)
    return replace(
        task,
        descriptions=task.descriptions[:seen],
        instances=task.instances[: len(task.instances) - k],
        unseen_descriptions=[],
    )


def held_out_view(splits: dict, task: Task) -> Task:
    """A task's in-distribution test set: its held-out instances under its unseen paraphrases."""
    seen = int(splits.get("train_descriptions_per_task") or 0)
    k = _held_back(splits, task)
    unseen = task.descriptions[seen:]
    if not k or not unseen:
        raise T2LError(f"{task.name} has no held-out instances or no unseen paraphrases in splits.json")
    return replace(task, descriptions=unseen, instances=task.instances[-k:], unseen_descriptions=[])


def load_tasks(data_dir: Path, split: str) -> list[Task]:
    """The tasks of ``split`` (one of ``SPLITS``), in the order splits.json lists them.

    ``train`` is the training view (what the trainer may see); ``val`` and ``eval`` are whole tasks no
    training ever sees; ``train-test`` and ``val-test`` are the test views of the train and val tasks.
    """
    root = data_dir / "sni"
    splits = _read_splits(root)
    source, _, view = split.partition("-")
    names = splits.get(source)
    if split not in SPLITS or names is None:
        raise T2LError(f"{root / 'splits.json'} has no split {split!r} (known: {', '.join(SPLITS)})")
    tasks = [_read_task(root, name) for name in names]
    if view == "test":
        return [held_out_view(splits, t) for t in tasks]
    if split == "train":
        return [training_view(splits, t) for t in tasks]
    return tasks


def sample_tasks(tasks: list[Task], n: int | None, seed: int) -> list[Task]:
    """A fixed, seeded sample of ``n`` tasks (all of them when ``n`` is None), in the split's order."""
    if n is None or n >= len(tasks):
        return tasks
    keep = set(random.Random(seed).sample(range(len(tasks)), n))
    return [t for i, t in enumerate(tasks) if i in keep]


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
