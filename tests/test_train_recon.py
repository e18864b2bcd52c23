"""Reconstruction training: the hypernetwork learns a library of task LoRAs from their descriptions."""

import torch

from hypernet.checkpoint import load_checkpoint
from hypernet.train.recon import ReconConfig, ReconTrainer, load_library, with_output_scale
from tests.test_lora import random_adapter
from tests.test_train_sft import toy_tasks


def test_recon_learns_the_library_and_z_scores(tiny_checkpoint, embedder, tmp_path):
    hypernet, config = load_checkpoint(tiny_checkpoint)
    tasks = toy_tasks()
    for i, task in enumerate(tasks):  # a library of task LoRAs in PEFT folders, as t2l train lora writes
        random_adapter(config.base, seed=10 + i, rank=config.hypernet.rank).save_peft(
            tmp_path / "lib" / task.name / "adapter"
        )
    found, library = load_library(tmp_path / "lib", tasks, config)
    assert [t.name for t in found] == ["upper", "reverse", "first"]

    hypernet, config = with_output_scale(hypernet, config)
    cfg = ReconConfig(steps=40, lr=3e-3, tasks_per_step=3, warmup_steps=2, val_every=40, ckpt_every=40)
    trainer = ReconTrainer(hypernet, config, embedder, found, library, cfg, tmp_path / "run")
    stacked = torch.stack([lib.A["q_proj"] for lib in library])
    assert torch.allclose(hypernet.shift_A_q_proj, stacked.mean(0))
    assert torch.allclose(hypernet.scale_A_q_proj, stacked.std(0, unbiased=False).clamp_min(1e-6))
    before = trainer.validate()
    trainer.run()
    assert trainer.validate() < 0.8 * before  # held-out paraphrases: the mean adapter scores 1

    _, exported_config = load_checkpoint(tmp_path / "run" / "state" / "checkpoint")
    assert exported_config.status == "recon" and exported_config.hypernet.output_scale
    assert exported_config.training["library"] == ["upper", "reverse", "first"]
