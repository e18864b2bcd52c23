"""The SNI evaluation: hand-checked metric values and the harness end to end on a tiny model."""

import json

import pytest

from hypernet.base import load_base
from hypernet.eval.metrics import exact_match, normalize_answer, rouge_l
from hypernet.eval.report import markdown_table, write_report
from hypernet.eval.sni import CONDITIONS, EvalConfig, evaluate_sni, garbage
from hypernet.generator import AdapterGenerator
from tests.conftest import CHECKPOINTS
from tests.test_train_sft import toy_tasks


def test_metrics_by_hand():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is 5 of 6 words each way: F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(100 * 5 / 6)
    assert rouge_l("running dogs", "dogs run") == pytest.approx(50.0)  # stemmed: run, dog / dog, run
    assert rouge_l("", "anything") == 0.0
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("The cat.", "cat") == 100.0 and exact_match("cats", "cat") == 0.0


def test_garbage_descriptions_are_reproducible_and_not_words():
    assert garbage(3, 1) == garbage(3, 1) != garbage(3, 2)
    assert all(len(g.split()) == 20 for g in garbage(3, 1))


def test_harness_end_to_end(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    cfg = EvalConfig(examples=3, descriptions=2, max_new_tokens=4, batch_size=2)
    result = evaluate_sni(model, tokenizer, generator, toy_tasks()[:2], CONDITIONS, cfg, others=toy_tasks())
    assert list(result["tasks"]) == ["upper", "reverse"] and result["conditions"] == list(CONDITIONS)
    for scores in result["tasks"].values():
        for condition in CONDITIONS:
            assert scores[condition]["n"] == 3 and 0 <= scores[condition]["rougeL"] <= 100
    average = result["average"]["base"]["rougeL"]
    assert average == pytest.approx(sum(s["base"]["rougeL"] for s in result["tasks"].values()) / 2)
    again = evaluate_sni(model, tokenizer, generator, toy_tasks()[:2], ("t2l",), cfg)
    assert again["tasks"]["upper"]["t2l"] == result["tasks"]["upper"]["t2l"]  # same inputs, greedy

    write_report(result, tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["average"] == result["average"]
    table = markdown_table(result)
    assert table.splitlines()[0] == "| task | base | base+description | t2l | t2l-garbage | t2l-shuffled |"
    assert "| **average** |" in table and (tmp_path / "result.png").stat().st_size > 0
    assert set(result["paired"]) == {f"t2l - {c}" for c in CONDITIONS if c != "t2l"}
    gap = result["average"]["t2l"]["rougeL"] - result["average"]["base"]["rougeL"]
    assert result["paired"]["t2l - base"]["difference"] == pytest.approx(gap)
    assert "## paired differences" in (tmp_path / "result.md").read_text()


def test_a_fixed_peft_adapter_is_one_more_condition(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    from hypernet.adapter import LoraAdapter
    from hypernet.errors import T2LError

    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    (made,), _ = generator.generate([toy_tasks()[0].descriptions[0]])
    made.save_peft(tmp_path / "peft")
    fixed = {"mt-lora": LoraAdapter.from_peft(tmp_path / "peft", generator.config.base)}
    cfg = EvalConfig(examples=2, descriptions=1, max_new_tokens=4, batch_size=2)
    result = evaluate_sni(model, tokenizer, generator, toy_tasks()[:1], ("t2l",), cfg, fixed)
    assert result["conditions"] == ["t2l", "mt-lora"]
    # the same adapter, once generated and once read back from its PEFT folder, answers the same
    assert result["tasks"]["upper"]["mt-lora"] == result["tasks"]["upper"]["t2l"]
    with pytest.raises(T2LError, match="not a PEFT LoRA folder"):
        LoraAdapter.from_peft(tmp_path, generator.config.base)


def test_paired_difference_by_hand():
    from hypernet.eval.paired import paired_difference

    a = {"x": [100.0, 0.0, 50.0], "y": [10.0, 20.0]}
    same = paired_difference(a, a)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["examples"] == 5
    shifted = paired_difference({t: [v + 7 for v in s] for t, s in a.items()}, a)
    assert shifted["difference"] == pytest.approx(7.0) and shifted["ci95"] == pytest.approx([7.0, 7.0])
    # task-averaged: task x gains (100 - 0) / 3 per example, task y nothing; mean of the two task means
    one = paired_difference({"x": [100.0, 0.0, 0.0], "y": [5.0, 5.0]}, {"x": [0.0] * 3, "y": [5.0, 5.0]})
    assert one["difference"] == pytest.approx(100 / 3 / 2)
    assert one["ci95"][0] == pytest.approx(0.0) and one["ci95"][1] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        paired_difference({"x": [1.0]}, {"x": [1.0, 2.0]})


def test_shuffled_rows_take_another_tasks_description(tiny_chat_base, tiny_chat_checkpoint, embedder):
    from hypernet.errors import T2LError

    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    cfg = EvalConfig(examples=4, descriptions=2, max_new_tokens=2, batch_size=3)
    tasks = toy_tasks()
    result = evaluate_sni(model, tokenizer, generator, tasks, ("t2l", "t2l-shuffled"), cfg, others=tasks)
    owner = {d: t.name for t in tasks for d in t.descriptions}
    for task in tasks:
        own = result["tasks"][task.name]["t2l"]["descriptions"]
        shuffled = result["tasks"][task.name]["t2l-shuffled"]["descriptions"]
        assert {owner[d] for d in own} == {task.name} and len(shuffled) == 4
        assert all(owner[d] != task.name for d in shuffled)
    again = evaluate_sni(model, tokenizer, generator, tasks, ("t2l-shuffled",), cfg, others=tasks)
    assert again["tasks"]["upper"]["t2l-shuffled"] == result["tasks"]["upper"]["t2l-shuffled"]
    with pytest.raises(T2LError, match="t2l-shuffled needs"):
        evaluate_sni(model, tokenizer, generator, tasks, ("t2l-shuffled",), cfg)


def test_rows_batched_across_tasks_answer_as_one_at_a_time(tiny_chat_base, tiny_chat_checkpoint, embedder):
    """Batching every task's rows together by length changes no answer (greedy, per-row adapters)."""
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    tasks = toy_tasks()
    runs = [
        evaluate_sni(
            model,
            tokenizer,
            generator,
            tasks,
            ("base", "t2l"),
            EvalConfig(examples=3, descriptions=2, max_new_tokens=4, batch_size=size),
        )
        for size in (9, 1)
    ]
    for task in tasks:
        for condition in ("base", "t2l"):
            together, alone = (r["tasks"][task.name][condition]["predictions"] for r in runs)
            assert together == alone


def test_blend_evaluation_scores_each_adapter_on_both_tasks(tiny_chat_base, tiny_chat_checkpoint, embedder):
    from hypernet.eval.blend import evaluate_blend, markdown

    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)
    upper, reverse = toy_tasks()[:2]
    result = evaluate_blend(
        model, tokenizer, generator, upper, reverse, EvalConfig(examples=3, max_new_tokens=4)
    )
    assert list(result["rougeL"]) == ["A", "B", "blend (embedding)", "blend (weights)"]
    for adapter, per_task in result["per_example"].items():
        for task, scores in per_task.items():
            assert len(scores) == 3 and result["rougeL"][adapter][task] == pytest.approx(sum(scores) / 3)
    for key, inside in result["between"].items():
        blend, task = key.split(" on ")
        low, high = sorted((result["rougeL"]["A"][task], result["rougeL"]["B"][task]))
        assert inside == (low <= result["rougeL"][blend][task] <= high)
    gap = result["rougeL"]["blend (weights)"]["upper"] - result["rougeL"]["A"]["upper"]
    assert result["paired"]["blend (weights) - A on upper"]["difference"] == pytest.approx(gap)
    assert markdown(result).startswith("| adapter | ROUGE-L on A (upper) | ROUGE-L on B (reverse) |")
