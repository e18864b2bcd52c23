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
TIE_ULPS = 4  # bfloat16 steps a served token may trail PEFT's choice by (a near-tie broken the other way)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_downloaded_adapter_in_peft_gives_the_servers_greedy_tokens(
    smollm2_spec, embedder_spec, clean_redis, tmp_path, dtype
):
    """In float32 the tokens are PEFT's exactly. In bfloat16 the server's base computes with reordered
    bfloat16 kernels and its LoRA products in float32 (as on any CPU), PEFT's all in bfloat16: two correct
    computations that may break a near-tie differently, so each served token, fed back to PEFT, must be its
    choice or within ``TIE_ULPS`` bfloat16 steps of it at the logit's size."""
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
    served = reply["choices"][0]["message"]["content"]
    assert text != base_reply["choices"][0]["message"]["content"]  # the adapter changed the answer
    assert served != base_reply["choices"][0]["message"]["content"]  # in the server too
    if dtype == "float32":
        assert text == served
        return
    ids = tokenizer(served, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = peft(input_ids=torch.cat([prompt["input_ids"], ids], dim=1)).logits
    logits = logits[0, prompt["input_ids"].shape[1] - 1 : -1].float()  # where each served token came from
    best = logits.max(-1).values
    behind = best - logits.gather(-1, ids[0][:, None])[:, 0]
    step = 2.0 ** (torch.floor(torch.log2(best.abs())) - 7)  # bfloat16's spacing at the best logit's size
    assert (behind <= TIE_ULPS * step).all(), f"served tokens behind PEFT's choice by {behind.tolist()}"
