"""``t2l serve`` reports start-up mistakes in one line, with exit status 2, never a traceback."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"T2L_CHECKPOINT": "/nonexistent/ckpt"}, "no T2L checkpoint at /nonexistent/ckpt"),
        ({"T2L_SLOTS": "0"}, "invalid setting T2L_SLOTS"),
        ({"T2L_ENGINE_NICE": "25"}, "T2L_ENGINE_NICE: Input should be less than or equal to 19"),
        ({"T2L_PREFILL_CHUNK_TOKENS": "0"}, "T2L_PREFILL_CHUNK_TOKENS: Input should be greater than or"),
        ({"T2L_REDIS_URL": "http://localhost:6379"}, "T2L_REDIS_URL='http://localhost:6379'"),
    ],
)
def test_serve_start_up_errors_are_one_line(env, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "1"],
        env=os.environ | {"T2L_STATE_DIR": str(tmp_path)} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
