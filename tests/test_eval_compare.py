"""`t2l eval compare`: two SNI runs of the same examples, B − A per condition with a paired interval."""

import json

import pytest

from hypernet.cli import main
from hypernet.errors import T2LError
from hypernet.eval.compare import compare_runs


def run(scores: dict[str, dict[str, list[float]]]) -> dict:
    """A minimal `eval sni` result: {condition: {task: per-example ROUGE-L}}."""
    tasks = sorted(next(iter(scores.values())))
    return {
        "benchmark": "sni-val",
        "conditions": list(scores),
        "tasks": {t: {c: {"rougeL_per_example": scores[c][t]} for c in scores} for t in tasks},
        "average": {
            c: {"rougeL": sum(sum(v) / len(v) for v in scores[c].values()) / len(tasks)} for c in scores
        },
    }


def test_differences_are_b_minus_a_on_shared_conditions():
    a = run({"t2l": {"x": [0.2, 0.4], "y": [1.0, 0.0, 0.5]}, "base": {"x": [0.1, 0.1], "y": [0, 0, 0]}})
    b = run({"t2l": {"x": [0.3, 0.5], "y": [1.0, 0.0, 0.5]}})
    result = compare_runs(a, b)
    assert list(result) == ["t2l"]  # base was scored in A only
    assert result["t2l"]["difference"] == pytest.approx(0.05)  # task x: +0.1, task y: 0, averaged by task
    assert result["t2l"]["examples"] == 5
    low, high = result["t2l"]["ci95"]
    assert low <= result["t2l"]["difference"] <= high


def test_runs_of_different_examples_are_refused():
    a = run({"t2l": {"x": [0.2, 0.4]}})
    with pytest.raises(T2LError, match="different tasks"):
        compare_runs(a, run({"t2l": {"z": [0.2, 0.4]}}))
    with pytest.raises(T2LError, match="same examples"):
        compare_runs(a, run({"t2l": {"x": [0.2]}}))
    with pytest.raises(T2LError, match="eval sni"):
        compare_runs(a, {**a, "benchmark": "arc_easy"})


def test_the_command_prints_each_shared_condition(tmp_path, capsys):
    for name, shift in (("a", 0.0), ("b", 25.0)):
        (tmp_path / name).mkdir()
        scores = {"t2l": {"x": [25 + shift, 50 + shift]}, "base": {"x": [0.0, 50.0]}}  # ROUGE-L points
        (tmp_path / name / "result.json").write_text(json.dumps(run(scores)))
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b" / "result.json")]) == 0
    out = capsys.readouterr().out
    assert "t2l: 62.50 - 37.50 = +25.00 [+25.00, +25.00] (2 paired examples)" in out
    assert "base: 25.00 - 25.00 = +0.00" in out
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
