"""Paired differences between two conditions scored on the same examples, with a bootstrap interval.

Every condition of an evaluation answers the same inputs, so the fair question is how much one beats
the other on those inputs. The statistic is the difference of task-averaged scores (each task weighs
the same, as in the tables); the 95% interval comes from resampling each task's examples with
replacement (a stratified, paired bootstrap), so it reflects how few examples each task has.
"""

import random


def _average(per_task: list[list[float]], picks: list[list[int]] | None = None) -> float:
    means = [
        sum(scores[i] for i in (picks[t] if picks else range(len(scores)))) / len(scores)
        for t, scores in enumerate(per_task)
    ]
    return sum(means) / len(means)


def paired_difference(
    a: dict[str, list[float]], b: dict[str, list[float]], samples: int = 2000, seed: int = 0
) -> dict[str, float | list[float]]:
    """``a`` minus ``b``: per-task lists of per-example scores on the same examples, in the same order."""
    if a.keys() != b.keys() or any(len(a[t]) != len(b[t]) or not a[t] for t in a):
        raise ValueError("paired scores need the same tasks and the same number of examples per task")
    diffs = [[x - y for x, y in zip(a[t], b[t], strict=True)] for t in a]
    rng = random.Random(seed)
    draws = sorted(
        _average(diffs, [[rng.randrange(len(d)) for _ in d] for d in diffs]) for _ in range(samples)
    )
    return {
        "difference": _average(diffs),
        "ci95": [draws[int(0.025 * samples)], draws[int(0.975 * samples) - 1]],
        "examples": sum(len(d) for d in diffs),
    }
