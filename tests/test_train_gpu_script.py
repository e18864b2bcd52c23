"""scripts/train_gpu.sh, the one command for a lent GPU, run end to end on the CPU with --smoke."""

import os
import subprocess
import sys
import tarfile

import pytest

from hypernet.settings import REPO_ROOT, Settings


@pytest.mark.integration
def test_gpu_script_smoke_trains_evaluates_and_packs_everything(smollm2_dir, tmp_path):
    if not (Settings().data_dir / "sni" / "splits.json").is_file():
        pytest.skip(f"no SNI data at {Settings().data_dir}")
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "train_gpu.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-run.tar.gz", "summary.txt"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "## train-test" in summary and "## eval" in summary and "t2l - t2l-shuffled" in summary
    with tarfile.open(tmp_path / "gpu-run.tar.gz") as packed:
        names = set(packed.getnames())
    for needed in (
        "t2l-smollm2-135m/model.safetensors",
        "t2l-smollm2-135m/README.md",
        "mt-lora-smollm2-135m/adapter_model.safetensors",
        "eval-train-test/result.json",
        "eval-eval/result.json",
        "sft/metrics.jsonl",
    ):
        assert needed in names, needed
