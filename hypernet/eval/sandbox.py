"""Run generated Python in a separate, isolated interpreter with time and memory limits.

The program runs with ``python -I`` (no user site, no environment-driven imports) in an empty
temporary directory, under RLIMIT_AS / RLIMIT_CPU / RLIMIT_FSIZE and a wall-clock timeout, and passes
when it exits 0. This contains accidents (infinite loops, memory blow-ups, stray files), not malice.
"""

import resource
import subprocess
import sys
import tempfile


def _limits(memory_mb: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


def passes(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        try:
            result = subprocess.run(
                [sys.executable, "-I", "-c", program],
                cwd=folder,
                capture_output=True,
                timeout=timeout_s,
                preexec_fn=lambda: _limits(memory_mb, int(timeout_s) + 1),
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0
