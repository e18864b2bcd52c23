"""Description vectors kept on disk, keyed by embedder and text, so they outlive a training run.

Embedding every training description (435 tasks x 128 paraphrases) costs about ten minutes on one CPU
thread; runs, resumed runs and baselines ask for the same vectors again. SQLite holds them (raw float32
bytes, never pickles): one file, safe for several processes at once (DDP ranks, parallel runs).
"""

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import torch

from hypernet.embed import Embedder, normalize_description


class VectorCache:
    """Vectors of descriptions under one embedder (its name, pooling and dimension form the key)."""

    def __init__(self, path: Path, embedder: Embedder):
        self.embedder = embedder
        self.prefix = f"{embedder.name}|{embedder.pooling}|{embedder.dim}|"
        path.parent.mkdir(parents=True, exist_ok=True)
        # the default rollback journal: switching to WAL needs a lock that concurrent openers (DDP ranks
        # starting together) can fail to get at once, while these statements wait out the busy timeout
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self.memory: dict[str, torch.Tensor] = {}

    def _key(self, text: str) -> str:
        return hashlib.sha256((self.prefix + normalize_description(text)).encode()).hexdigest()

    def vectors(self, texts: list[str], chunk: int = 256) -> torch.Tensor:
        """The vectors of ``texts`` [n, dim] on the CPU: from memory, from disk, or embedded now."""
        keys = [self._key(t) for t in texts]
        missing = [k for k in dict.fromkeys(keys) if k not in self.memory]
        for start in range(0, len(missing), 900):  # SQLite's limit on bound parameters
            part = missing[start : start + 900]
            rows = self.db.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})", part
            )
            for key, blob in rows:
                self.memory[key] = torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())
        new = {k: t for k, t in zip(keys, texts, strict=True) if k not in self.memory}
        items = list(new.items())
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            embedded = self.embedder.embed([t for _, t in part]).vectors.float().cpu()
            self.db.executemany(
                "INSERT OR IGNORE INTO vectors VALUES (?, ?)",
                [(k, v.numpy().tobytes()) for (k, _), v in zip(part, embedded, strict=True)],
            )
            self.memory.update({k: v for (k, _), v in zip(part, embedded, strict=True)})
        return torch.stack([self.memory[k] for k in keys])
