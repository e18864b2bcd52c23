"""Run the real app under uvicorn on a loopback port, in a thread of the test process.

The tests talk real HTTP to it and may also look at ``server.app.state.service`` (counters such as
``store.generations``) since it lives in the same process.
"""

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.service import Service
from server.settings import ServerSettings
from tests.conftest import CHECKPOINTS, tiny_llama

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_chat_base(folder: Path) -> Path:
    """A tiny random Llama that speaks through SmolLM2's real tokenizer and chat template."""
    real = CHECKPOINTS / "base" / "smollm2-135m-instruct"
    model = tiny_llama(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(real / name, folder / name)
    return folder


class RunningServer:
    def __init__(self, app: FastAPI, server: uvicorn.Server, url: str):
        self.app, self.server, self.url = app, server, url

    @property
    def service(self) -> Service:
        return self.app.state.service


@contextmanager
def running_server(settings: ServerSettings) -> Iterator[RunningServer]:
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(app, server, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=60)
