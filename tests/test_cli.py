"""The ``t2l`` command line, in process and (for the no-traceback promise) as a real subprocess."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from hypernet.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_a_peft_folder_and_reports_timings(capsys, tiny_checkpoint, tmp_path):
    code, out, err = run(
        capsys, "generate", "Sort a list of numbers.", "-o", tmp_path / "ad", "--checkpoint", tiny_checkpoint
    )
    assert code == 0, err
    assert f"adapter: {tmp_path / 'ad'}" in out
    assert "embed" in out and "hypernet" in out and "write" in out and " ms" in out
    assert "untrained" in out  # the checkpoint's provenance is stated
    assert len(load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))) == 2 * 2 * 2


def test_long_description_is_reported_as_truncated(capsys, tiny_checkpoint, tmp_path):
    code, out, _ = run(
        capsys, "generate", "word " * 400, "-o", tmp_path / "ad", "--checkpoint", tiny_checkpoint
    )
    assert code == 0 and "truncated to the embedder's 256 tokens" in out


@pytest.mark.parametrize("description", ["", "   \n "])
def test_empty_description_is_a_one_line_error(capsys, tiny_checkpoint, tmp_path, description):
    code, _, err = run(
        capsys, "generate", description, "-o", tmp_path / "ad", "--checkpoint", tiny_checkpoint
    )
    assert code == 2 and "description is empty" in err and err.count("\n") == 1
    assert not (tmp_path / "ad").exists()


def test_missing_checkpoint_and_mismatched_base_name_the_value(capsys, tiny_checkpoint, tmp_path):
    code, _, err = run(capsys, "generate", "x", "-o", tmp_path / "ad", "--checkpoint", tmp_path / "none")
    assert code == 2 and str(tmp_path / "none") in err
    code, _, err = run(
        capsys,
        "generate",
        "x",
        "-o",
        tmp_path / "ad",
        "--checkpoint",
        tiny_checkpoint,
        "--base",
        "no-such-org/no-such-model",
    )
    assert code == 2 and "no-such-org/no-such-model" in err


def test_init_then_info(capsys, tiny_base_dir, tmp_path):
    code, out, err = run(
        capsys, "init", "--base", tiny_base_dir, "--size", "S", "--rank", "2", "-o", tmp_path / "c"
    )
    assert code == 0, err
    assert "UNTRAINED" in out
    code, out, _ = run(capsys, "info", tmp_path / "c")
    assert code == 0 and "status: untrained" in out and "rank 2, alpha 4" in out
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["training"]["status"] == "untrained" and config["base"]["num_layers"] == 2


def test_info_on_an_adapter_folder(capsys, tiny_checkpoint, tmp_path):
    run(capsys, "generate", "Tag parts of speech.", "-o", tmp_path / "ad", "--checkpoint", tiny_checkpoint)
    code, out, _ = run(capsys, "info", tmp_path / "ad")
    assert code == 0 and '"peft_type": "LORA"' in out


def test_bad_setting_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("T2L_DEVICE", "gpu0")
    code, _, err = run(capsys, "info", tmp_path)
    assert code == 2 and "gpu0" in err and err.count("\n") == 1


def test_subprocess_prints_no_traceback(tiny_checkpoint, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hypernet.cli",
            "generate",
            " ",
            "-o",
            str(tmp_path / "x"),
            "--checkpoint",
            str(tiny_checkpoint),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().startswith("t2l: error:")


def test_export_writes_half_precision_weights_and_a_model_card(capsys, tiny_checkpoint, tmp_path):
    import torch

    from hypernet.checkpoint import load_checkpoint

    result = {
        "benchmark": "sni-held-out",
        "command": "t2l eval sni --out results/sni",
        "metrics": ["rougeL"],
        "conditions": ["base", "t2l"],
        "tasks": {"task_a": {"base": {"rougeL": 10.0}, "t2l": {"rougeL": 30.0}}},
        "average": {"base": {"rougeL": 10.0}, "t2l": {"rougeL": 30.0}},
    }
    (tmp_path / "result.json").write_text(json.dumps(result))
    out = tmp_path / "shipped"
    code, stdout, err = run(
        capsys, "export", tiny_checkpoint, "-o", out, "--result", tmp_path / "result.json"
    )
    assert code == 0, err
    assert all(t.dtype == torch.float16 for t in load_file(str(out / "model.safetensors")).values())
    assert (out / "model.safetensors").stat().st_size < 0.6 * (
        tiny_checkpoint / "model.safetensors"
    ).stat().st_size
    original, _ = load_checkpoint(tiny_checkpoint)
    shipped, config = load_checkpoint(out)  # the checksum is the new file's; loading casts back to float32
    assert config.id in stdout and config.id in (out / "README.md").read_text()
    emb = torch.randn(2, config.hypernet.embed_dim)
    with torch.no_grad():
        for m, b in original(emb)[1].items():
            assert torch.allclose(shipped(emb)[1][m], b, atol=1e-3)
    card = (out / "README.md").read_text()
    assert "| task_a | 10.0 | 30.0 |" in card and "t2l eval sni --out results/sni" in card
    code, _, err = run(capsys, "export", tiny_checkpoint, "-o", out, "--result", tmp_path / "missing.json")
    assert code == 2 and "no evaluation result" in err


def test_export_of_a_lora_baseline_keeps_its_provenance_in_half_precision(
    capsys, monkeypatch, tiny_checkpoint, tmp_path
):
    import torch

    from hypernet.checkpoint import load_checkpoint
    from hypernet.train.lora_baseline import FixedLoRA, export_peft, load_fixed

    monkeypatch.setenv("T2L_CHECKPOINT", str(tiny_checkpoint))
    _, config = load_checkpoint(tiny_checkpoint)
    trained = FixedLoRA(config.base, config.hypernet.rank)
    with torch.no_grad():
        for b in trained.B.values():
            b.normal_()
    training = {"status": "multi-task-lora", "steps": 7, "total_steps": 7}
    export_peft(trained, config.model_copy(update={"training": training}), tmp_path / "run")
    out = tmp_path / "baseline"
    code, stdout, err = run(capsys, "export", tmp_path / "run" / "adapter", "-o", out)
    assert code == 0 and "multi-task-lora" in stdout, err
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float16 for t in weights.values())
    back, provenance = load_fixed(out, config.base, config.hypernet.rank)
    assert provenance == training
    for m, b in trained.B.items():
        assert torch.allclose(back.B[m], b, atol=1e-2) and back.B[m].dtype == torch.float32


def test_train_sft_validate_only_prints_the_checkpoints_validation_figures(
    capsys, monkeypatch, tiny_chat_base, tiny_chat_checkpoint, tmp_path
):
    from tests.test_sni_protocol import write_data

    data = write_data(tmp_path / "data")
    splits = json.loads((data / "sni" / "splits.json").read_text())
    (data / "sni" / "tasks" / "w.json").write_text(
        (data / "sni" / "tasks" / "v.json").read_text().replace("v ", "w ")
    )
    splits["val"] = ["v", "w"]
    (data / "sni" / "splits.json").write_text(json.dumps(splits))
    monkeypatch.setenv("T2L_DATA_DIR", str(data))
    monkeypatch.setenv("T2L_BASE_MODEL", str(tiny_chat_base))
    monkeypatch.setenv("T2L_CACHE_DIR", str(tmp_path / "cache"))
    out_dir = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "sft",
        "--out",
        out_dir,
        "--init",
        tiny_chat_checkpoint,
        "--validate-only",
        "--max-len",
        64,
    )
    assert code == 0
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures) == {"checkpoint", "val_loss", "val_mismatch_gap"} and figures["val_loss"] > 0
    assert not (out_dir / "state").exists()  # nothing trained or written
