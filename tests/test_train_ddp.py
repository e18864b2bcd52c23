"""Two gloo processes (DDP on CPU) train exactly like one process with the same global batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from tests.test_train_sft import make_trainer

STEPS = 3


def without_dropout(trainer) -> None:
    """Dropout masks and NEFTune noise depend on how rows are split between processes; equality needs
    them off."""
    trainer.cfg.neftune_alpha = 0.0
    for module in trainer.hypernet.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def train(trainer, out) -> list[float]:
    without_dropout(trainer)
    losses = [trainer.train_step()[0] for _ in range(STEPS)]
    save_file({k: v.contiguous() for k, v in trainer.hypernet.state_dict().items()}, str(out))
    return losses


def _worker(rank: int, world: int, init: str, paths: tuple, results: str) -> None:
    from hypernet.embed import Embedder
    from hypernet.settings import DEFAULT_EMBEDDER

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    base, checkpoint, out = paths
    trainer = make_trainer(base, checkpoint, Embedder(DEFAULT_EMBEDDER), out, tasks_per_step=2, lr=1e-2)
    losses = train(trainer, f"{results}/weights-{rank}.safetensors")
    torch.save(torch.tensor(losses), f"{results}/losses-{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_match_one(tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path):
    single = make_trainer(
        tiny_chat_base, tiny_chat_checkpoint, embedder, tmp_path / "one", tasks_per_step=2, lr=1e-2
    )
    expected = train(single, tmp_path / "weights-single.safetensors")

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(
        _worker,
        args=(2, init, (tiny_chat_base, tiny_chat_checkpoint, tmp_path / "two"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    for rank in range(2):
        losses = torch.load(tmp_path / f"losses-{rank}.pt", weights_only=True).tolist()
        # each process groups its own rows by length, so sums run in another order: float-level drift
        assert losses == [pytest.approx(x, rel=1e-5, abs=1e-5) for x in expected]
        weights = load_file(str(tmp_path / f"weights-{rank}.safetensors"))
        reference = load_file(str(tmp_path / "weights-single.safetensors"))
        for key, value in reference.items():
            # Adam turns ulp-level differences of near-zero gradients into updates of up to lr (1e-2) on
            # single entries; the tensors as a whole must agree
            assert (weights[key] - value).norm() <= 1e-2 * value.norm() + 1e-6, key
