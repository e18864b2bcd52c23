"""An evaluation's result as JSON, a Markdown table and a bar chart."""

import json
from pathlib import Path


def markdown_table(result: dict, metric: str = "rougeL") -> str:
    conditions = result["conditions"]
    lines = [f"| task | {' | '.join(conditions)} |", "| --- |" + " ---: |" * len(conditions)]
    for task, scores in result["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(f"{scores[c][metric]:.1f}" for c in conditions) + " |")
    lines.append(
        "| **average** | " + " | ".join(f"**{result['average'][c][metric]:.1f}**" for c in conditions) + " |"
    )
    return "\n".join(lines) + "\n"


def paired_lines(result: dict) -> str:
    """The paired differences (ROUGE-L points, 95% bootstrap interval), one line per comparison."""
    rows = [
        f"- {name}: {p['difference']:+.1f} ROUGE-L (95% CI {p['ci95'][0]:+.1f} to {p['ci95'][1]:+.1f}, "
        f"{p['examples']} paired examples)"
        for name, p in result.get("paired", {}).items()
    ]
    return "\n".join(rows) + "\n" if rows else ""


def bar_chart(result: dict, out: Path, metric: str = "rougeL") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = result["conditions"]
    values = [result["average"][c][metric] for c in conditions]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(conditions, values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel(f"average {metric}")
    ax.set_title(f"{result['benchmark']} ({result['checkpoint']}, {result['checkpoint_status']})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    tables = [f"## {m}\n\n{markdown_table(result, m)}" for m in result["metrics"]]
    paired = paired_lines(result)
    tables += [f"## paired differences\n\n{paired}"] if paired else []
    (out / "result.md").write_text(f"# {result['benchmark']}\n\n" + "\n".join(tables))
    bar_chart(result, out / "result.png", result["metrics"][0])
