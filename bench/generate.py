"""Benchmark: task description → LoRA adapter in memory, on the default base (SmolLM2-135M, r=8, q/v).

Measures p50/p95 of the embedder, the hypernetwork forward and the total, for new descriptions (never
seen, so embedded) and repeated ones (served by the embedder's cache). The baseline, measured in the
same run and interleaved with the measured calls, is a bare sentence-transformers ``encode`` of the same
description: what any service pays just to embed it; beside it, the hypernetwork's forward on PyTorch
(what ``T2L_GENERATOR_RUNTIME=torch`` runs; the default runs it on ONNX Runtime). Target (issue 2):
total p50 ≤ 25 ms on 2 CPU cores.

    python -m bench.generate [--n 200] [--json OUT]
"""

import argparse
import json
import time
from pathlib import Path

import torch

from bench.stats import summary, write_json
from hypernet.checkpoint import default_checkpoint
from hypernet.generator import AdapterGenerator
from hypernet.settings import Settings

TARGET_TOTAL_P50_MS = 25.0


def descriptions(data_dir: Path, n: int) -> list[str]:
    """Real SNI task descriptions when the data is there, else varied synthetic ones."""
    found: list[str] = []
    for task in sorted((data_dir / "sni" / "tasks").glob("*.json")):
        found += json.loads(task.read_text())["descriptions"][:5]
    if len(found) < n:
        verbs = ["Classify", "Summarise", "Translate", "Answer questions about", "Extract entities from"]
        found += [f"{verbs[i % 5]} texts of kind {i} and explain the answer step by step" for i in range(n)]
    return list(dict.fromkeys(found))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="descriptions per measurement")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    settings = Settings()
    path = settings.checkpoint or default_checkpoint(settings.checkpoints_dir)
    generator = AdapterGenerator.load(
        path, device=settings.torch_device(), runtime=settings.generator_runtime, cache_dir=settings.cache_dir
    )
    bare = generator.embedder.model
    texts = descriptions(settings.data_dir, args.n + 20)
    warm, new = texts[:20], texts[20:]
    for text in warm:
        generator.generate([text])

    keys = ("baseline", "new_embed", "new_hyper", "new_total", "hyper_torch")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    for text in new:
        start = time.perf_counter()
        with torch.inference_mode():
            bare.encode([text], convert_to_tensor=True)
        rows["baseline"].append((time.perf_counter() - start) * 1000)
        _, t = generator.generate([text])
        rows["new_embed"].append(t.embed_ms)
        rows["new_hyper"].append(t.hypernet_ms)
        rows["new_total"].append(t.total_ms)
        vectors = generator.embedder.embed([text]).vectors  # cached now: the hypernetwork's input
        start = time.perf_counter()
        with torch.inference_mode():
            generator.model(vectors)  # the hypernetwork on PyTorch, whatever the generator runs it on
        rows["hyper_torch"].append((time.perf_counter() - start) * 1000)
    repeated = {k: [] for k in ("rep_embed", "rep_hyper", "rep_total")}
    for i in range(args.n):
        _, t = generator.generate([warm[i % len(warm)]])
        repeated["rep_embed"].append(t.embed_ms)
        repeated["rep_hyper"].append(t.hypernet_ms)
        repeated["rep_total"].append(t.total_ms)
    rows |= repeated

    result = {k: summary(v) for k, v in rows.items()}
    base_p50 = result["baseline"]["p50"]
    result["ratios_vs_bare_encode_p50"] = {k: result[k]["p50"] / base_p50 for k in rows if k != "baseline"}
    result["hypernet_vs_torch_p50"] = result["new_hyper"]["p50"] / result["hyper_torch"]["p50"]
    result["target_total_p50_ms"] = TARGET_TOTAL_P50_MS
    result["meets_target"] = result["new_total"]["p50"] <= TARGET_TOTAL_P50_MS
    result["setup"] = {
        "checkpoint": str(path),
        "base": generator.config.base.name,
        "rank": generator.config.hypernet.rank,
        "targets": generator.config.hypernet.target_modules,
        "embedder": generator.embedder.name,
        "embedder_runtime": generator.embedder.runtime,
        "hypernet_runtime": generator.runtime,
        "torch_threads": torch.get_num_threads(),
        "device": settings.torch_device(),
    }

    print(f"{'measurement':<38}{'p50 ms':>9}{'p95 ms':>9}{'x bare encode':>15}")
    labels = {
        "baseline": "baseline: bare MiniLM encode",
        "new_embed": "new description: embed",
        "new_hyper": "new description: hypernet",
        "hyper_torch": "  the hypernet on PyTorch (baseline)",
        "new_total": "new description: total",
        "rep_embed": "repeated description: embed",
        "rep_hyper": "repeated description: hypernet",
        "rep_total": "repeated description: total",
    }
    for key, label in labels.items():
        ratio = result[key]["p50"] / base_p50
        print(f"{label:<38}{result[key]['p50']:>9.2f}{result[key]['p95']:>9.2f}{ratio:>15.2f}")
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"target: new-description total p50 <= {TARGET_TOTAL_P50_MS:.0f} ms: {verdict}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
