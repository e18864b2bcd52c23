"""The model card of a continued checkpoint: every training leg's command, first leg first."""

from hypernet.card import model_card
from hypernet.checkpoint import read_config


def test_a_continued_checkpoint_lists_every_leg_oldest_first(tiny_checkpoint):
    first = {"steps": 300, "val_loss": 2.15, "command": ".venv/bin/t2l train sft --out runs/sft-1 --seed 0"}
    second = {"steps": 400, "val_loss": 1.98, "command": ".venv/bin/t2l train sft --out runs/sft-2 --seed 1"}
    training = {
        "status": "sft",
        "steps": 300,
        "val_loss": 2.02,
        "last_loss": 2.9,
        "command": ".venv/bin/t2l train sft --out runs/sft-3 --seed 4",
        "continues": second | {"continues": first},
    }
    config = read_config(tiny_checkpoint).model_copy(update={"training": training})
    card = model_card(config, [])
    commands = [card.index(f"t2l train sft --out runs/sft-{i}") for i in (1, 2, 3)]
    assert commands == sorted(commands)
    assert "3 legs" in card and "# 400 steps, selected validation loss 1.9800" in card
    assert "| training loss at this step | 2.9000 |" in card and "nan" not in card


def test_a_single_run_has_one_command_and_no_loss_it_did_not_record(tiny_checkpoint):
    training = {"status": "sft", "steps": 300, "val_loss": 2.15, "command": "t2l train sft --out runs/a"}
    card = model_card(read_config(tiny_checkpoint).model_copy(update={"training": training}), [])
    assert card.count("t2l train sft") == 1 and "legs" not in card
    assert "training loss at this step" not in card and "nan" not in card
