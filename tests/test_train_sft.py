"""SFT of the hypernetwork through a frozen tiny base: the loss falls, and a resumed run is exact."""

import json
import random
import shutil

import pytest
import torch

from hypernet.base import load_base
from hypernet.checkpoint import load_checkpoint
from hypernet.data.sni import IGNORE, Task, encode_example
from hypernet.train.plot import plot_losses
from hypernet.train.sft import SFTConfig, SFTTrainer
from tests.conftest import CHECKPOINTS

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "candle", "forest", "mirror"]


def toy_tasks() -> list[Task]:
    """Three tasks that map a word differently, each described several ways."""
    return [
        Task(
            "upper",
            ["Write the word in capital letters.", "Uppercase the given word."],
            [{"input": w, "output": w.upper()} for w in WORDS],
        ),
        Task(
            "reverse",
            ["Spell the word backwards.", "Reverse the letters of the word."],
            [{"input": w, "output": w[::-1]} for w in WORDS],
        ),
        Task(
            "first",
            ["Give only the first letter of the word.", "Answer with the word's initial."],
            [{"input": w, "output": w[0]} for w in WORDS],
        ),
    ]


def make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, out, **cfg) -> SFTTrainer:
    base, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    hypernet, config = load_checkpoint(tiny_chat_checkpoint)
    with torch.no_grad():  # start from the identity adapter, as `t2l init` does
        for head in hypernet.heads.values():
            head.weight.zero_()
    # NEFTune's noise is sized for real embedding widths; on the tiny base it would drown the signal
    defaults = {"tasks_per_step": 3, "examples_per_task": 2, "warmup_steps": 2, "neftune_alpha": 0.0}
    settings = SFTConfig(**(defaults | cfg))
    tasks = toy_tasks()
    return SFTTrainer(base, tokenizer, hypernet, config, embedder, tasks, tasks[:1], settings, out)


def test_response_only_labels(tiny_chat_base):
    _, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    ids, labels = encode_example(tokenizer, "apple", "APPLE", 64)
    answer = [t for t in labels if t != IGNORE]
    assert len(ids) == len(labels) and tokenizer.decode(answer).startswith("APPLE")
    assert labels[: len(labels) - len(answer)] == [IGNORE] * (len(labels) - len(answer))
    ids, labels = encode_example(tokenizer, "word " * 200, "answer " * 100, 48)
    assert len(ids) == 48 and sum(t != IGNORE for t in labels) == 24


def test_a_few_steps_lower_the_loss(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    trainer = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path, steps=20, lr=1e-2)
    before = trainer.validate()
    last = trainer.run()
    after = trainer.validate()
    assert last["step"] == 20 and after < before - 0.2, (before, after)
    assert all(p.grad is None for p in trainer.base.parameters())  # the base stays frozen
    assert (tmp_path / "state" / "checkpoint" / "config.json").is_file()
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png").stat().st_size > 0


def test_resume_gives_the_same_next_step_loss(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    first = make_trainer(
        tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "a", steps=2, ckpt_every=2
    )
    first.run()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first.cfg.steps = 3
    uninterrupted, _ = first.train_step()

    resumed = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "b", steps=3)
    assert resumed.load() and resumed.step == 2
    again, _ = resumed.train_step()
    assert again == pytest.approx(uninterrupted, abs=1e-6)


def test_the_best_validation_weights_are_exported(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    trainer = make_trainer(
        tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path, steps=6, lr=1e-2, val_every=2
    )
    trainer.run()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in logged if "val_loss" in r and r["step"] > 0]
    best = min(vals, key=lambda r: r["val_loss"])
    _, config = load_checkpoint(tmp_path / "best" / "checkpoint")
    assert config.training["steps"] == best["step"]
    assert config.training["val_loss"] == pytest.approx(best["val_loss"])
    assert trainer.best_val == pytest.approx(best["val_loss"])


def test_a_run_from_trained_weights_adds_up_its_provenance(
    tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path
):
    earlier = {"status": "sft", "steps": 40, "total_steps": 40, "examples": 320, "total_examples": 320}
    trainer = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path, steps=2)
    trainer.continues = earlier
    trainer.run()
    _, config = load_checkpoint(tmp_path / "state" / "checkpoint")
    training = config.training
    assert training["steps"] == 2 and training["examples"] == 2 * 3 * 2
    assert training["total_steps"] == 42 and training["total_examples"] == 320 + 12
    assert training["continues"] == earlier


def test_description_vectors_outlive_the_run(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    """A second trainer on the same cache embeds nothing; the vectors equal the embedder's own."""
    from hypernet.vector_cache import VectorCache

    cache = tmp_path / "cache" / "vectors.sqlite"
    texts = ["Uppercase the given word.", "Spell the word backwards."]
    first = VectorCache(cache, embedder).vectors(texts)
    assert torch.allclose(first, embedder.embed(texts).vectors.cpu(), atol=1e-5)

    class Refuses:
        name, pooling, dim = embedder.name, embedder.pooling, embedder.dim

        def embed(self, texts):
            raise AssertionError(f"embedded again: {texts}")

    again = VectorCache(cache, Refuses()).vectors([texts[1], texts[0], texts[1]])  # type: ignore[arg-type]
    assert torch.equal(again, first[[1, 0, 1]])
    other = VectorCache(cache, embedder)
    other.prefix = "another-embedder|model|384|"  # another embedder's vectors are keyed apart
    assert other._key(texts[0]) != VectorCache(cache, embedder)._key(texts[0])


def test_a_fixed_lora_draws_the_same_batches_without_embedding(
    tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path
):
    from hypernet.train.lora_baseline import FixedLoRA

    t2l = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "a")
    lora = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "b")
    lora.hypernet = FixedLoRA(lora.config.base, lora.config.hypernet.rank)
    lora.reads_descriptions = False
    for _ in range(3):
        (emb_t2l, groups_t2l), (emb_lora, groups_lora) = t2l.sample(), lora.sample()
        assert all(torch.equal(a[1], b[1]) for a, b in zip(groups_t2l, groups_lora, strict=True))
        assert emb_t2l.abs().sum() > 0 and emb_lora.abs().sum() == 0


def test_multi_task_lora_baseline_trains_on_the_same_loop_and_exports_peft(
    tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path
):
    from peft import PeftModel

    from hypernet.adapter import LoraAdapter
    from hypernet.train.lora_baseline import FixedLoRA, export_peft

    base, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    _, config = load_checkpoint(tiny_chat_checkpoint)
    lora = FixedLoRA(config.base, config.hypernet.rank)
    tasks = toy_tasks()
    cfg = SFTConfig(steps=20, lr=1e-2, tasks_per_step=3, examples_per_task=2, warmup_steps=2)
    trainer = SFTTrainer(
        base,
        tokenizer,
        lora,
        config,
        embedder,
        tasks,
        tasks[:1],
        cfg,
        tmp_path,
        export_peft,
        "multi-task-lora",
    )
    before = trainer.validate()
    trainer.run()
    assert trainer.validate() < before - 0.2
    folder = tmp_path / "state" / "adapter"
    adapter = LoraAdapter.from_peft(folder, config.base)
    assert torch.equal(adapter.B["q_proj"], lora.B["q_proj"].detach())
    assert "multi-task-lora" in (folder / "README.md").read_text()
    peft = PeftModel.from_pretrained(load_base(str(tiny_chat_base), CHECKPOINTS)[0], str(folder))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in peft.state_dict().items())


def _cuts(values: list[int], mask: int) -> list[list[int]]:
    """``values`` cut before each position whose bit is set in ``mask``."""
    groups, start = [], 0
    for i in range(1, len(values)):
        if mask >> (i - 1) & 1:
            groups.append(values[start:i])
            start = i
    return [*groups, values[start:]]


def test_length_groups_cover_every_row_once_and_cut_where_it_pays():
    from hypernet.train.sft import length_groups

    lengths = [150, 20, 22, 148, 21, 60]
    groups = length_groups(lengths, cost=64)
    assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
    # by hand: short three 3 x 22 + 64, the 60-token row alone 60 + 64, the long two 2 x 150 + 64: 618;
    # the 60-token row with the short ones would cost 4 x 60 + 64 + 364 = 668
    assert [sorted(g) for g in groups] == [[1, 2, 4], [5], [0, 3]]
    rng = random.Random(0)  # and it is the cheapest of all cuts of the sorted rows, by brute force
    for _ in range(20):
        lengths = [rng.randint(5, 200) for _ in range(rng.randint(1, 7))]
        ordered = sorted(lengths)
        cheapest = min(
            sum(len(c) * max(c) + 64 for c in _cuts(ordered, mask)) for mask in range(2 ** (len(ordered) - 1))
        )
        groups = length_groups(lengths, cost=64)
        assert sum(len(g) * max(lengths[r] for r in g) + 64 for g in groups) == cheapest
    assert length_groups([30] * 5) == [[0, 1, 2, 3, 4]]  # equal lengths: no reason to cut
    assert length_groups([10, 200], cost=0) == [[0], [1]]


def test_loss_on_kept_positions_equals_the_full_vocabulary_loss(
    tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path
):
    """Only positions that predict a response token reach the vocabulary projection, in length groups;
    the loss must equal one padded forward with full logits."""
    trainer = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path)
    randomize = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in trainer.hypernet.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=randomize) * 0.05)
    trainer.hypernet.eval()
    tasks = toy_tasks()
    pairs = [[tasks[0].instances[0], tasks[0].instances[1]], [{"input": "a " * 150, "output": "long"}]]
    embeddings = trainer._embed([tasks[0].descriptions[0], tasks[1].descriptions[0]])
    batch = trainer._collate(embeddings, pairs)
    assert [len(rows[0]) for rows in batch[1]] == [2, 1]  # the long row gets a forward of its own
    summed, count = trainer.loss(batch)

    encoded = [
        encode_example(trainer.tokenizer, ex["input"], ex["output"], 256) for rows in pairs for ex in rows
    ]
    longest = max(len(i) for i, _ in encoded)
    ids = torch.full((3, longest), trainer.pad)
    labels = torch.full((3, longest), IGNORE)
    mask = torch.zeros((3, longest), dtype=torch.long)
    for row, (tokens, targets) in enumerate(encoded):
        ids[row, : len(tokens)], labels[row, : len(targets)], mask[row, : len(tokens)] = (
            torch.tensor(tokens),
            torch.tensor(targets),
            1,
        )
    with torch.no_grad():
        A, B = trainer.hypernet(torch.stack(embeddings))
        owner = torch.tensor([0, 0, 1])
        A = {m: a.index_select(0, owner) for m, a in A.items()}
        B = {m: b.index_select(0, owner) for m, b in B.items()}
        with trainer.layers.applied(A, B, trainer.config.hypernet.scaling):
            logits = trainer.base(input_ids=ids, attention_mask=mask).logits
    full = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert count == int((labels[:, 1:] != IGNORE).sum())
    assert summed.item() == pytest.approx(full.item(), rel=1e-5)


def test_regularisers_shape_training_steps_only(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    """Label smoothing, the L2 on generated weights and NEFTune change the training loss; validation
    (the hypernetwork in eval mode) scores plain cross-entropy."""
    plain = make_trainer(
        tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "a", label_smoothing=0.0, l2_generated=0.0
    )
    regular = make_trainer(
        tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "b", neftune_alpha=5.0, l2_generated=1.0
    )
    batch = plain.sample()
    for trainer in (plain, regular):
        trainer.hypernet.train()
    with torch.no_grad():
        (ce, count), (reg, _) = plain.loss(batch), regular.loss(batch)
        A, _ = regular.hypernet(batch[0])
        for trainer in (plain, regular):
            trainer.hypernet.eval()
        (ce_eval, _), (reg_eval, _) = plain.loss(batch), regular.loss(batch)
    assert reg_eval.item() == pytest.approx(ce_eval.item(), rel=1e-6) == pytest.approx(ce.item(), rel=1e-6)
    # the penalty alone is at least each task's mean squared A (the initial A is not zero) per token
    least = min(sum(a[t].pow(2).mean() for a in A.values()) for t in range(A["q_proj"].shape[0]))
    assert reg.item() > ce.item() + 0.5 * least.item() * count


def test_the_mismatch_hinge_scores_each_row_under_the_next_tasks_adapter(
    tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path
):
    """With ``mismatch_weight`` the training loss adds, per row, weight x tokens x
    relu(margin - (mean loss under the next task's adapter - mean loss under its own)); rows scored
    one at a time under each description must give the same sum."""
    weight, margin = 0.7, 50.0  # a margin this wide keeps every row's hinge active
    trainer = make_trainer(
        tiny_chat_base,
        tiny_chat_checkpoint,
        embedder,
        tmp_path,
        label_smoothing=0.0,
        l2_generated=0.0,
        mismatch_weight=weight,
        mismatch_margin=margin,
    )
    randomize = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for head in trainer.hypernet.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=randomize) * 0.05)
    for module in trainer.hypernet.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    tasks = toy_tasks()
    descriptions = [t.descriptions[0] for t in tasks]
    pairs = [[t.instances[i], t.instances[i + 3]] for i, t in enumerate(tasks)]
    embeddings = trainer._embed(descriptions)
    trainer.hypernet.train()
    with torch.no_grad():
        summed, count = trainer.loss(trainer._collate(embeddings, pairs))
        trainer.hypernet.eval()
        expected, tokens = 0.0, 0
        for t, rows in enumerate(pairs):
            for example in rows:
                own, n = trainer.loss(trainer._collate([embeddings[t]], [[example]]))
                other, _ = trainer.loss(trainer._collate([embeddings[(t + 1) % 3]], [[example]]))
                gap = other.item() / n - own.item() / n
                expected += own.item() + weight * n * max(0.0, margin - gap)
                tokens += n
    assert count == tokens
    assert summed.item() == pytest.approx(expected, rel=1e-4)


def test_validation_logs_how_much_the_description_matters(
    tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path
):
    """val_mismatch_gap: the validation loss under the next validation task's description minus the loss
    under each task's own; zero for an identity hypernetwork, logged beside val_loss."""
    trainer = make_trainer(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path, steps=2, val_every=2)
    trainer.val_tasks = toy_tasks()
    assert trainer.validation()["val_mismatch_gap"] == pytest.approx(0.0, abs=1e-6)  # B = 0: no adapter
    randomize = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for head in trainer.hypernet.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=randomize) * 0.05)
    matched, mismatched = trainer._val_losses(0), trainer._val_losses(1)
    gap = sum(m - o for m, o in zip(mismatched, matched, strict=True)) / 3
    figures = trainer.validation()
    assert figures["val_mismatch_gap"] == pytest.approx(gap) and gap != 0
    assert figures["val_loss"] == trainer.validate() == pytest.approx(sum(matched) / 3)
    trainer.run()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("val_mismatch_gap" in line for line in logged if "val_loss" in line)
