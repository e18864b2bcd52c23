"""Two SNI evaluation runs of the same examples, compared condition by condition.

What changes between the runs is up to the caller (the base model's dtype, a checkpoint): the examples
must be the same ones (same split, tasks, seed and example count), which is checked, so each condition's
per-example ROUGE-L pairs up and ``paired_difference`` gives B − A with its 95% bootstrap interval.
"""

from hypernet.errors import T2LError
from hypernet.eval.paired import paired_difference


def compare_runs(a: dict, b: dict) -> dict[str, dict]:
    """``b`` minus ``a`` for every condition both scored: {condition: difference, ci95, examples, a, b}."""
    if not (a.get("benchmark", "").startswith("sni") and b.get("benchmark", "").startswith("sni")):
        raise T2LError("eval compare takes two `t2l eval sni` results")
    if a["tasks"].keys() != b["tasks"].keys():
        raise T2LError("the two runs scored different tasks")
    shared = [c for c in a["conditions"] if c in b["conditions"]]
    if not shared:
        raise T2LError("the two runs share no condition")
    out = {}
    for condition in shared:
        scores = [
            {t: run["tasks"][t][condition]["rougeL_per_example"] for t in run["tasks"]} for run in (a, b)
        ]
        try:
            paired = paired_difference(scores[1], scores[0])
        except ValueError as err:
            raise T2LError(f"{condition}: the runs did not score the same examples ({err})") from err
        averages = [run["average"][condition]["rougeL"] for run in (a, b)]
        out[condition] = {**paired, "a": averages[0], "b": averages[1]}
    return out
