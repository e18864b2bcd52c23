"""The one summary every benchmark prints: median, 95th percentile, mean and count of its samples."""

import json
import statistics
from pathlib import Path


def summary(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else samples * 100
    return {
        "p50": statistics.median(samples),
        "p95": cuts[94],
        "mean": statistics.fmean(samples),
        "n": len(samples),
    }


def write_json(path: Path | None, result: dict) -> None:
    """The benchmark's numbers as JSON at ``path`` (its ``--json``), when one is given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
