"""Multiple-choice benchmarks in one generic form: ``{"question", "choices", "answer"}`` (answer = index).

ARC-Easy, ARC-Challenge, BoolQ and OpenBookQA are read from ``<data_dir>/benchmarks/<name>/test.jsonl``
and converted; any JSONL file already in the generic form works too (optionally with a ``context``
line placed before the question), so a new benchmark needs no code.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from hypernet.errors import T2LError

KNOWN = ("arc_easy", "arc_challenge", "boolq", "openbookqa")


@dataclass
class Question:
    prompt: str  # lm-evaluation-harness style: "Question: ...\nAnswer:"
    choices: list[str]  # continuations, each starting with a space
    answer: int


def _from_row(name: str, row: dict) -> Question:
    if name == "boolq":
        prompt = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
        return Question(prompt, [" no", " yes"], int(bool(row["answer"])))
    if name in ("arc_easy", "arc_challenge", "openbookqa"):
        text = row.get("question") or row["question_stem"]
        labels = row["choices"]["label"]
        return Question(f"Question: {text}\nAnswer:", [f" {c}" for c in row["choices"]["text"]],
                        labels.index(row["answerKey"]))  # fmt: skip
    context = f"{row['context']}\n" if row.get("context") else ""
    return Question(f"{context}Question: {row['question']}\nAnswer:", [f" {c}" for c in row["choices"]],
                    int(row["answer"]))  # fmt: skip


def load_questions(source: str, data_dir: Path, limit: int | None = None) -> tuple[str, list[Question]]:
    """(benchmark name, questions) from a known benchmark name or a generic JSONL file."""
    path = data_dir / "benchmarks" / source / "test.jsonl" if source in KNOWN else Path(source)
    if not path.is_file():
        raise T2LError(f"no multiple-choice data at {path}: name one of {', '.join(KNOWN)} or a JSONL file")
    name = source if source in KNOWN else path.stem
    questions = []
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                questions.append(_from_row(name, json.loads(line)))
            except (KeyError, ValueError, TypeError) as err:
                raise T2LError(f"{path}:{number} is not a multiple-choice row ({err!r})") from err
            if limit is not None and len(questions) >= limit:
                break
    return name, questions


def benchmark_descriptions(data_dir: Path, name: str) -> list[str]:
    """T2L's task descriptions for a benchmark (empty when there are none)."""
    path = data_dir / "benchmarks" / "descriptions.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get(name, {}).get("descriptions", []))
