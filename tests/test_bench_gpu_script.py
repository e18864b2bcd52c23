"""bench/gpu.sh, the benchmark command for a lent GPU, run end to end on the CPU with --smoke."""

import json
import os
import subprocess
import sys

import pytest

from hypernet.settings import REPO_ROOT


@pytest.mark.integration
def test_gpu_bench_smoke_writes_engine_and_server_results(smollm2_dir, tmp_path):
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "engine.json",
        "engine.txt",
        "server.json",
        "server.txt",
    ]
    engine = json.loads((tmp_path / "engine.json").read_text())
    assert engine["setup"]["dtype"] == "bfloat16" and engine["setup"]["device"] == "cpu"
    row = engine["throughput"]["batch8"]  # the smoke measures batch 8 only
    assert row["plain_float32"]["tokens_per_s"] > 0 and row["8_adapters"]["tokens_per_s"] > 0
    server = json.loads((tmp_path / "server.json").read_text())
    assert server, "bench.server wrote an empty result"
    assert "target: busy TTFT" in (tmp_path / "engine.txt").read_text()
