"""The model card of a trained checkpoint: what it is, how it was trained, how it scores, how to redo it."""

from hypernet.checkpoint import CheckpointConfig
from hypernet.eval.report import markdown_table


def _command(argv: str) -> str:
    """A recorded command line with the program's own path shortened to ``t2l``."""
    program, _, rest = argv.partition(" ")
    return f"t2l {rest}" if program.endswith("t2l") else argv


def training_legs(training: dict) -> list[dict]:
    """A checkpoint's training provenance as its legs, newest first (each continuation records the
    provenance of the weights it started from under ``continues``)."""
    legs = [training]
    while "continues" in legs[-1]:
        legs.append(legs[-1]["continues"])
    return legs


def _reproduce(training: dict) -> list[str]:
    """The command of every training leg, first leg first: a continuation (``--init``) starts from the
    weights the leg before it selected, so the table above is the last leg's alone."""
    legs = training_legs(training)
    lines = ["Reproduce:", ""]
    if len(legs) > 1:
        lines += [
            f"{len(legs)} legs, each from the weights the one before it selected (its `--init`; "
            "the optimizer starts fresh):",
            "",
        ]
    lines.append("```bash")
    for leg in reversed(legs):
        if len(legs) > 1:
            val_loss = leg.get("val_loss", float("nan"))
            lines.append(f"# {leg.get('steps', '?')} steps, selected validation loss {val_loss:.4f}")
        lines.append(_command(str(leg.get("command", "?"))))
    return [*lines, "```"]


def model_card(config: CheckpointConfig, results: list[dict]) -> str:
    """Markdown: the network, its base and embedder, the training provenance, and each evaluation given."""
    hyper, training, embedder = config.hypernet, config.training, config.embedder
    settings = training.get("settings", {})
    lines = [
        f"# T2L hypernetwork for {config.base.name}",
        "",
        "A Text-to-LoRA hypernetwork (Charakorn et al., ICML 2025): a task description in, a LoRA adapter "
        "for every target layer of the base out, in one forward pass.",
        "",
        "| | |",
        "| --- | --- |",
        f"| checkpoint id | `{config.id}` |",
        f"| base | {config.base.describe()} |",
        f"| embedder | `{embedder.name}` (dim {embedder.dim}, pooling {embedder.pooling}) |",
        f"| hypernetwork | size {hyper.size} (latent {hyper.latent_size}, head input {hyper.head_in_size}) |",
        f"| adapters | rank {hyper.rank}, alpha {hyper.alpha:g}, rsLoRA {hyper.use_rslora}, "
        f"targets {', '.join(hyper.target_modules)} |",
        f"| training | {training.get('status', 'unknown')}, "
        f"{training.get('total_steps', training.get('steps', '?'))} steps, "
        f"{training.get('total_examples', training.get('examples', '?'))} examples, "
        f"{training.get('train_tasks', '?')} SNI training tasks |",
        f"| model selection | {training.get('selected', 'last step')}, "
        f"validation loss on {training.get('val_tasks', '?')} val tasks never trained on |",
        "",
        "## Training",
        "",
        "Supervised fine-tuning through the frozen base: each step samples tasks, one of each task's "
        "paraphrased descriptions and a few of its examples; the loss is cross-entropy on response tokens. "
        "Data protocol (../shared/data/sni/splits.json): the train tasks only, their first "
        "`train_descriptions_per_task` descriptions, their instances minus the last `test_instances`; "
        "the val tasks give the validation loss; the eval tasks are used only for the final table.",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in settings.items()),
        *(
            [f"| training loss at this step | {training['last_loss']:.4f} |"]
            if "last_loss" in training
            else []
        ),
        f"| validation loss (val tasks) | {training.get('val_loss', float('nan')):.4f} |",
        "",
        *_reproduce(training),
    ]
    for result in results:
        lines += ["", f"## Evaluation: {result['benchmark']}", ""]
        if "command" in result:
            lines += ["```bash", _command(result["command"]), "```", ""]
        for metric in result["metrics"]:
            lines += [f"{metric}:", "", markdown_table(result, metric)]
    return "\n".join(lines).rstrip() + "\n"
