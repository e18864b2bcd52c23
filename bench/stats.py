"""The one summary every benchmark prints: median, 95th percentile, mean and count of its samples."""

import statistics


def summary(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else samples * 100
    return {
        "p50": statistics.median(samples),
        "p95": cuts[94],
        "mean": statistics.fmean(samples),
        "n": len(samples),
    }
