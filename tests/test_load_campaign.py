"""A small run of bench/load.py in CI: load, a Redis SIGKILL, SIGTERM during streams, corrupt entries."""

import json
import os
import subprocess
import sys

import pytest

from hypernet.settings import REPO_ROOT

pytestmark = pytest.mark.integration


def test_the_campaign_loses_nothing_and_detects_every_corruption(smollm2_dir, tmp_path):
    out = tmp_path / "load.json"
    small = "--requests 48 --clients 8 --streams 3 --stream-tokens 48 --descriptions 16 --max-tokens 4"
    small += " --deadline-s 300"
    command = [sys.executable, "-m", "bench.load", *small.split(), "--json", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=os.environ, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    load, kill, term, corrupt = (result[k] for k in ("load", "redis_kill", "sigterm", "corrupt"))
    assert load["requests"] == 48 and load["server_errors_5xx"] == 0 and not load["errors"]
    assert kill["redis_killed"] and kill["redis_restarts"] >= 1
    assert kill["failed_requests"] == 0 and kill["ids_missing_from_redis"] == 0 and kill["ids_answered"] > 0
    assert term["streams"] == term["ended_with_final_chunk"] == 3 and term["adapters_lost"] == 0
    assert corrupt["regenerated"] == corrupt["counted_in_metric"] == corrupt["restored_identical"] == 4
