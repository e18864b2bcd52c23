"""GSM8K answer checking, code execution in the sandbox, and the generative runner end to end."""

import json

import pytest

from hypernet.base import load_base
from hypernet.eval.generative import Problem, evaluate_generative, final_number, gsm8k_correct, program_for
from hypernet.eval.sandbox import passes
from hypernet.generator import AdapterGenerator
from hypernet.settings import Settings
from tests.conftest import CHECKPOINTS


def test_final_numbers():
    assert final_number("so 3 + 5 = 8 apples") == 8.0
    assert final_number("She makes $1,234.50 a day") == 1234.5
    assert final_number("no digits") is None
    reference = {"answer": "16 - 3 - 4 = 9\n9 * 2 = 18\n#### 18"}
    assert gsm8k_correct("Step by step: 9 eggs, 9 * 2 = 18. The answer is 18.", reference)
    assert not gsm8k_correct("The answer is 17.", reference)


def test_sandbox_runs_passing_failing_and_runaway_programs():
    assert passes("assert sum([1, 2]) == 3")
    assert not passes("assert sum([1, 2]) == 4")
    assert not passes("while True:\n    pass", timeout_s=2)
    assert not passes("x = bytearray(4 * 2**30)", memory_mb=512)


def test_canonical_solutions_pass_and_broken_ones_fail():
    data = Settings().data_dir / "benchmarks"
    if not (data / "humaneval" / "test.jsonl").is_file():
        pytest.skip(f"no benchmarks at {data}")
    human = json.loads((data / "humaneval" / "test.jsonl").read_text().splitlines()[0])
    assert passes(program_for("humaneval", human["prompt"] + human["canonical_solution"], human))
    assert passes(program_for("humaneval", human["canonical_solution"], human))  # body only: prompt prepended
    assert not passes(program_for("humaneval", human["prompt"] + "    return None\n", human))
    mbpp = json.loads((data / "mbpp" / "test.jsonl").read_text().splitlines()[0])
    assert passes(program_for("mbpp", mbpp["code"], mbpp))
    assert not passes(program_for("mbpp", "def remove_Occ(s, ch):\n    return s\n", mbpp))


def test_runner_end_to_end(tiny_chat_base, tiny_chat_checkpoint, embedder):
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    problems = [Problem(f"What is {i} + 1?", {"answer": f"#### {i + 1}"}) for i in range(3)]
    meta = {"assistant_prefill": "Let's think step by step. "}
    result = evaluate_generative(
        model,
        tokenizer,
        generator,
        "gsm8k",
        problems,
        meta,
        ["Solve math word problems."],
        ("base", "t2l"),
        max_new_tokens=4,
        batch_size=2,
    )
    assert result["metrics"] == ["accuracy"] and result["tasks"]["gsm8k"]["t2l"]["n"] == 3
    assert 0 <= result["average"]["base"]["accuracy"] <= 100
