"""The server on the real SmolLM2 base: a downloaded adapter, loaded with PEFT, gives the server's tokens."""

import io
import zipfile

import httpx
import pytest
import torch
from peft import PeftModel

from hypernet.base import load_base
from hypernet.checkpoint import initial_checkpoint, save_checkpoint
from hypernet.settings import DEFAULT_BASE_MODEL
from server.settings import ServerSettings
from tests.conftest import CHECKPOINTS, randomize_heads
from tests.server_harness import running_server

pytestmark = pytest.mark.integration
MESSAGES = [{"role": "user", "content": "A farmer has 12 cows and buys 7 more. How many cows now?"}]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_downloaded_adapter_in_peft_gives_the_servers_greedy_tokens(
    smollm2_spec, embedder_spec, clean_redis, tmp_path, dtype
):
    """In bfloat16 the server's base, its slots and PEFT's reference are all bfloat16."""
    model, config = initial_checkpoint(smollm2_spec, embedder_spec, "M", rank=8, alpha=16.0, seed=0)
    save_checkpoint(randomize_heads(model, std=0.02), config, tmp_path / "ckpt")
    settings = ServerSettings(
        checkpoint=tmp_path / "ckpt", redis_url=clean_redis, state_dir=tmp_path / "state", base_dtype=dtype
    )
    with running_server(settings) as server:
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
            "model": DEFAULT_BASE_MODEL, "messages": MESSAGES, "max_tokens": 16, "temperature": 0,
            "task_description": "Solve arithmetic word problems step by step.",
        }).json()  # fmt: skip
        base_reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
            "model": DEFAULT_BASE_MODEL, "messages": MESSAGES, "max_tokens": 16, "temperature": 0,
        }).json()  # fmt: skip
        archive = httpx.get(
            f"{server.url}/v1/adapters/{reply['adapter']['id']}/download",
            params={"format": "zip", "dtype": dtype},
        )
    assert archive.status_code == 200
    zipfile.ZipFile(io.BytesIO(archive.content)).extractall(tmp_path / "download")
    folder = tmp_path / "download" / reply["adapter"]["id"]

    base, tokenizer = load_base(DEFAULT_BASE_MODEL, CHECKPOINTS, getattr(torch, dtype))
    prompt = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    peft = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        out = peft.generate(**prompt, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text == reply["choices"][0]["message"]["content"]
    assert text != base_reply["choices"][0]["message"]["content"]  # the adapter changed the answer
