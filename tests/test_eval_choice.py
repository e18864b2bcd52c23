"""Multiple-choice scoring: log-likelihoods checked against a direct computation, accuracy by hand."""

import json

import pytest
import torch

from hypernet.base import load_base
from hypernet.data.choice import Question, load_questions
from hypernet.errors import T2LError
from hypernet.eval.choice import CONDITIONS, evaluate_choice, option_logprobs, score
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers
from hypernet.settings import Settings
from tests.conftest import CHECKPOINTS


def test_option_logprobs_equal_a_direct_computation(tiny_chat_base, tiny_chat_checkpoint):
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint)
    layers = LoraLayers(model, generator.config.base)
    pairs = [("Question: Is ice cold?\nAnswer:", " yes"), ("Question: 2+2?\nAnswer:", " four apples")]
    batched = option_logprobs(model, tokenizer, layers, pairs)
    for (prompt, option), got in zip(pairs, batched, strict=True):
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tokens = context + tokenizer(option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
        expected = sum(
            torch.log_softmax(logits[i - 1], -1)[tokens[i]].item() for i in range(len(context), len(tokens))
        )
        assert got == pytest.approx(expected, abs=1e-3)


def test_accuracy_by_hand():
    questions = [Question("q1", [" a", " bbbbbbbb"], 1), Question("q2", [" x", " y", " z"], 0)]
    # q1: raw picks option 0 (-1 > -4), per-character picks option 1 (-4/9 > -1/2); q2: option 0 both ways
    result = score(questions, [-1.0, -4.0, -0.5, -2.0, -3.0])
    assert result == {"acc": 50.0, "acc_norm": 100.0, "n": 2}


def test_generic_jsonl_and_bad_rows(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text(
        json.dumps(
            {"question": "Sky colour?", "choices": ["blue", "red"], "answer": 0, "context": "Look up."}
        )
        + "\n"
    )
    name, questions = load_questions(str(good), tmp_path)
    assert name == "mine" and questions[0].prompt == "Look up.\nQuestion: Sky colour?\nAnswer:"
    assert questions[0].choices == [" blue", " red"] and questions[0].answer == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + json.dumps({"question": "no choices"}) + "\n")
    with pytest.raises(T2LError, match=r"bad\.jsonl:2"):
        load_questions(str(bad), tmp_path)


def test_known_benchmarks_load_from_the_shared_data():
    data_dir = Settings().data_dir
    if not (data_dir / "benchmarks").is_dir():
        pytest.skip(f"no benchmarks at {data_dir}")
    for name, options in (("arc_easy", 4), ("boolq", 2), ("openbookqa", 4)):
        _, questions = load_questions(name, data_dir, limit=5)
        assert len(questions) == 5 and all(len(q.choices) >= options - 1 for q in questions)
        assert all(0 <= q.answer < len(q.choices) for q in questions)


def test_conditions_end_to_end(tiny_chat_base, tiny_chat_checkpoint, embedder):
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    questions = [Question(f"Question: item {i}?\nAnswer:", [" yes", " no"], i % 2) for i in range(5)]
    result = evaluate_choice(
        model, tokenizer, generator, "toy", questions, ["Answer yes or no."], CONDITIONS, 2
    )
    assert result["conditions"] == list(CONDITIONS) and result["metrics"] == ["acc", "acc_norm"]
    for condition in CONDITIONS:
        assert result["tasks"]["toy"][condition]["n"] == 5
        assert result["average"][condition]["acc"] in {0.0, 20.0, 40.0, 60.0, 80.0, 100.0}


def test_eval_mc_command_writes_its_report(
    tiny_chat_base, tiny_chat_checkpoint, tmp_path, monkeypatch, capsys
):
    from hypernet.cli import main

    data = tmp_path / "yesno.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2}) + "\n"
            for i in range(4)
        )
    )
    monkeypatch.setenv("T2L_BASE_MODEL", str(tiny_chat_base))
    (made,), _ = AdapterGenerator.load(tiny_chat_checkpoint).generate(["Answer yes or no."])
    made.save_peft(tmp_path / "peft")
    code = main(
        [
            "eval",
            "mc",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_chat_checkpoint),
            "--description",
            "Answer yes or no.",
            "--conditions",
            "base",
            "t2l",
            "--adapter",
            f"same={tmp_path / 'peft'}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["benchmark"] == "yesno" and result["tasks"]["yesno"]["t2l"]["n"] == 4
    assert result["conditions"] == ["base", "t2l", "same"] and result["command"].startswith("t2l eval mc")
    # the generated adapter, read back from its PEFT folder as a fixed one, scores the same
    assert result["tasks"]["yesno"]["same"] == result["tasks"]["yesno"]["t2l"]
    assert "| yesno |" in capsys.readouterr().out
