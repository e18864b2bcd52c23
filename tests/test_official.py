"""Import of the reference T2L release (SakanaAI/text-to-lora).

A random state dict with the reference's names is imported, and the imported network is checked against
a forward pass written here, with ``torch.nn.functional`` on the raw reference state dict, for each of
the release's output modes (SFT offset, z-scored reconstruction, raw reconstruction). The CLI is checked
too, and so is the refusal of unsupported, incomplete or unsafe release folders.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from hypernet.checkpoint import load_checkpoint, read_config
from hypernet.cli import main
from hypernet.official import import_official
from tests.conftest import CHECKPOINTS, TARGETS

LATENT, HEAD_IN, RANK, ALPHA = 32, 48, 4, 8.0
IN_FEATURES = {"q_proj": 64, "v_proj": 64}  # the tiny base of conftest: q_proj 64→64, v_proj 64→32
OUT_FEATURES = {"q_proj": 64, "v_proj": 32}
EMB_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
UNLOADED: list[object] = []  # what Payload.__setstate__ saw: must stay empty


class Payload:
    """An arbitrary object: a pickle of it must never be unpickled by the importer."""

    def __init__(self) -> None:
        self.note = "not a tensor"

    def __setstate__(self, state: dict) -> None:
        UNLOADED.append(state)
        self.__dict__.update(state)


def reference_state(embed_dim: int, layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the names and shapes of the reference's HyperModulator (M variant)."""
    gen = torch.Generator().manual_seed(seed)
    d, half, quarter = LATENT, LATENT // 2, LATENT // 4
    state: dict[str, torch.Tensor] = {}

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    def linear(prefix: str, fan_in: int, fan_out: int) -> None:
        state[prefix + "weight"] = rand(fan_out, fan_in, std=fan_in**-0.5)
        state[prefix + "bias"] = rand(fan_out, std=0.1)

    def norm(prefix: str, size: int) -> None:
        state[prefix + "weight"] = 1 + rand(size, std=0.1)
        state[prefix + "bias"] = rand(size, std=0.1)

    linear("task_encoder.mlp.0.", embed_dim, half)
    norm("task_encoder.mlp.1.", half)
    state["layer_depth_encoder.0.weight"] = rand(layers, quarter)
    norm("layer_depth_encoder.1.", quarter)
    state["layer_type_encoder.0.weight"] = rand(len(TARGETS), quarter)
    norm("layer_type_encoder.1.", quarter)
    linear("mixer.1.", d, 4 * d)
    linear("mixer.4.", 4 * d, d)
    for block in ("mlp1.mlp.", "mlp2.mlp."):
        norm(block + "0.", d)
        linear(block + "1.", d, 4 * d)
        linear(block + "4.", 4 * d, d)
    norm("mlp3.0.", d)
    linear("mlp3.1.", d, 4 * d)
    linear("mlp3.4.", 4 * d, HEAD_IN)
    norm("out_emb_norm.", d)
    for m in TARGETS:
        fan_in, fan_out = IN_FEATURES[m], OUT_FEATURES[m]
        state[f"out_emb.{m}.A"], state[f"out_emb.{m}.B"] = rand(d), rand(d)
        linear(f"heads.{m}.", HEAD_IN, RANK * max(fan_in, fan_out))
        shapes = {"A": (layers, RANK, fan_in), "B": (layers, fan_out, RANK)}
        for ab, shape in shapes.items():
            state[f"AB_offset.{ab}.{m}"] = rand(*shape)
            state[f"mean_recon_target.{ab}.{m}"] = rand(*shape)
            state[f"std_recon_target.{ab}.{m}"] = rand(*shape).abs() + 0.1
    return state


def reference_forward(
    raw: dict[str, torch.Tensor], emb: torch.Tensor, task: str, z_score: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The reference forward in eval mode, one (description, layer, module) at a time, in float64."""
    state = {k: v.double() for k, v in raw.items()}
    layers = state["layer_depth_encoder.0.weight"].shape[0]

    def lin(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.linear(x, state[p + "weight"], state.get(p + "bias"))

    def ln(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[p + "weight"], state[p + "bias"])

    def residual(x: torch.Tensor, p: str) -> torch.Tensor:
        return x + F.silu(lin(F.silu(lin(ln(x, p + "0."), p + "1.")), p + "4."))

    A: dict[str, list] = {m: [] for m in TARGETS}
    B: dict[str, list] = {m: [] for m in TARGETS}
    for e in emb.double():
        task_vec = ln(lin(e, "task_encoder.mlp.0."), "task_encoder.mlp.1.")
        for idx, m in enumerate(TARGETS):
            kind = ln(state["layer_type_encoder.0.weight"][idx], "layer_type_encoder.1.")
            per_layer_a, per_layer_b = [], []
            for layer in range(layers):
                depth = ln(state["layer_depth_encoder.0.weight"][layer], "layer_depth_encoder.1.")
                x = torch.cat([task_vec, depth, kind])
                x = F.silu(lin(F.silu(lin(x, "mixer.1.")), "mixer.4."))
                x = residual(x, "mlp1.mlp.")
                out = {}
                for ab, width in (("A", IN_FEATURES[m]), ("B", OUT_FEATURES[m])):
                    h = residual(x + ln(state[f"out_emb.{m}.{ab}"], "out_emb_norm."), "mlp2.mlp.")
                    h = F.silu(lin(F.silu(lin(ln(h, "mlp3.0."), "mlp3.1.")), "mlp3.4."))
                    out[ab] = lin(h, f"heads.{m}.").view(RANK, -1)[:, :width]
                a, b = out["A"], out["B"].T
                if task == "sft":
                    a = a + state[f"AB_offset.A.{m}"][layer]
                    b = b + state[f"AB_offset.B.{m}"][layer]
                elif z_score:
                    a = a * state[f"std_recon_target.A.{m}"][layer] + state[f"mean_recon_target.A.{m}"][layer]
                    b = b * state[f"std_recon_target.B.{m}"][layer] + state[f"mean_recon_target.B.{m}"][layer]
                per_layer_a.append(a)
                per_layer_b.append(b)
            A[m].append(torch.stack(per_layer_a))
            B[m].append(torch.stack(per_layer_b))
    return {m: torch.stack(v) for m, v in A.items()}, {m: torch.stack(v) for m, v in B.items()}


def write_release(
    folder: Path, state: object, model_dir: str, task: str = "sft", z_score: bool = False, **args: object
) -> Path:
    """A folder in the reference release layout: hypermod.pt, args.yaml, adapter_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "hypermod.pt")
    fields = {
        "model_dir": model_dir,
        "emb_model": EMB_MODEL,
        "training_task": task,
        "pred_z_score": z_score,
        "shared_AB_head": True,
        "autoreg_gen": False,
        "learnable_pos_emb": False,
        "encoder_type": "linear",
        "use_one_hot_task_emb": False,
        "hypernet_latent_size": LATENT,
        "head_in_size": HEAD_IN,
    }
    (folder / "args.yaml").write_text(yaml.safe_dump(fields | args))
    peft = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.05,
        "target_modules": TARGETS,
        "use_rslora": False,
        "base_model_name_or_path": model_dir,
    }
    (folder / "adapter_config.json").write_text(json.dumps(peft))
    return folder


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("task", "z_score"),
    [("sft", False), ("recon", True), ("recon", False)],
    ids=["sft-offset", "recon-z-score", "recon-raw"],
)
def test_imported_network_matches_the_reference_forward(tmp_path, tiny_base_dir, embedder, task, z_score):
    raw = reference_state(embedder.dim)
    src = write_release(tmp_path / "release", raw, str(tiny_base_dir), task=task, z_score=z_score)
    import_official(src, tmp_path / "ours", CHECKPOINTS)
    model, config = load_checkpoint(tmp_path / "ours")
    hyper = config.hypernet
    assert (hyper.latent_size, hyper.head_in_size, hyper.rank, hyper.embed_dim) == (
        LATENT,
        HEAD_IN,
        RANK,
        embedder.dim,
    )
    assert hyper.head_bias and hyper.output_scale == z_score and not model.training

    emb = torch.randn(2, embedder.dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        A, B = model(emb)
    want_A, want_B = reference_forward(raw, emb, task, z_score)
    for m in TARGETS:
        assert A[m].shape == (2, 2, RANK, IN_FEATURES[m]) == want_A[m].shape
        assert B[m].shape == (2, 2, OUT_FEATURES[m], RANK) == want_B[m].shape
        assert (A[m].double() - want_A[m]).abs().max() <= 1e-5, m
        assert (B[m].double() - want_B[m]).abs().max() <= 1e-5, m
        assert B[m].abs().max() > 1e-2  # the heads are live: not a trivially matching zero adapter
        assert not torch.allclose(A[m][0], A[m][1])  # and the description matters


def test_cli_imports_and_info_describes_the_result(capsys, tmp_path, tiny_base_dir, embedder):
    src = write_release(tmp_path / "release", reference_state(embedder.dim), str(tiny_base_dir))
    out_dir = tmp_path / "ours"
    code, out, err = run(capsys, "import-official", src, "-o", out_dir)
    assert code == 0, err
    assert "imported from" in out and EMB_MODEL in out

    config = read_config(out_dir)
    assert config.training["status"] == "imported" and config.training["training_task"] == "sft"
    assert (config.embedder.name, config.embedder.dim, config.embedder.pooling) == (EMB_MODEL, 384, "cls")
    assert config.hypernet.target_modules == TARGETS and config.hypernet.alpha == ALPHA

    code, out, err = run(capsys, "info", out_dir)
    assert code == 0, err
    assert "status: imported" in out and "pooling cls" in out and config.id in out


def refused(capsys, *argv: object) -> str:
    """Run the CLI, expect exit status 2, and return its error message."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("t2l: error: ")
    return err


def test_missing_state_dict_is_named(capsys, tmp_path, tiny_base_dir):
    src = write_release(tmp_path / "release", {}, str(tiny_base_dir))
    (src / "hypermod.pt").unlink()
    err = refused(capsys, "import-official", src, "-o", tmp_path / "ours")
    assert "missing hypermod.pt" in err and err.count("\n") == 1
    assert not (tmp_path / "ours").exists()


def test_separate_AB_heads_are_refused(capsys, tmp_path, tiny_base_dir, embedder):
    state = reference_state(embedder.dim)
    src = write_release(tmp_path / "release", state, str(tiny_base_dir), shared_AB_head=False)
    err = refused(capsys, "import-official", src, "-o", tmp_path / "ours")
    assert "shared_AB_head=False" in err and err.count("\n") == 1
    assert not (tmp_path / "ours").exists()


def test_pickled_object_is_never_unpickled(capsys, tmp_path, tiny_base_dir):
    src = write_release(tmp_path / "release", Payload(), str(tiny_base_dir))
    err = refused(capsys, "import-official", src, "-o", tmp_path / "ours")
    assert "hypermod.pt" in err and "plain tensor state dict" in err
    assert not UNLOADED  # weights_only=True: the object's code never ran
    assert not (tmp_path / "ours").exists()


def test_pickled_object_refusal_is_one_line(capsys, tmp_path, tiny_base_dir):
    src = write_release(tmp_path / "release", Payload(), str(tiny_base_dir))
    err = refused(capsys, "import-official", src, "-o", tmp_path / "ours")
    assert err.count("\n") == 1 and "\x1b[" not in err


def test_layer_count_must_match_the_base(capsys, tmp_path, tiny_base_dir, embedder):
    state = reference_state(embedder.dim, layers=3)
    src = write_release(tmp_path / "release", state, "no-such-org/no-such-model")
    err = refused(capsys, "import-official", src, "-o", tmp_path / "ours", "--base", tiny_base_dir)
    assert "writes 3 layers" in err and "has 2" in err and err.count("\n") == 1
    assert not (tmp_path / "ours").exists()


def test_malformed_release_files_are_one_line_errors(capsys, tmp_path, tiny_base_dir, embedder):
    state = reference_state(embedder.dim)
    src = write_release(tmp_path / "bad-task", state, str(tiny_base_dir), task="dpo")
    assert "training_task='dpo'" in refused(capsys, "import-official", src, "-o", tmp_path / "o1")
    src = write_release(tmp_path / "bad-yaml", state, str(tiny_base_dir))
    (src / "args.yaml").write_text("model_dir: [unclosed\n")
    assert "cannot parse" in refused(capsys, "import-official", src, "-o", tmp_path / "o2")
    src = write_release(tmp_path / "no-rank", state, str(tiny_base_dir))
    peft = json.loads((src / "adapter_config.json").read_text())
    del peft["r"]
    (src / "adapter_config.json").write_text(json.dumps(peft))
    assert "'r'" in refused(capsys, "import-official", src, "-o", tmp_path / "o3")
